"""The web page at `/ui`: plain files from `app/static`, served with the headers a page needs.

    /ui                        -> 308 to /ui/ (the page's relative URLs need the slash)
    /ui/                       the page; revalidated on every load (`no-cache`)
    /ui/assets/<version>/...   scripts, styles, icon; `<version>` is a hash of their
                               content, so they are cached for a year and never go stale

The page calls the same public API as any client (relative URLs, so it also works behind a
path prefix) and carries no data of its own, so it is never behind the API key: it asks for
the key when the API answers 401. The Content-Security-Policy allows the service's own
origin only (no inline script or style, no other host); images the API returns arrive as
`data:` URLs and uploads are shown from `blob:` URLs, both local to the tab.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_DIR = STATIC_DIR / "assets"
ASSETS_SLOT = "@ASSETS@"  # in index.html; becomes "assets/<version>"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
PAGE_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=31536000, immutable"


def asset_version(directory: Path = ASSETS_DIR) -> str:
    """A short hash of every asset's name and bytes: it changes whenever one does."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class WithHeaders:
    """Adds the security headers to every response of `app`, and `cache` to its 2xx/304."""

    def __init__(self, app: ASGIApp, cache: str) -> None:
        self.app = app
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.update(SECURITY_HEADERS)
                if message["status"] < 300 or message["status"] == 304:
                    headers["Cache-Control"] = self.cache
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_ui(app: FastAPI) -> None:
    """Serve the page at `/ui/` and its assets under a content-versioned path."""
    version = asset_version()
    page = (STATIC_DIR / "index.html").read_text().replace(ASSETS_SLOT, f"assets/{version}")
    app.include_router(_page_router(page))
    assets = StaticFiles(directory=ASSETS_DIR, follow_symlink=False)
    app.mount(f"/ui/assets/{version}", WithHeaders(assets, ASSET_CACHE), name="ui-assets")


def _page_router(page: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui")
    async def to_page() -> RedirectResponse:
        return RedirectResponse("ui/", status_code=308)

    @router.get("/ui/")
    async def ui_page() -> HTMLResponse:
        headers = {**SECURITY_HEADERS, "Cache-Control": PAGE_CACHE}
        return HTMLResponse(page, headers=headers)

    return router
