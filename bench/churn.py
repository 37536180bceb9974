"""``emolive bench sessions``: sessions created, streamed and dropped for an hour against the
real ``emolive serve`` subprocess. A benchmark, never a test (the smoke test runs it for 18 s).

Up to ``--concurrency`` sessions at once, one after another, of these kinds in turn:

- ``ws``: WebSocket only, ``want`` events + motion, ``video: false`` (a 3D-avatar client);
  speech turns pushed in real time, then a clean close (close frame) and ``DELETE``.
- ``webrtc``: an aiortc peer on 127.0.0.1 receiving video + audio, speech in over the
  WebSocket; then ``pc.close()``, close frame, ``DELETE``.
- ``drop-ws``: as ``ws``, then the TCP socket is aborted mid-turn: no close frame, no ``DELETE``.
- ``drop-peer``: as ``webrtc``, then mid-turn the socket is aborted and the peer's UDP sockets
  are closed under it: no DTLS close, no RTCP BYE (a browser tab that vanished).
- ``stall``: as ``ws``, then the client stops reading and sending with its socket open (a
  hung client process): only the server's keepalive can tell.

Speech: flite TTS turns at 48 kHz in 20 ms chunks (``emolive.bench.speech.speech_turns``). Received
fps: whole VP8 frames per second at the aiortc client (checked, not decoded: the client shares
the server's CPUs), or motion rows per second on the WebSocket. After an abrupt end the bench
polls ``GET /v1/sessions/{id}`` until it says ``ended`` and reports how long the server took to
reap it.

Every minute (every tenth of the run when shorter than 10 min) it samples the server process
tree: RSS of the server and of its children (render workers), the server's open fds, and the
gauges of /metrics (``emolive_asyncio_tasks`` and ``emolive_session_tasks`` where the server
has them). At the end, with no session left, it samples once more.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from emolive.bench.churn_clients import SIZE, SessionRecord, one_session
from emolive.bench.report import console as make_console
from emolive.bench.report import fmt, write_figures
from emolive.bench.server_process import ProcessSample, ServerProcess, log_errors
from emolive.bench.speech import speech_turns
from emolive.bench.undecoded import count_vp8_undecoded
from emolive.engine.errors import BadInputError

KINDS = ("ws", "webrtc", "drop-ws", "drop-peer", "stall")
RSS_LIMIT_MB = 50.0
FD_SLACK = 8  # descriptors the server may open lazily on first use (model files, executor wake-up pipes)
TASK_GAUGES = ("emolive_asyncio_tasks", "emolive_session_tasks")


@dataclass(frozen=True)
class SessionsConfig:
    """``emolive bench sessions``' options (``emolive bench sessions --help`` explains each)."""

    minutes: float
    concurrency: int
    loop: str
    seed: int
    json: Path | None
    quiet: bool



@dataclass
class ChurnResult:
    samples: list[ProcessSample] = field(default_factory=list)
    sessions: list[SessionRecord] = field(default_factory=list)
    idle_start: ProcessSample | None = None
    idle_end: ProcessSample | None = None
    server_exit: int | None = None
    server_died: bool = False
    log_errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- the run


