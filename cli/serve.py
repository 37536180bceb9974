"""``emolive serve``: run the streaming server (FastAPI on uvicorn, aiortc for WebRTC)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import BadInputError
from engine.motion.backends import BACKENDS

DESCRIPTION = """\
Serve talking portraits over HTTP, WebSocket and WebRTC.

Open the printed URL for the demo page (pick or upload a portrait, talk into the microphone
or play an audio file through the WebSocket path; video and voice come back over WebRTC).
API docs are at /docs, Prometheus metrics at /metrics, health at /healthz. The WebSocket
protocol is described in server/PROTOCOL.md.

Every option can also be set by an environment variable (the flag wins): EMOLIVE_HOST,
EMOLIVE_PORT, EMOLIVE_WORKERS, EMOLIVE_RENDER_PROCESSES, EMOLIVE_MAX_SESSIONS, EMOLIVE_ICE_LOOPBACK=1,
EMOLIVE_DATA_DIR, EMOLIVE_ICE_SERVERS (comma-separated stun:/turn: URLs),
EMOLIVE_MOTION, EMOLIVE_MOTION_BACKEND, EMOLIVE_MOTION_BATCHING=0|1,
EMOLIVE_MOTION_BATCH_WINDOW_MS, EMOLIVE_IDLE_TIMEOUT_S, EMOLIVE_DETACH_GRACE_S,
EMOLIVE_API_KEY, EMOLIVE_API_KEY_FILE, EMOLIVE_INSECURE_NO_API_KEY=1,
EMOLIVE_ALLOWED_ORIGINS and EMOLIVE_ALLOWED_HOSTS (comma-separated).

