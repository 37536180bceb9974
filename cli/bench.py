"""``emolive bench KIND``: the thin commands over ``bench``. Each parses its options into the
bench's typed config and runs it; the benches themselves live in the ``bench`` package."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import fields
from pathlib import Path
from typing import Any

from emolive.engine.formats import FRAME_SIZE
from emolive.engine.motion.backends import BACKENDS
from emolive.engine.motion.registry import DEFAULT_MOTION_MODEL, LIVE_MOTION_MODEL, MOTION_MODELS

LOOP_HELP = "the server's event loop, passed to `emolive serve --loop` (default: auto, which is uvloop when installed)"

# bench KIND -> (module, config class, run function); imported only when that bench runs.
_BENCHES = {
    "render": ("emolive.bench.render", "RenderConfig", "run_render"),
    "stream": ("emolive.bench.stream.run", "StreamConfig", "run_stream"),
    "soak": ("emolive.bench.soak", "SoakConfig", "run_soak"),
    "models": ("emolive.bench.models", "ModelsConfig", "run_models"),
    "sessions": ("emolive.bench.churn", "SessionsConfig", "run_sessions"),
    "browser": ("emolive.bench.browser", "BrowserConfig", "run_browser"),
    "avsync": ("emolive.bench.avsync", "AvSyncConfig", "run_avsync"),
}


def run_bench(args: argparse.Namespace) -> None:
    """Build the config of ``args.bench`` from the parsed options and run that bench."""
    if args.bench in ("stream", "soak"):
        from emolive.cli.serve import check_render_processes

        check_render_processes(args.render_processes)
    module_name, config_name, run_name = _BENCHES[args.bench]
    module = importlib.import_module(module_name)
    config_type = getattr(module, config_name)
    getattr(module, run_name)(config_type(**{f.name: getattr(args, f.name) for f in fields(config_type)}))


def add_bench_parser(commands: Any) -> None:
    """``emolive bench`` and its kinds."""
    bench = commands.add_parser("bench", help="benchmarks (timings, not tests)")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="KIND")
    _add_render(kinds)
    _add_stream(kinds)
    _add_soak(kinds)
    _add_models(kinds)
    _add_sessions(kinds)
    _add_browser(kinds)
    _add_avsync(kinds)


def _add_render(kinds: Any) -> None:
    parser = kinds.add_parser(
        "render", help="ms per frame of each offline stage and the real-time factor",
        description="Times features, motion, render and encode per video frame on the bundled avatar "
                    "(median of several runs) and prints the real-time factor.",
    )
    parser.add_argument("--size", type=int, default=FRAME_SIZE, help=f"frame size (default: {FRAME_SIZE})")
    parser.add_argument("--seconds", type=float, default=8.0, help="audio length per run (default: 8)")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is reported (default: 5)")
    parser.add_argument("--motion", choices=MOTION_MODELS, default=DEFAULT_MOTION_MODEL,
                        help=f"motion model (default: {DEFAULT_MOTION_MODEL})")


def _motion_spec(text: str) -> str:
    from emolive.engine.motion.registry import parse_spec

    try:
        parse_spec(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


MOTION_HELP = (f"motion model of the sessions (default: {LIVE_MOTION_MODEL}, what the server runs for sessions "
               "that name none): student, student:STEPS, teacher, teacher:STEPS, baseline")


def _add_stream(kinds: Any) -> None:
    stream = kinds.add_parser(
        "stream", help="concurrent live sessions: fps, dropped frames, latency, CPU per session",
        description="N live sessions on the bundled avatar, each fed TTS speech in real time (20 ms chunks, "
                    "pauses, end_of_turn). Reports per session the fps delivered, dropped frames, latency "
                    "(chunk arrival -> first frame carrying its first sample leaves the server; p50/p95) and "
                    "CPU per session. --sweep raises N from 1 until a session falls below 24 fps.",
    )
    stream.add_argument("--sessions", type=int, default=1, metavar="N", help="concurrent sessions (default: 1)")
    stream.add_argument("--size", type=int, default=FRAME_SIZE, help=f"frame size (default: {FRAME_SIZE})")
    stream.add_argument("--seconds", type=float, default=20.0, help="measurement window per run (default: 20)")
    stream.add_argument("--transport", choices=("engine", "webrtc"), default="engine",
                        help="engine: Session objects in-process; webrtc: the real server over loopback with "
                             "aiortc clients and WebSocket audio (default: engine)")
    stream.add_argument("--sweep", action="store_true", help="raise N from --sessions (1) until fps < 24")
    stream.add_argument("--max-sessions", type=int, default=16, help="sweep limit (default: 16)")
    stream.add_argument("--workers", type=int, default=2, help="engine worker threads (default: 2, the server's)")
    stream.add_argument("--render-processes", type=int, default=2, metavar="N",
                        help="processes that render (and, over WebRTC, VP8-encode) the frames; 0 renders in the "
                             "worker threads (default: 2, the server's)")
    stream.add_argument("--seed", type=int, default=0, help="seed for pauses and motion (default: 0)")
    stream.add_argument("--motion", type=_motion_spec, default=LIVE_MOTION_MODEL, metavar="MODEL", help=MOTION_HELP)


def _add_soak(kinds: Any) -> None:
    soak = kinds.add_parser(
        "soak", help="one session for minutes: RSS growth and A/V offset drift",
        description="One live session with speech turns and idle gaps for --minutes. Samples RSS every 10 s "
                    "and, per turn, the offset between the frame of playback_started and the frame the "
                    "turn's first sample arrived in. Exits 1 if RSS grows >= 50 MB or the offset drifts "
                    ">= 40 ms (or the voice out ever differs from the voice pushed).",
    )
    soak.add_argument("--minutes", type=float, default=10.0, help="duration (default: 10)")
    soak.add_argument("--size", type=int, default=FRAME_SIZE, help=f"frame size (default: {FRAME_SIZE})")
    soak.add_argument("--seed", type=int, default=0, help="seed for gaps and motion (default: 0)")
    soak.add_argument("--motion", type=_motion_spec, default=LIVE_MOTION_MODEL, metavar="MODEL", help=MOTION_HELP)
    soak.add_argument("--render-processes", type=int, default=2, metavar="N",
                      help="processes that render the frames (RSS and CPU include them); 0 renders in a thread "
                           "(default: 2, the server's)")
    soak.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_models(kinds: Any) -> None:
    from emolive.bench.models import DESCRIPTION, WARMUP_S

    parser = kinds.add_parser(
        "models", help="motion denoiser ms per call per backend and batch size; 25 fps sessions with batching on/off",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--motion", default="student", metavar="MODEL",
                        help="diffusion model to measure: student (default), student:STEPS, teacher, teacher:STEPS")
    parser.add_argument("--backends", default=",".join(BACKENDS), metavar="LIST",
                        help=f"comma-separated backends to time (default: {','.join(BACKENDS)}); one that cannot "
                             "run here is reported as unavailable, with the reason")
    parser.add_argument("--batches", default="1,4,8,16", metavar="LIST",
                        help="comma-separated batch sizes to time (default: 1,4,8,16)")
    parser.add_argument("--rounds", type=int, default=25, metavar="N",
                        help="rounds of timing; every backend and batch size is timed once per round (default: 25)")
    parser.add_argument("--calls", type=int, default=20, metavar="N",
                        help="denoiser calls per backend, batch size and round; the median of all is reported "
                             "(default: 20)")
    parser.add_argument("--session-backend", default="onnxruntime", choices=BACKENDS,
                        help="backend the live sessions run on (default: onnxruntime)")
    parser.add_argument("--seconds", type=float, default=5.0, metavar="S",
                        help=f"measurement window per session count, after {WARMUP_S:g} s of warm-up (default: 5)")
    parser.add_argument("--max-sessions", type=int, default=64, metavar="N",
                        help="largest session count tried (default: 64)")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="compute threads shared by the sessions, as `emolive serve --workers` (default: 2)")
    parser.add_argument("--video", action="store_true",
                        help="sessions also render video frames (default: motion only)")
    parser.add_argument("--size", type=int, default=FRAME_SIZE, metavar="N",
                        help=f"frame size when rendering with --video (default: {FRAME_SIZE})")
    parser.add_argument("--skip-sessions", action="store_true",
                        help="time the denoiser only; no live sessions")


def _add_sessions(kinds: Any) -> None:
    parser = kinds.add_parser(
        "sessions", help="sessions created, streamed and dropped for an hour against `emolive serve`: leaks",
        description="Starts `emolive serve` (a subprocess, as a user runs it) and for --minutes creates, streams "
                    "and drops sessions, up to --concurrency at once: WebSocket-only (events + motion), WebRTC "
                    "(an aiortc peer receiving video + audio), and abrupt ends (socket aborted without a close "
                    "frame, peer abandoned without a close, a client that stops reading). Samples the server's "
                    "RSS (with its render workers), open fds and /metrics every minute; prints the samples, "
                    "the sessions by kind and a verdict: RSS growth after the first 2 minutes < 50 MB, fds and "
                    "task gauges back to their idle values, no failed session. Exits 1 when it fails.",
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="duration (default: 60)")
    parser.add_argument("--concurrency", type=int, default=2, metavar="N", help="sessions at once (default: 2)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help=LOOP_HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed for session lengths and speech (default: 0)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the samples, sessions and verdict here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_browser(kinds: Any) -> None:
    from emolive.bench.browser import CHROMIUM

    parser = kinds.add_parser(
        "browser", help="consecutive real-Chromium WebRTC sessions against `emolive serve`: fps and freezes",
        description="Starts `emolive serve` (a subprocess, default settings) and runs --sessions sessions one "
                    "after another in headless Chromium (Debian's /usr/bin/chromium through playwright), each "
                    "the demo page in TTS mode playing speech over the WebSocket for --seconds. The page measures "
                    "with requestVideoFrameCallback the presented frame rate and freezes (> 200 ms between "
                    "frames). Verdict: every session >= 24 fps for --seconds, no freeze. --kill-render-worker "
                    "then SIGKILLs a render worker under 2 live sessions and reports when each shows frames "
                    "again. Exits 1 when it fails.",
    )
    parser.add_argument("--sessions", type=int, default=20, metavar="N", help="sessions, one after another (default: 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured streaming time per session (default: 10)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help=LOOP_HELP)
    parser.add_argument("--kill-render-worker", action="store_true",
                        help="after the sessions, SIGKILL one render worker during 2 live sessions and time "
                             "until both deliver frames again")
    parser.add_argument("--chromium", type=Path, default=CHROMIUM, metavar="PATH",
                        help=f"Chromium executable (default: {CHROMIUM})")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the per-session figures here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_avsync(kinds: Any) -> None:
    from emolive.bench.avsync import SETTLE_S

    parser = kinds.add_parser(
        "avsync", help="A/V offset a real Chromium shows (demo page, TTS over the WebSocket, WebRTC back)",
        description="Runs a server on 127.0.0.1 and Debian's Chromium (headless, playwright) on the demo page: "
                    "voice bursts pushed over the session WebSocket, face and voice back over WebRTC. Prints the "
                    "offset between the mouth the viewer sees and the voice they hear (median and spread over "
                    "the runs; > 0: the mouth lags the voice), after subtracting the motion model's own lag "
                    "measured on the frames the server sends.")
    parser.add_argument("--runs", type=int, default=3, help="sessions, one after another (default: 3)")
    parser.add_argument("--seconds", type=float, default=20.0, help=f"length of each session's voice; the first {SETTLE_S:.0f} s are left out (default: 20, least: "
                             f"{SETTLE_S + 6:.0f})")
    parser.add_argument("--motion", choices=MOTION_MODELS, default="baseline",
                        help="the server's motion model (default: baseline, deterministic and always installed)")
    parser.add_argument("--workers", type=int, default=2, help="the server's compute threads (default: 2)")
    parser.add_argument("--render-processes", type=int, default=0,
                        help="the server's render worker processes (default: 0, renders in threads)")
    parser.add_argument("--headed", action="store_true", help="show the browser window (needs a display)")
