"""The API docs page (Swagger UI at /docs), served with no CDN.

FastAPI's own page loads its JavaScript and CSS from a CDN, so it stays blank on an offline
or firewalled machine. The fastapi-offline package ships the same assets (swagger-ui-dist 5);
they are served from it under ``ASSETS``. There is no ReDoc page: ReDoc fetches its logo
from its CDN whatever it is told.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"


def add_offline_docs(app: FastAPI) -> None:
    """Add /docs to an app created with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS, StaticFiles(directory=ASSETS_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API docs", oauth2_redirect_url=None,
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png", swagger_ui_parameters=app.swagger_ui_parameters)
