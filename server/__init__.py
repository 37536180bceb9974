"""emolive's server: FastAPI + uvicorn + aiortc around ``emolive.engine.session``.

``create_app(settings)`` builds the ASGI app; ``emolive serve`` runs it. The WebSocket
protocol is specified in ``server/PROTOCOL.md``.
"""

from emolive.server.config import Settings


def create_app(settings: Settings | None = None):
    from emolive.server.app import create_app as _create_app

    return _create_app(settings)


__all__ = ["Settings", "create_app"]