Security: with an API key, creating sessions and uploading, listing, getting or deleting
avatars need it ('Authorization: Bearer <key>' or 'X-API-Key: <key>'); each session's own
calls use the session's token. Listening on anything but a loopback address without a key
is refused unless --insecure-no-api-key is given. Browser requests and WebSockets from other
origins are refused (403) unless allowed with --allowed-origin; on a loopback address only
the Host names localhost, 127.0.0.1 and [::1] are served (plus --allowed-host).
"""


def add_serve_parser(commands) -> argparse.ArgumentParser:
    serve = commands.add_parser(
        "serve", help="run the real-time streaming server (WebRTC + WebSocket + REST) and its demo page",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default=None,
                       help="interface to listen on (default: 127.0.0.1; 0.0.0.0 for every interface, as in Docker)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (default: 8000)")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="compute threads shared by all sessions for motion (and rendering, with "
                            "--render-processes 0; default: 2). Sessions live in one server process.")
    serve.add_argument("--render-processes", type=int, default=None, metavar="N",
                       help="processes that render and VP8-encode every session's frames, so that this work "
                            "does not contend with the server's event loop for one Python interpreter "
                            "(default: 2; 0 renders in the compute threads)")
    serve.add_argument("--max-sessions", type=int, default=None, metavar="N",
                       help="concurrent live sessions; one more is refused with 503 and Retry-After (default: 4)")
    serve.add_argument("--ice-loopback", action="store_true", default=None,
                       help="also offer 127.0.0.1 as a WebRTC (ICE) host candidate, which aioice leaves out: "
                            "needed when browser and server share a machine with no other route "
                            "(containers, CI, offline laptops)")
    serve.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                       help="where uploaded avatars and their registrations are kept "
                            "(default: $EMOLIVE_DATA_DIR or ~/.local/share/emolive)")
    serve.add_argument("--motion", default=None, metavar="MODEL",
                       help="motion model for sessions that do not choose one: baseline (default: one frame of "
                            "lookahead, the lowest latency), student (far better lip sync, one frame more of "
                            "lookahead), student:STEPS, teacher or teacher:STEPS")
    serve.add_argument("--motion-backend", choices=BACKENDS, default=None,
                       help="where the diffusion models' denoiser runs: onnxruntime (default; its ONNX file is "
                            "exported into the cache at first use), torch, or tensorrt (fp16 on a CUDA GPU)")
    serve.add_argument("--motion-batching", action=argparse.BooleanOptionalAction, default=None,
                       help="step the motion of all sessions that run a diffusion model together, one batched "
                            "denoiser call per tick (default: on); --no-motion-batching steps each session alone")
    serve.add_argument("--api-key", default=None, metavar="KEY",
                       help="require this key for creating sessions and for the avatar API "
                            "(default: $EMOLIVE_API_KEY; none). Prefer --api-key-file or the environment: "
                            "a command line is visible to every user of the machine")
    serve.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                       help="read the API key from FILE, e.g. a Docker secret (default: $EMOLIVE_API_KEY_FILE)")
    serve.add_argument("--insecure-no-api-key", action="store_true", default=None,
                       help="allow listening on a non-loopback address without an API key: anyone who reaches "
                            "the port can then start sessions and upload or delete avatars")
    serve.add_argument("--allowed-origin", action="append", default=None, metavar="ORIGIN",
                       help="a browser origin (scheme://host[:port]) allowed to call the API and open session "
                            "WebSockets besides the server's own; repeatable (default: $EMOLIVE_ALLOWED_ORIGINS)")
    serve.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                       help="a Host header name the server answers to: on a loopback address, besides localhost, "
                            "127.0.0.1 and [::1]; on other addresses, when given, the only ones; repeatable "
                            "(default: $EMOLIVE_ALLOWED_HOSTS; none: any on non-loopback addresses)")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                       help="server log level (default: info)")
    return serve


def check_render_processes(count: int) -> None:
    """``--render-processes`` of ``emolive serve`` and of the benches that stand in for it."""
    if not 0 <= count <= 64:
        raise BadInputError(f"--render-processes must be between 0 and 64, got {count}")


def _check(args: argparse.Namespace) -> None:
    if args.port is not None and not 0 <= args.port <= 65535:
        raise BadInputError(f"--port must be between 0 and 65535, got {args.port}")
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise BadInputError(f"--workers must be between 1 and 64, got {args.workers}")
    if args.render_processes is not None:
        check_render_processes(args.render_processes)
    if args.max_sessions is not None and not 1 <= args.max_sessions <= 1000:
        raise BadInputError(f"--max-sessions must be between 1 and 1000, got {args.max_sessions}")


def run_serve(args: argparse.Namespace) -> None:
    import logging

    import uvicorn

    from server.app import create_app
    from server.config import Settings, read_api_key_file

    _check(args)
    if args.motion is not None:
        from engine.motion.registry import parse_spec

        try:
            parse_spec(args.motion)
        except ValueError as error:
            raise BadInputError(f"--motion: {error}") from None
    try:
        api_key = args.api_key
        if api_key is None and args.api_key_file is not None:
            api_key = read_api_key_file(args.api_key_file)
        settings = Settings.from_env(host=args.host, port=args.port, workers=args.workers,
                                     render_processes=args.render_processes,
                                     max_sessions=args.max_sessions, ice_loopback=args.ice_loopback,
                                     data_dir=args.data_dir, motion=args.motion, motion_backend=args.motion_backend,
                                     motion_batching=args.motion_batching, api_key=api_key,
                                     insecure_no_api_key=args.insecure_no_api_key,
                                     allowed_origins=tuple(args.allowed_origin) if args.allowed_origin else None,
                                     allowed_hosts=tuple(args.allowed_host) if args.allowed_host else None)
    except ValueError as error:
        raise BadInputError(f"bad server setting: {error}") from None
    if not settings.loopback and settings.api_key is None and not settings.insecure_no_api_key:
        raise BadInputError(f"refusing to listen on {settings.host} without an API key: set EMOLIVE_API_KEY "
                            "(or --api-key-file), or pass --insecure-no-api-key")
    from engine.motion.backends import unavailable_reason

    reason = unavailable_reason(settings.motion_backend)
    if reason:
        raise BadInputError(f"motion backend {settings.motion_backend} is unavailable: {reason}")
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadInputError(f"{settings.data_dir}: cannot create the data directory ({error.strerror})") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, ws="websockets-sansio",
                            log_level=args.log_level, lifespan="on")
    server = uvicorn.Server(config)
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in shown:
        shown = f"[{shown}]"
    print(f"emolive: serving on http://{shown}:{settings.port}/  (API docs: /docs, metrics: /metrics; "
          f"data: {settings.data_dir}{', ICE loopback on' if settings.ice_loopback else ''})",
          file=sys.stderr, flush=True)
    server.run()
    if not server.started:
        raise BadInputError(f"could not listen on {settings.host}:{settings.port} (in use or not allowed)")
