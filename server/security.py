"""What the server checks before a request reaches a route: the Host header (against DNS
rebinding), the Origin header (against cross-site requests and WebSockets), the body size
(before anything is buffered), the API key; and the log filter that keeps tokens out of logs.
"""

from __future__ import annotations

import logging
import re
import secrets

from fastapi import Depends
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from emolive.server.config import Settings, normalize_origin
from emolive.server.errors import ApiError

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
UPLOAD_PATH = "/v1/avatars"
# Room for the multipart framing around an upload of max_upload_bytes.
MULTIPART_OVERHEAD = 64 * 1024

# Security schemes: declared in the OpenAPI document, read without auto errors so that the
# routes answer with this server's own JSON errors.
session_bearer = HTTPBearer(scheme_name="SessionToken", auto_error=False,
                            description="the session's token from POST /v1/sessions (also accepted as ?token=)")
api_key_bearer = HTTPBearer(scheme_name="ApiKeyBearer", auto_error=False,
                            description="the server's API key as 'Authorization: Bearer <key>'")
api_key_header = APIKeyHeader(name="X-API-Key", scheme_name="ApiKey", auto_error=False,
                              description="the server's API key")


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` once a streamed body passes its limit; FastAPI re-raises
    HTTP exceptions from body parsing, so the JSON error handler answers it."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {_size(limit)}")


def _size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} kB"


class RequestGuard:
    """Pure ASGI middleware (it must see the body before anything buffers it): Host and
    Origin checks for HTTP and WebSocket requests, body limits for HTTP ones."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.origins = {normalize_origin(o) for o in settings.allowed_origins}
        self.hosts = {_host_name(h) for h in settings.allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await _refuse(scope, receive, send, refusal)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        limit = self.body_limit(scope)
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _refuse(scope, receive, send, ApiError(413, BodyTooLarge(limit).detail))
            return
        await self.limited(scope, receive, send, limit)

    def body_limit(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH:
            return self.settings.max_upload_bytes + MULTIPART_OVERHEAD
        return self.settings.max_json_bytes

    async def limited(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app with a ``receive`` that counts body bytes and fails past ``limit``
        (chunked bodies have no Content-Length to refuse up front)."""
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as error:  # a route that let it escape: answer it here
            if started:
                raise
            await _refuse(scope, receive, send, ApiError(413, error.detail))

    def refusal(self, scope: Scope, headers: Headers) -> ApiError | None:
        host = headers.get("host")
        if host is not None and not self.host_allowed(host):
            return ApiError(403, f"host {host!r} is not served here (allowed hosts: see --allowed-host)")
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, scope, host):
            return ApiError(403, f"origin {origin!r} is not allowed (see --allowed-origin)")
        return None

    def host_allowed(self, host: str) -> bool:
        """On loopback: the loopback names and allowed_hosts, any port (a DNS-rebinding page
        reaches the server under its own host name). Elsewhere: allowed_hosts, or any."""
        name = _host_name(host)
        if name in self.hosts:
            return True
        if self.settings.loopback:
            return name in LOOPBACK_HOSTS
        return not self.hosts

    def origin_allowed(self, origin: str, scope: Scope, host: str | None) -> bool:
        """The server's own origin (scheme and Host of this request) or an allowed one."""
        normal = normalize_origin(origin)
        if normal is None:
            return False
        if normal in self.origins:
            return True
        if host is None:
            return False
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        return normal == normalize_origin(f"{scheme}://{host}")


def _host_name(host: str) -> str:
    """The Host header without its port, lower-cased; IPv6 keeps its brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _refuse(scope: Scope, receive: Receive, send: Send, error: ApiError) -> None:
    response = JSONResponse({"error": error.message}, error.status, error.headers)
    if scope["type"] == "http":
        await response(scope, receive, send)
        return
    # A WebSocket handshake is refused with the same status and body where the server
    # supports denial responses, otherwise with a plain close (HTTP 403).
    websocket = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008, reason=error.message[:120])


def api_key_dependency(settings: Settings):
    """A route dependency that requires the server's API key when one is configured."""

    async def require_api_key(bearer: HTTPAuthorizationCredentials | None = Depends(api_key_bearer),
                              header: str | None = Depends(api_key_header)) -> None:
        if settings.api_key is None:
            return
        given = header or (bearer.credentials if bearer else None)
        if not given:
            raise ApiError(401, "this server needs its API key: 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                           {"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
            raise ApiError(403, "wrong API key")

    return require_api_key


# -- logs -----------------------------------------------------------------------------------

_SECRET_QUERY = re.compile(r"([?&](?:token|api_key|apikey|key|access_token)=)[^&#\s\"]*", re.IGNORECASE)


class RedactSecrets(logging.Filter):
    """Masks ``token=``-style query values in log records: uvicorn's access and WebSocket
    lines print the path with its query string, and session tokens may ride there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _SECRET_QUERY.sub(r"\1***", record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_SECRET_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_server_logs() -> None:
    """Install :class:`RedactSecrets` on uvicorn's loggers (once)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
