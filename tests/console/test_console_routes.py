"""How the host serves the console (no browser): content types, CSP, the API prefix, ETags, off switch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minichat_host.api.console import CONTENT_SECURITY_POLICY
from minichat_host.app import create_app
from minichat_host.config import Config
from minichat_host.testing import make_config


def console_config(data_dir: Path, db_url: str, **server: Any) -> Config:
    return make_config(data_dir, {"server": server, "database": {"url": db_url, "migrate_on_start": False}})


async def test_page_and_assets_have_types_and_security_headers(
    aiohttp_client: Any, tmp_path: Path, sqlite_migrated_db_url: str
) -> None:
    client = await aiohttp_client(create_app(console_config(tmp_path, sqlite_migrated_db_url)))
    for path, content_type in [
        ("/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/style.css", "text/css; charset=utf-8"),
    ]:
        response = await client.get(path)
        assert response.status == 200, path
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-cache"
        assert await response.read()
    page = await (await client.get("/")).text()
    assert '<meta name="minichat-api-prefix" content="/mini-chat">' in page
    # Nothing inline and nothing from another origin.
    assert "<script>" not in page and "style=" not in page and "http" not in page.split("<body>", 1)[1]


async def test_page_carries_the_configured_prefix(
    aiohttp_client: Any, tmp_path: Path, sqlite_migrated_db_url: str
) -> None:
    config = console_config(tmp_path, sqlite_migrated_db_url, url_prefix="/chat-api/")
    client = await aiohttp_client(create_app(config))
    page = await (await client.get("/")).text()
    assert '<meta name="minichat-api-prefix" content="/chat-api">' in page
    assert (await client.get("/chat-api/v1/models")).status == 200


async def test_unchanged_asset_answers_304(
    aiohttp_client: Any, tmp_path: Path, sqlite_migrated_db_url: str
) -> None:
    client = await aiohttp_client(create_app(console_config(tmp_path, sqlite_migrated_db_url)))
    first = await client.get("/console/app.js")
    etag = first.headers["ETag"]
    again = await client.get("/console/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    other = await client.get("/console/app.js", headers={"If-None-Match": '"stale"'})
    assert other.status == 200
    head = await client.head("/")
    assert head.status == 200 and head.headers["Content-Type"] == "text/html; charset=utf-8"


async def test_unknown_asset_is_a_problem(
    aiohttp_client: Any, tmp_path: Path, sqlite_migrated_db_url: str
) -> None:
    client = await aiohttp_client(create_app(console_config(tmp_path, sqlite_migrated_db_url)))
    response = await client.get("/console/../pyproject.toml")
    assert response.status == 404
    assert response.headers["Content-Type"] == "application/problem+json"
    missing = await client.get("/console/secrets.js")
    assert missing.status == 404
    assert (await missing.json())["code"] == "not_found"


async def test_console_can_be_switched_off(
    aiohttp_client: Any, tmp_path: Path, sqlite_migrated_db_url: str
) -> None:
    config = console_config(tmp_path, sqlite_migrated_db_url, web_console=False)
    client = await aiohttp_client(create_app(config))
    for path in ("/", "/console/app.js"):
        response = await client.get(path)
        assert response.status == 404
        assert response.headers["Content-Type"] == "application/problem+json"
    assert (await client.get("/health")).status == 200
