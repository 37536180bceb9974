"""Server settings: one typed, immutable object built from defaults, the environment or the CLI.

Every setting has an ``EMOLIVE_*`` environment variable (read by :meth:`Settings.from_env`);
``emolive serve`` flags override them.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emolive.engine.motion.backends import check_backend
from emolive.engine.motion.registry import LIVE_MOTION_MODEL

_TRUE = {"1", "true", "yes", "on"}


def default_data_dir() -> Path:
    """``$EMOLIVE_DATA_DIR`` or ``~/.local/share/emolive``."""
    env = os.environ.get("EMOLIVE_DATA_DIR")
    return Path(env) if env else Path.home() / ".local" / "share" / "emolive"


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server, as WebRTC's ``RTCIceServer`` dictionary names it."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``RTCIceServer`` dictionary a browser takes (absent fields left out)."""
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


def parse_ice_servers(raw: str) -> tuple[IceServer, ...]:
    """``EMOLIVE_ICE_SERVERS``: a JSON list of ``RTCIceServer`` dictionaries
    (``[{"urls": "turn:host:3478", "username": "u", "credential": "p"}]``), or the older
    comma-separated STUN URLs (``stun:host:3478,stun:other:3478``)."""
    text = raw.strip()
    if not text.startswith(("[", "{")):
        return _ice_servers([url for url in (part.strip() for part in text.split(",")) if url])
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    return _ice_servers([value] if isinstance(value, dict) else value)


def _ice_servers(value: Any) -> tuple[IceServer, ...]:
    """Check and normalise ``ice_servers`` given as IceServer objects, URL strings or dicts."""
    if isinstance(value, (str, dict, IceServer)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"ice_servers: expected a list of servers, got {type(value).__name__}")
    return tuple(_ice_server(i, item) for i, item in enumerate(value))


