"""The built-in web console: `GET /` serves a single page that drives the public API from the browser.

The page is plain HTML, CSS and JavaScript shipped as package data in `minichat_host/web/` (no build step,
no CDN, no external fonts). The API prefix is written into a `<meta>` tag of the page when it is served,
so the script needs no inline configuration and the Content-Security-Policy can forbid every inline script
and style and every origin but this one. Assets are read once at registration and answered from memory
with a strong ETag (`If-None-Match` gives 304) and `Cache-Control: no-cache`, so an upgraded host is
picked up on the next load without a stale cached script.

`app.py` calls `register(app, prefix, enabled=config.server.web_console)`.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import hdrs, web

INDEX_FILE: Final = "index.html"
ASSET_URL_BASE: Final = "/console/"
PREFIX_PLACEHOLDER: Final = "{{API_PREFIX}}"

# Assets served under ASSET_URL_BASE, with their media types (the page itself is served at `/`).
STATIC_ASSETS: Final[Mapping[str, str]] = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}

# Same origin only. `img-src data:` is for the server-made WebP thumbnails that messages carry as base64;
# nothing else is ever loaded from anywhere but this host.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class ConsoleAsset:
    body: bytes
    content_type: str
    etag: str


def _asset(body: bytes, content_type: str) -> ConsoleAsset:
    digest = hashlib.sha256(body).hexdigest()[:32]
    return ConsoleAsset(body=body, content_type=content_type, etag=f'"{digest}"')


def load_assets(prefix: str) -> dict[str, ConsoleAsset]:
    """Every console file by URL path (`/` and `/console/<name>`), the page bound to the API `prefix`."""
    web_dir = resources.files("minichat_host").joinpath("web")
    page = web_dir.joinpath(INDEX_FILE).read_text(encoding="utf-8")
    page = page.replace(PREFIX_PLACEHOLDER, html.escape(prefix.rstrip("/"), quote=True))
    assets = {"/": _asset(page.encode("utf-8"), "text/html")}
    for name, content_type in STATIC_ASSETS.items():
        assets[ASSET_URL_BASE + name] = _asset(web_dir.joinpath(name).read_bytes(), content_type)
    return assets


def _etag_matches(request: web.Request, etag: str) -> bool:
    header = request.headers.get(hdrs.IF_NONE_MATCH, "")
    candidates = {value.strip().removeprefix("W/") for value in header.split(",")}
    return etag in candidates or "*" in candidates


def _handler(asset: ConsoleAsset) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        headers = {**SECURITY_HEADERS, hdrs.ETAG: asset.etag}
        if _etag_matches(request, asset.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
        )

    return serve


def register(app: web.Application, prefix: str, *, enabled: bool = True) -> None:
    """Serve the console at `/` (and its assets under `/console/`) when `enabled`."""
    if not enabled:
        return
    for path, asset in load_assets(prefix).items():
        app.router.add_get(path, _handler(asset))
