"""``emolive serve``: run the streaming server (FastAPI on uvicorn, aiortc for WebRTC)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emolive.engine.errors import BadInputError
from emolive.engine.motion.backends import BACKENDS

DESCRIPTION = """\
Serve talking portraits over HTTP, WebSocket and WebRTC.

Open the printed URL for the demo page and pick or upload a portrait. "Start with microphone"
makes your voice drive the face (your voice is not sent back); "Play file through the
WebSocket" streams an audio file as a TTS engine would, and the face comes back with that
voice over WebRTC.

API docs are at /docs, Prometheus metrics at /metrics, health at /healthz. The WebSocket
protocol is described in server/PROTOCOL.md.

Every option can also be set by an environment variable (the flag wins), and a few settings
only by one; booleans take 1/0: {env}.

EMOLIVE_ICE_SERVERS (or --ice-servers) is a JSON list of RTCIceServer objects, e.g.
  '[{"urls": "turn:turn.example.org:3478", "username": "u", "credential": "p"}]'
or comma-separated stun: URLs. The server's peer connections use them (aiortc takes the first
STUN and the first TURN URL), and POST /v1/sessions hands them to the session's client.

Security: with an API key, creating sessions and uploading, listing, getting or deleting
avatars need it ('Authorization: Bearer <key>' or 'X-API-Key: <key>'); each session's own
calls use the session's token. Listening on anything but a loopback address without a key
is refused unless --insecure-no-api-key is given. Browser requests and WebSockets from other
origins are refused (403) unless allowed with --allowed-origin; on a loopback address only
the Host names localhost, 127.0.0.1 and [::1] are served (plus --allowed-host).
EMOLIVE_API_KEY_FILE (or --api-key-file) names a file holding the key (a Docker secret).
"""


def _description() -> str:
    import textwrap
    from dataclasses import fields

    from emolive.server.config import Settings

    head, tail = DESCRIPTION.split("{env}")
    names = ", ".join(f"EMOLIVE_{f.name.upper()}" for f in fields(Settings))
    last_line = head.rsplit("\n", 1)[1]
    env = textwrap.fill(last_line + names, width=92)[len(last_line):]
    return head + env + tail


def add_serve_parser(commands) -> argparse.ArgumentParser:
    serve = commands.add_parser(
        "serve", help="run the real-time streaming server (WebRTC + WebSocket + REST) and its demo page",
        description=_description(), formatter_class=argparse.RawDescriptionHelpFormatter,
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
    serve.add_argument("--ice-loopback", action=argparse.BooleanOptionalAction, default=None,
                       help="also offer 127.0.0.1 as a WebRTC (ICE) host candidate, which aioice leaves out: "
                            "needed when browser and server share a machine with no other route "
                            "(containers, CI, offline laptops; Chromium then also needs "
                            "--allow-loopback-in-peer-connection). Default: on when --host is a loopback "
                            "address (127.x, ::1, localhost), off otherwise")
    serve.add_argument("--ice-servers", default=None, metavar="JSON|URLS",
                       help="STUN/TURN servers for WebRTC, also handed to clients: a JSON list of "
                            "RTCIceServer objects (TURN needs username and credential) or comma-separated "
                            "stun: URLs (default: none)")
    serve.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                       help="where uploaded avatars and their registrations are kept "
                            "(default: $EMOLIVE_DATA_DIR or ~/.local/share/emolive)")
    serve.add_argument("--motion", default=None, metavar="MODEL",
                       help="motion model for sessions that do not choose one: student (default: the trained "
                            "model, one frame of lookahead), student:STEPS, teacher, teacher:STEPS, or baseline "
                            "(hand-built, the same latency, no denoiser: the least CPU)")
    serve.add_argument("--motion-backend", choices=BACKENDS, default=None,
                       help="where the diffusion models' denoiser runs: onnxruntime (default; its ONNX file is "
                            "exported into the cache at first use), torch, or tensorrt (fp16 on a CUDA GPU)")
    serve.add_argument("--motion-batching", action=argparse.BooleanOptionalAction, default=None,
                       help="step the motion of all sessions that run a diffusion model together, one batched "
                            "denoiser call per tick (default: on); --no-motion-batching steps each session alone")
    serve.add_argument("--metrics-per-session", action=argparse.BooleanOptionalAction, default=None,
                       help="also export per-session series (label session=<id>) on /metrics; off by default, "
                            "as every session ever seen would stay a series")
    serve.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                       help="event loop uvicorn runs the server on: auto (default: uvloop when it is installed, "
                            "else asyncio), asyncio or uvloop")
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
    if args.loop == "uvloop":
        import importlib.util

        if importlib.util.find_spec("uvloop") is None:
            raise BadInputError("--loop uvloop: uvloop is not installed (pip install uvloop)")


def run_serve(args: argparse.Namespace) -> None:
    import logging

    import uvicorn

    from emolive.server.app import create_app
    from emolive.server.config import Settings, parse_ice_servers, read_api_key_file

    _check(args)
    if args.motion is not None:
        from emolive.engine.motion.registry import parse_spec

        try:
            parse_spec(args.motion)
        except ValueError as error:
            raise BadInputError(f"--motion: {error}") from None
    try:
        ice_servers = None if args.ice_servers is None else parse_ice_servers(args.ice_servers)
        api_key = args.api_key
        if api_key is None and args.api_key_file is not None:
            api_key = read_api_key_file(args.api_key_file)
        settings = Settings.from_env(host=args.host, port=args.port, workers=args.workers,
                                     render_processes=args.render_processes,
                                     max_sessions=args.max_sessions, ice_loopback=args.ice_loopback,
                                     ice_servers=ice_servers, data_dir=args.data_dir, motion=args.motion,
                                     motion_backend=args.motion_backend, motion_batching=args.motion_batching,
                                     metrics_per_session=args.metrics_per_session, api_key=api_key,
                                     insecure_no_api_key=args.insecure_no_api_key,
                                     allowed_origins=tuple(args.allowed_origin) if args.allowed_origin else None,
                                     allowed_hosts=tuple(args.allowed_host) if args.allowed_host else None)
    except ValueError as error:
        raise BadInputError(f"bad server setting: {error}") from None
    if not settings.loopback and settings.api_key is None and not settings.insecure_no_api_key:
        raise BadInputError(f"refusing to listen on {settings.host} without an API key: set EMOLIVE_API_KEY "
                            "(or --api-key-file), or pass --insecure-no-api-key")
    from emolive.engine.motion.backends import unavailable_reason

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
                            loop=args.loop, log_level=args.log_level, lifespan="on")
    server = uvicorn.Server(config)
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in shown:
        shown = f"[{shown}]"
    print(f"emolive: serving on http://{shown}:{settings.port}/  (API docs: /docs, metrics: /metrics; "
          f"data: {settings.data_dir}{', ICE loopback on' if settings.loopback_candidates else ''})",
          file=sys.stderr, flush=True)
    server.run()
    if not server.started:
        raise BadInputError(f"could not listen on {settings.host}:{settings.port} (in use or not allowed)")