def _ice_server(index: int, item: Any) -> IceServer:
    from aiortc.rtcicetransport import parse_stun_turn_uri  # aiortc checks URLs as it will use them

    where = f"ice_servers[{index}]"
    if isinstance(item, str):
        item = {"urls": item}
    elif isinstance(item, IceServer):
        item = item.to_json()
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object with 'urls', got {type(item).__name__}")
    unknown = set(item) - {"urls", "username", "credential"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; expected urls, username, credential")
    urls = item.get("urls")
    urls = [urls] if isinstance(urls, str) else urls
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise ValueError(f"{where}: 'urls' must be a URL or a non-empty list of URLs, got {item.get('urls')!r}")
    for name in ("username", "credential"):
        if item.get(name) is not None and not isinstance(item[name], str):
            raise ValueError(f"{where}: '{name}' must be a string")
    for url in urls:
        try:
            scheme = parse_stun_turn_uri(url)["scheme"]
        except ValueError as error:
            raise ValueError(f"{where}: {url!r} is not a stun:/turn: URL ({error})") from None
        if scheme.startswith("turn") and not (item.get("username") and item.get("credential")):
            raise ValueError(f"{where}: {url} needs a 'username' and a 'credential'")
    return IceServer(tuple(urls), item.get("username"), item.get("credential"))


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (what the server binds) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    # Threads that run the engine's motion (and renders, without render processes) for all sessions.
    workers: int = 2
    # Processes that render and encode every session's frames, off the server's interpreter
    # (engine.render_workers); 0 renders in the worker threads instead.
    render_processes: int = 2
    # Concurrent live sessions; one more gets 503 with Retry-After.
    max_sessions: int = 4
    # Offer 127.0.0.1 as an ICE host candidate (aioice leaves loopback out). None: only when
    # the server binds a loopback address, where a browser on this machine is the only client
    # (see ``loopback_candidates``).
    ice_loopback: bool | None = None
    # STUN/TURN servers for the server's peer connections, also handed to each session's
    # client (POST /v1/sessions): none by default, the server is meant to be reached directly.
    # Given as IceServer objects, URL strings or RTCIceServer dicts; kept as IceServer.
    ice_servers: tuple[IceServer, ...] = ()
    # Uploaded avatars (and the engine's registration cache) live here.
    data_dir: Path = field(default_factory=default_data_dir)
    # A session no client ever attached to expires after this many seconds.
    idle_timeout_s: float = 30.0
    # A session whose last client left (WebSocket closed, peer connection failed/closed or
    # silent) is closed this many seconds later unless a client attaches again.
    detach_grace_s: float = 1.0
    # A connected peer that sends nothing (no RTP, no RTCP) for this long counts as gone.
    peer_silence_s: float = 2.5
    # A peer not connected this long after its offer was answered fails its session.
    peer_connect_timeout_s: float = 20.0
    # /metrics also carries per-session series (label session=<id>): one series per session
    # ever seen is unbounded cardinality for a long-running server, hence off by default.
    metrics_per_session: bool = False
    # Built rigs kept in memory (avatar x size), least recently used evicted first.
    rig_cache_size: int = 8
    max_upload_bytes: int = 20 * 1024 * 1024
    # Audio a client may queue ahead of playback before push_audio refuses more.
    max_pending_seconds: float = 120.0
    retry_after_s: int = 5
    # Motion model for sessions that do not name one ("student", "student:4", "baseline", ...).
    motion: str = LIVE_MOTION_MODEL
    # Where the diffusion models' denoiser runs: "onnxruntime", "torch" or "tensorrt".
    motion_backend: str = "onnxruntime"
    # Sessions running diffusion models hand their motion steps to one batcher: the steps of
    # one tick go to the denoiser as one batched call.
    motion_batching: bool = True
    # How long a tick's batch waits for the steps of sessions that are late to it.
    motion_batch_window_ms: float = 5.0
    # Request bodies other than avatar uploads (session options, SDP offers) are JSON this small.
    max_json_bytes: int = 256 * 1024
    # Needed to create sessions and to upload, list, get and delete avatars (Bearer or
    # X-API-Key); None: no key. EMOLIVE_API_KEY_FILE names a file holding it (Docker secrets).
    api_key: str | None = field(default=None, repr=False)
    # Listening on a non-loopback address without an API key is refused unless this is set.
    insecure_no_api_key: bool = False
    # Browser origins ("https://app.example") allowed besides the server's own.
    allowed_origins: tuple[str, ...] = ()
    # Host header values (host names, no port) accepted besides the loopback names on a
    # loopback server; on any other address, when set, the only ones accepted.
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Defaults, then ``EMOLIVE_<NAME>`` environment variables, then ``overrides``."""
        values: dict = {}
        for f in fields(cls):
            raw = os.environ.get(f"EMOLIVE_{f.name.upper()}")
            if raw is None:
                continue
            try:
                values[f.name] = _parse(f.name, raw)
            except ValueError as error:
                raise ValueError(f"EMOLIVE_{f.name.upper()}: {error}") from None
        key_file = os.environ.get("EMOLIVE_API_KEY_FILE")
        if key_file and "api_key" not in values:
            values["api_key"] = read_api_key_file(Path(key_file))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def loopback_candidates(self) -> bool:
        """Whether the server offers 127.0.0.1 as an ICE candidate (``ice_loopback`` resolved)."""
        return is_loopback_host(self.host) if self.ice_loopback is None else self.ice_loopback

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        object.__setattr__(self, "ice_servers", _ice_servers(self.ice_servers))
        if self.peer_connect_timeout_s <= 0:
            raise ValueError(f"peer_connect_timeout_s must be positive, got {self.peer_connect_timeout_s}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.render_processes < 0:
            raise ValueError(f"render_processes must be 0 or more, got {self.render_processes}")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {self.max_sessions}")
        check_backend(self.motion_backend)
        if not 0.0 <= self.motion_batch_window_ms <= 40.0:
            raise ValueError(f"motion_batch_window_ms must be between 0 and 40, got {self.motion_batch_window_ms}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty")
        for origin in self.allowed_origins:
            if normalize_origin(origin) is None:
                raise ValueError(f"allowed origin {origin!r} is not scheme://host[:port]")

    @property
    def loopback(self) -> bool:
        """Whether the server listens on a loopback address only."""
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; not 0.0.0.0, :: or any other name or address."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_origin(origin: str) -> str | None:
    """``scheme://host:port`` with the default port filled in and case folded; None if
    ``origin`` is not an http(s) origin (``null``, a path, another scheme)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def read_api_key_file(path: Path) -> str:
    """The API key in ``path`` (surrounding whitespace dropped), as Docker secrets store it."""
    try:
        key = path.read_text().strip()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the API key file ({error.strerror})") from None
    if not key:
        raise ValueError(f"{path}: the API key file is empty")
    return key


def _parse(name: str, raw: str):
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if name == "ice_servers":
        return parse_ice_servers(raw)
    if kind in ("bool", "bool | None"):
        return raw.strip().lower() in _TRUE
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "Path":
        return Path(raw)
    return raw
