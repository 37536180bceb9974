"""The FastAPI application: ``create_app(settings)`` wires the avatar store, the session
registry, WebRTC, the WebSocket protocol, metrics and the demo page together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from emolive import client_demo
from emolive.engine.errors import BadInputError
from emolive.engine.motion.registry import parse_spec
from emolive.engine.formats import FPS, FRAME_SIZE
from emolive.engine.render_workers import RenderWorkers
from emolive.engine.session import share_cores_between_sessions
from emolive.server.avatars import DEFAULT_ID, AvatarStore
from emolive.server.config import Settings
from emolive.server.docs import add_offline_docs
from emolive.server.errors import ApiError, error_responses, not_found
from emolive.server.metrics import Metrics
from emolive.server.security import (MULTIPART_OVERHEAD, BodyTooLarge, RequestGuard, api_key_dependency,
                                     redact_server_logs, session_bearer)
from emolive.server.sessions import LiveSession, SessionParams, SessionRegistry

log = logging.getLogger("emolive.server")
DEMO_DIR = Path(client_demo.__file__).resolve().parent


class IceServerInfo(BaseModel):
    """An RTCIceServer dictionary, for ``new RTCPeerConnection({iceServers})``."""

    urls: list[str]
    username: str | None = Field(None, exclude_if=lambda value: value is None)
    credential: str | None = Field(None, exclude_if=lambda value: value is None)


class SessionCreated(BaseModel):
    session_id: str
    token: str
    avatar_id: str
    mode: str
    size: int
    fps: int
    offer_url: str
    ws_url: str
    ice_servers: list[IceServerInfo] = Field(
        description="the STUN/TURN servers (TURN with credentials) the client's peer connection should use")


class Offer(BaseModel):
    sdp: str
    type: str = "offer"


UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "portrait: PNG, JPEG, WebP or BMP"}}}}}}}


async def _read_upload(request: Request, limit: int) -> tuple[str, bytes]:
    """The name and bytes of multipart field 'file', at most ``limit`` bytes. No byte of the
    upload reaches disk: the file part is kept in memory only (the route reads it whole
    anyway; Starlette's parser would otherwise roll a part over its spool size into a
    temporary file), and that memory is bounded by cutting the body off once it passes
    ``limit`` plus the multipart framing, chunked bodies included (RequestGuard counts the
    same bytes; this holds without it too). A spool size of ``limit + 1`` was not enough:
    it is under the body limit, so a chunked body arriving in pieces smaller than the gap
    rolled ~20 MB over to disk before the body limit refused it."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send the portrait as multipart form field 'file'")
    body_limit = limit + MULTIPART_OVERHEAD

    async def body() -> AsyncIterator[bytes]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise ApiError(413, BodyTooLarge(body_limit).detail)
            yield chunk

    parser = MultiPartParser(request.headers, body(), max_files=1, max_fields=8)
    parser.spool_max_size = 0  # SpooledTemporaryFile(max_size=0) never rolls over to disk
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise ApiError(400, f"malformed multipart body: {error.message}") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise ApiError(400, "send the portrait as multipart form field 'file'")
        data = await file.read(limit + 1)
        name = file.filename or "upload"
    finally:
        await form.close()
    if len(data) > limit:
        raise ApiError(413, f"{name}: larger than {limit >> 20} MB")
    if not data:
        raise ApiError(400, f"{name}: empty file")
    return name, data