async def _idle_sample(server: ServerProcess, wait: float = 30.0) -> ProcessSample:
    """A sample once the server reports no session (or after ``wait``), tasks given 2 s to end."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        metrics = await asyncio.to_thread(server.metrics)
        if metrics.get("emolive_active_sessions", 1.0) == 0:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)
    return await asyncio.to_thread(server.sample)


async def _churn(server: ServerProcess, minutes: float, concurrency: int, seed: int, turns, result: ChurnResult,
                 on_sample) -> None:
    import httpx

    from emolive.server.webrtc import enable_loopback_candidates

    enable_loopback_candidates()
    count_vp8_undecoded(SIZE)  # whole frames checked, not decoded: the client shares the server's CPUs
    duration = 60.0 * minutes
    interval = 60.0 if duration >= 600 else duration / 10
    result.idle_start = await _idle_sample(server, wait=0)
    t0 = time.monotonic()
    run_end = t0 + duration
    kinds = itertools.cycle(KINDS)
    rng = np.random.default_rng(seed)

    async def worker(i: int) -> None:
        await asyncio.sleep(1.5 * i)  # staggered, so sessions start and end at different times
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            while True:
                left = run_end - time.monotonic()
                seconds = min(float(rng.uniform(6.0, 14.0)), left - 2.0)
                if seconds < 3.0 or not server.alive():
                    return
                kind = next(kinds)
                record = SessionRecord(kind, time.monotonic() - t0, seconds)
                result.sessions.append(record)
                await one_session(http, server, kind, record, seconds, np.random.default_rng(rng.integers(1 << 32)),
                                   turns, run_end)

    async def sampler() -> None:
        while True:
            sample = await asyncio.to_thread(server.sample)
            result.samples.append(sample)
            on_sample(sample, result)
            if not server.alive():
                result.server_died = True
                return
            if time.monotonic() + interval > run_end:
                return
            await asyncio.sleep(interval)

    sampling = asyncio.ensure_future(sampler())
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await sampling
    if server.alive():
        result.idle_end = await _idle_sample(server)
        on_sample(result.idle_end, result)
    else:
        result.server_died = True


# ---------------------------------------------------------------------------- report


def _blame(result: ChurnResult) -> None:
    """A session the server logged an error about failed, whatever its client saw."""
    for record in result.sessions:
        if record.session_id:
            found = next((line for line in result.log_errors if record.session_id in line), "")
            record.server_error = found


def _verdict(result: ChurnResult, warmup_s: float) -> tuple[list[str], dict]:
    samples = [s for s in result.samples if s.at >= warmup_s] or result.samples[-1:]
    end = result.idle_end or result.samples[-1]
    start = result.idle_start
    figures: dict = {}
    failures: list[str] = []
    base = samples[0].rss_mb
    figures["rss_after_warmup_mb"] = base
    figures["rss_end_idle_mb"] = end.rss_mb
    figures["rss_growth_mb"] = end.rss_mb - base
    points = samples + ([result.idle_end] if result.idle_end else [])
    figures["rss_slope_mb_per_min"] = (float(np.polyfit([s.at / 60 for s in points], [s.rss_mb for s in points], 1)[0])
                                       if len(points) >= 3 else math.nan)
    if figures["rss_growth_mb"] >= RSS_LIMIT_MB:
        failures.append(f"RSS grew {figures['rss_growth_mb']:.1f} MB after warm-up (limit {RSS_LIMIT_MB:.0f})")
    figures["fds_idle_start"], figures["fds_idle_end"] = start.fds, end.fds
    if end.fds - start.fds > FD_SLACK:
        failures.append(f"open fds {start.fds} -> {end.fds} when idle (slack {FD_SLACK})")
    for gauge in TASK_GAUGES:
        if gauge in start.metrics and gauge in end.metrics:
            figures[f"{gauge}_idle_start"], figures[f"{gauge}_idle_end"] = start.metrics[gauge], end.metrics[gauge]
            if end.metrics[gauge] > start.metrics[gauge]:
                failures.append(f"{gauge} {start.metrics[gauge]:.0f} -> {end.metrics[gauge]:.0f} when idle")
    failed = [s for s in result.sessions if s.failed]
    figures["sessions"] = len(result.sessions)
    figures["sessions_failed"] = len(failed)
    if failed:
        failures.append(f"{len(failed)} of {len(result.sessions)} sessions failed")
    if result.server_died:
        failures.append("the server process died")
    if result.idle_end is None:
        failures.append("no idle sample at the end")
    return failures, figures


def _report(console: Console, result: ChurnResult, config: SessionsConfig, warmup_s: float) -> tuple[list[str], dict]:
    table = Table(title=f"emolive bench sessions — {config.minutes:g} min, concurrency {config.concurrency}, "
                        f"loop {config.loop}: server samples")
    for column in ("t min", "RSS server MB", "RSS workers MB", "fds", "workers", *(g.removeprefix("emolive_") for g in TASK_GAUGES),
                   "active", "peers", "sockets"):
        table.add_column(column, justify="right")
    rows = ([("idle", result.idle_start)] + [(f"{s.at / 60:.1f}", s) for s in result.samples]
            + ([("idle end", result.idle_end)] if result.idle_end else []))
    for label, s in rows:
        m = s.metrics
        table.add_row(label, fmt(s.rss_server_mb), fmt(s.rss_workers_mb), str(s.fds), str(len(s.workers)),
                      *(fmt(m.get(g, math.nan), 0) for g in TASK_GAUGES),
                      fmt(m.get("emolive_active_sessions", math.nan), 0), fmt(m.get("emolive_webrtc_peers", math.nan), 0),
                      fmt(m.get("emolive_websockets", math.nan), 0),
                      style="dim" if label != "idle end" and s.at < warmup_s else None)
    console.print(table)
    kinds = Table(title="sessions by kind (fps: video frames or motion rows received per second)")
    for column in ("kind", "sessions", "failed", "fps min", "fps median", "events", "reaped after s (median / max)",
                   "cut by the end"):
        kinds.add_column(column, justify="right")
    for kind in KINDS:
        group = [s for s in result.sessions if s.kind == kind]
        if not group:
            continue
        fps = [s.fps for s in group if not math.isnan(s.fps)]
        reaps = [s.reap_s for s in group if not math.isnan(s.reap_s)]
        kinds.add_row(kind, str(len(group)), str(sum(s.failed for s in group)), fmt(min(fps, default=math.nan)),
                      fmt(statistics.median(fps) if fps else math.nan), str(sum(s.events for s in group)),
                      f"{fmt(statistics.median(reaps) if reaps else math.nan)} / {fmt(max(reaps, default=math.nan))}"
                      if kind.startswith(("drop", "stall")) else "",
                      str(sum(s.reap_cut for s in group)) if kind.startswith(("drop", "stall")) else "",
                      style="red" if any(s.failed for s in group) else None)
    console.print(kinds)
    for s in [s for s in result.sessions if s.failed][:10]:
        console.print(f"  failed {s.kind} at {s.started_at:.0f} s: {s.error or 'server log: ' + s.server_error}",
                      style="red", highlight=False)
    if result.log_errors:
        console.print(f"server log: {len(result.log_errors)} error lines; first: {result.log_errors[0][:300]}",
                      style="yellow", highlight=False)
    failures, figures = _verdict(result, warmup_s)
    task_text = ", ".join(f"{g.removeprefix('emolive_')} {figures[g + '_idle_start']:.0f} -> {figures[g + '_idle_end']:.0f}"
                          for g in TASK_GAUGES if g + "_idle_start" in figures) or "task gauges: not in /metrics"
    summary = (f"RSS {figures['rss_growth_mb']:+.1f} MB after warm-up ({fmt(figures['rss_slope_mb_per_min'], 2)} MB/min), "
               f"fds idle {figures['fds_idle_start']} -> {figures['fds_idle_end']}, {task_text}, "
               f"{figures['sessions_failed']}/{figures['sessions']} sessions failed")
    if failures:
        console.print(f"[bold red]sessions FAILED:[/bold red] {'; '.join(failures)}  ({summary})", highlight=False)
    else:
        console.print(f"[bold green]sessions passed[/bold green]: {summary}", highlight=False)
    return failures, figures


def run_sessions(config: SessionsConfig) -> None:
    """Run the churn, print the samples, sessions and verdict; exits 1 when the verdict fails."""
    if not config.minutes > 0:
        raise BadInputError(f"--minutes must be positive, got {config.minutes}")
    if not 1 <= config.concurrency <= 16:
        raise BadInputError(f"--concurrency must be between 1 and 16, got {config.concurrency}")
    console = make_console()
    turns, source = speech_turns()
    warmup_s = min(120.0, 60.0 * config.minutes / 3)
    result = ChurnResult()

    def on_sample(sample: ProcessSample, res: ChurnResult) -> None:
        if not config.quiet:
            m = sample.metrics
            console.print(f"  t={sample.at:6.0f} s  RSS {sample.rss_mb:7.1f} MB  fds {sample.fds:4d}  "
                          f"tasks {fmt(m.get('emolive_asyncio_tasks', math.nan), 0)}  "
                          f"sessions {len(res.sessions)} ({sum(s.failed for s in res.sessions)} failed)",
                          style="dim", highlight=False)

    with tempfile.TemporaryDirectory(prefix="emolive-churn-") as tmp:
        server = ServerProcess(Path(tmp) / "data", Path(tmp) / "server.log", loop=config.loop,
                               extra=("--max-sessions", str(config.concurrency + 2)))
        console.print(f"sessions: {config.minutes:g} min, up to {config.concurrency} at once, kinds {', '.join(KINDS)} in "
                      f"turn; speech: {source}; server: {' '.join(server.command[1:])}", style="dim", highlight=False)
        with server:
            asyncio.run(_churn(server, config.minutes, config.concurrency, config.seed, turns, result, on_sample))
            log = server.log()
        result.server_exit = server.proc.returncode if server.proc else None
        result.log_errors = log_errors(log)
        _blame(result)
    failures, figures = _report(console, result, config, warmup_s)
    if config.json:
        out = {"minutes": config.minutes, "concurrency": config.concurrency, "loop": config.loop, "warmup_s": warmup_s,
               "figures": figures, "failures": failures,
               "samples": [asdict(s) for s in result.samples],
               "idle_start": asdict(result.idle_start) if result.idle_start else None,
               "idle_end": asdict(result.idle_end) if result.idle_end else None,
               "sessions": [dict(asdict(s), failed=s.failed) for s in result.sessions],
               "server_log_errors": result.log_errors[:50]}
        write_figures(config.json, out)
        console.print(f"wrote {config.json}", style="dim")
    if failures:
        raise SystemExit(1)


