"""/docs: Swagger UI for /openapi.json, from files on this machine.

The page's script and styles come from the swagger-ui-bundle package
(PyPI), served under /docs/assets, never from a CDN. Without that package
there is no /docs page (404); /openapi.json is served either way.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def swagger_ui_dir() -> str | None:
    """The directory of swagger-ui's files, or None when not installed."""
    try:
        import swagger_ui_bundle  # type: ignore[import-untyped]
    except ImportError:
        return None
    return str(swagger_ui_bundle.swagger_ui_path)


def install(app: FastAPI) -> bool:
    """Adds /docs and its assets when swagger-ui is installed; says whether."""
    directory = swagger_ui_dir()
    if directory is None:
        return False
    app.mount(ASSETS, StaticFiles(directory=directory), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )

    return True