def session_token(request: Request, bearer: HTTPAuthorizationCredentials | None) -> str | None:
    """A session call's token: ``Authorization: Bearer``, or ``?token=`` where headers cannot be set."""
    return bearer.credentials if bearer else request.query_params.get("token")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    metrics = Metrics(per_session=settings.metrics_per_session)
    store = AvatarStore(settings.data_dir, rig_cache_size=settings.rig_cache_size, retry_after_s=settings.retry_after_s)
    executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="emolive-engine")
    registry = SessionRegistry(settings, store, metrics, executor)
    require_api_key = Depends(api_key_dependency(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        redact_server_logs()
        share_cores_between_sessions()
        if settings.render_processes:
            registry.render_workers = await asyncio.to_thread(RenderWorkers, settings.render_processes)
        if settings.loopback_candidates:
            from emolive.server.webrtc import enable_loopback_candidates

            enable_loopback_candidates()
        await asyncio.to_thread(store.ensure_default)
        # Build the bundled avatar's default rig now, so the first session starts at once.
        await store.rig_async(DEFAULT_ID, FRAME_SIZE)
        await registry.check_motion(settings.motion)
        metrics.avatars.set(len(store.list()))
        registry.start()
        try:
            yield
        finally:
            await registry.shutdown()
            executor.shutdown(wait=False, cancel_futures=True)
            if registry.render_workers is not None:
                await asyncio.to_thread(registry.render_workers.close)

    app = FastAPI(title="emolive", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Real-time talking portraits: one portrait + live audio -> a talking face "
                              "over WebRTC, with events and ARKit motion rows over a WebSocket. "
                              "WebSocket protocol: see server/PROTOCOL.md.")
    app.state.settings, app.state.store, app.state.registry, app.state.metrics = settings, store, registry, metrics
    # Outermost last: the guard refuses foreign hosts and origins and oversized bodies before
    # CORS or any route sees the request.
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.allowed_origins), allow_credentials=False,
                       allow_methods=["GET", "POST", "DELETE"],
                       allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(RequestGuard, settings=settings)

    # -- errors: always {"error": "<one line>"} ---------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(BadInputError)
    async def bad_input(_request: Request, error: BadInputError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        parts = []
        for item in error.errors():
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Starlette re-raises the error after this response, and uvicorn logs its traceback.
        return JSONResponse({"error": f"internal server error ({type(error).__name__}); see the server log"},
                            status_code=500)

    def session_auth(session_id: str, request: Request,
                     bearer: HTTPAuthorizationCredentials | None = Depends(session_bearer)) -> LiveSession:
        return registry.authorize(session_id, session_token(request, bearer))

    # -- health and metrics ---------------------------------------------------------------

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok", "sessions": len(registry), "max_sessions": settings.max_sessions}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # -- avatars --------------------------------------------------------------------------

    @app.post("/v1/avatars", status_code=201, tags=["avatars"], dependencies=[require_api_key],
              responses=error_responses(400, 401, 403, 413, 503), openapi_extra=UPLOAD_BODY)
    async def upload_avatar(request: Request) -> dict:
        name, data = await _read_upload(request, settings.max_upload_bytes)
        info = await store.add_async(data, name)
        metrics.avatars.set(len(store.list()))
        return info.to_json()

    @app.get("/v1/avatars", tags=["avatars"], dependencies=[require_api_key], responses=error_responses(401, 403))
    async def list_avatars() -> dict:
        return {"avatars": [info.to_json() for info in store.list()]}

    @app.get("/v1/avatars/{avatar_id}", tags=["avatars"], dependencies=[require_api_key],
             responses=error_responses(401, 403, 404))
    async def get_avatar(avatar_id: str) -> dict:
        info = store.get(avatar_id)
        if info is None:
            raise not_found(f"avatar {avatar_id!r}")
        return info.to_json()

    @app.delete("/v1/avatars/{avatar_id}", status_code=204, tags=["avatars"], dependencies=[require_api_key],
                responses=error_responses(401, 403, 404))
    async def delete_avatar(avatar_id: str) -> Response:
        try:
            removed = await asyncio.to_thread(store.delete, avatar_id)
        except PermissionError as error:
            raise ApiError(403, str(error)) from None
        if not removed:
            raise not_found(f"avatar {avatar_id!r}")
        metrics.avatars.set(len(store.list()))
        return Response(status_code=204)

    # -- sessions -------------------------------------------------------------------------

    @app.post("/v1/sessions", status_code=201, response_model=SessionCreated, tags=["sessions"],
              dependencies=[require_api_key], responses=error_responses(401, 403, 404, 413, 422, 503))
    async def create_session(request: SessionParams | None = None) -> SessionCreated:
        params = request or SessionParams()
        if params.motion is None:
            params = params.model_copy(update={"motion": settings.motion})
        try:
            parse_spec(params.motion)
        except ValueError as error:
            raise ApiError(422, f"motion: {error}") from None
        live = await registry.create(params)
        base = f"/v1/sessions/{live.id}"
        return SessionCreated(session_id=live.id, token=live.token, avatar_id=live.params.avatar_id,
                              mode=live.params.mode, size=live.params.size, fps=FPS,
                              offer_url=f"{base}/offer", ws_url=f"{base}/ws",
                              ice_servers=[IceServerInfo(**server.to_json()) for server in settings.ice_servers])

    @app.get("/v1/sessions/{session_id}", tags=["sessions"], responses=error_responses(401, 403, 404))
    async def get_session(session_id: str, request: Request,
                          bearer: HTTPAuthorizationCredentials | None = Depends(session_bearer)) -> dict:
        """A live session's state, or (for 10 minutes) an ended one's last state and why it ended."""
        return registry.describe(session_id, session_token(request, bearer))

    @app.delete("/v1/sessions/{session_id}", status_code=204, tags=["sessions"],
                responses=error_responses(401, 403, 404))
    async def delete_session(live: LiveSession = Depends(session_auth)) -> Response:
        await registry.close(live.id, "deleted by the client")
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/offer", tags=["sessions"],
              responses=error_responses(400, 401, 403, 404, 413, 422))
    async def offer(body: Offer, live: LiveSession = Depends(session_auth)) -> dict:
        from emolive.server.webrtc import answer_offer

        answer = await answer_offer(live, body.sdp, body.type, settings, metrics)
        return {"sdp": answer.sdp, "type": answer.type}

    @app.websocket("/v1/sessions/{session_id}/ws")
    async def session_ws(websocket: WebSocket, session_id: str) -> None:
        from emolive.server.ws import session_websocket

        await session_websocket(websocket, session_id, registry)

    # -- API docs, offline (before the demo page's "/" mount) --------------------------------

    add_offline_docs(app)

    # -- demo page ------------------------------------------------------------------------

    if DEMO_DIR.is_dir():
        app.mount("/", StaticFiles(directory=DEMO_DIR, html=True), name="demo")
    return app
