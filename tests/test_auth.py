"""Auth modes through HTTP: dev, jwt (HS256 / RS256 / JWKS) and trusted gateway headers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from minichat_host.api.edge import edge_middleware
from minichat_host.auth import Authenticator, check_bind_allowed, identity, require_admin
from minichat_host.config import ConfigError, parse_config

TENANT = str(uuid.uuid4())
USER = str(uuid.uuid4())
ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def make_app(auth: dict[str, Any]) -> web.Application:
    config = parse_config({"auth": auth}, env={})
    app = web.Application(middlewares=[edge_middleware(Authenticator(config.auth), "/p")])

    async def whoami(request: web.Request) -> web.Response:
        who = identity(request)
        return web.json_response(
            {"tenant": str(who.tenant_id), "user": str(who.user_id), "admin": who.is_admin}
        )

    async def admin(request: web.Request) -> web.Response:
        require_admin(request)
        return web.json_response({"ok": True})

    app.router.add_get("/p/v1/me", whoami)
    app.router.add_get("/p/v1/admin", admin)
    app.router.add_get("/health", lambda r: web.json_response({"status": "healthy"}))
    return app


def token(
    secret: Any = "s3cret-that-is-long-enough-for-hs256",
    alg: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    body: dict[str, Any] = {
        "tenant_id": TENANT,
        "sub": USER,
        "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm=alg, headers=headers)


async def get(client: TestClient[Any, Any], path: str, **headers: str) -> tuple[int, dict[str, Any], str]:
    resp = await client.get(path, headers=headers)
    return resp.status, await resp.json(content_type=None), resp.content_type


async def test_dev_mode_is_the_fixed_identity(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app({"mode": "dev"}))
    status, body, _ = await get(client, "/p/v1/me")
    assert status == 200
    assert body == {
        "tenant": "00000000-df51-5b42-9538-d2b56b7ee953",
        "user": "11111111-6a88-4768-9dfc-6bcd5187d9ed",
        "admin": True,
    }


async def test_jwt_hs256(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(
        make_app(
            {"mode": "jwt", "jwt": {"secret": "s3cret-that-is-long-enough-for-hs256", "leeway_seconds": 0}}
        )
    )
    status, body, _ = await get(client, "/p/v1/me", Authorization=f"Bearer {token()}")
    assert (status, body["tenant"], body["user"], body["admin"]) == (200, TENANT, USER, False)
    status, body, _ = await get(
        client, "/p/v1/admin", Authorization=f"Bearer {token(roles=['minichat-admin'])}"
    )
    assert status == 200
    status, body, _ = await get(client, "/p/v1/admin", Authorization=f"Bearer {token()}")
    assert (status, body["code"]) == (403, "forbidden")
    # The health endpoint at the root needs no credentials.
    assert (await client.get("/health")).status == 200


async def test_a_remembered_token_still_expires(aiohttp_client: ClientFactory) -> None:
    # Verified tokens are remembered (the signature is checked once); expiry is still checked every time.
    client = await aiohttp_client(
        make_app(
            {"mode": "jwt", "jwt": {"secret": "s3cret-that-is-long-enough-for-hs256", "leeway_seconds": 0}}
        )
    )
    short_lived = token(exp=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
    for _ in range(3):
        status, body, _ = await get(client, "/p/v1/me", Authorization=f"Bearer {short_lived}")
        assert (status, body["user"]) == (200, USER)
    await asyncio.sleep(2.1)
    status, body, _ = await get(client, "/p/v1/me", Authorization=f"Bearer {short_lived}")
    assert (status, body["code"]) == (401, "unauthorized")
    assert "expired" in body["detail"]
    # A token that differs in one signature character is not taken for the remembered one.
    tampered = short_lived[:-2] + ("A" if short_lived[-2] != "A" else "B") + short_lived[-1]
    fresh = token()
    assert (await get(client, "/p/v1/me", Authorization=f"Bearer {fresh}"))[0] == 200
    assert (await get(client, "/p/v1/me", Authorization=f"Bearer {fresh[:-2]}xy"))[0] == 401
    assert (await get(client, "/p/v1/me", Authorization=f"Bearer {tampered}"))[0] == 401


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Basic abc",
        "Bearer ",
        "Bearer not-a-jwt",
        f"Bearer {token(secret='wrong-secret')}",
        f"Bearer {token(exp=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))}",
        f"Bearer {token(exp=None)}",
        f"Bearer {token(tenant_id=None)}",
        f"Bearer {token(sub='not-a-uuid')}",
        f"Bearer {token(nbf=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10))}",
    ],
)
async def test_jwt_rejections_are_401_problems(aiohttp_client: ClientFactory, header: str | None) -> None:
    client = await aiohttp_client(
        make_app(
            {"mode": "jwt", "jwt": {"secret": "s3cret-that-is-long-enough-for-hs256", "leeway_seconds": 0}}
        )
    )
    status, body, ctype = await get(client, "/p/v1/me", **({"Authorization": header} if header else {}))
    assert status == 401
    assert ctype == "application/problem+json"
    assert body["code"] == "unauthorized"
    assert "s3cret-that-is-long-enough-for-hs256" not in json.dumps(body)


async def test_jwt_audience_and_issuer(aiohttp_client: ClientFactory) -> None:
    auth = {
        "mode": "jwt",
        "jwt": {
            "secret": "another-secret-long-enough-for-hs256",
            "audience": "minichat",
            "issuer": "https://idp",
        },
    }
    client = await aiohttp_client(make_app(auth))
    good = token(secret="another-secret-long-enough-for-hs256", aud="minichat", iss="https://idp")
    assert (await get(client, "/p/v1/me", Authorization=f"Bearer {good}"))[0] == 200
    for bad in (
        token(secret="another-secret-long-enough-for-hs256", aud="other", iss="https://idp"),
        token(secret="another-secret-long-enough-for-hs256", aud="minichat", iss="x"),
    ):
        assert (await get(client, "/p/v1/me", Authorization=f"Bearer {bad}"))[0] == 401


async def test_jwt_rs256_public_key_and_es256_jwks(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    client = await aiohttp_client(
        make_app(
            {"mode": "jwt", "jwt": {"algorithms": ["RS256"], "public_key_file": str(tmp_path / "pub.pem")}}
        )
    )
    assert (await get(client, "/p/v1/me", Authorization=f"Bearer {token(rsa_key, 'RS256')}"))[0] == 200
    assert (await get(client, "/p/v1/me", Authorization=f"Bearer {token()}"))[0] == 401  # HS256 not allowed

    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwk["kid"] = "k1"
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    client = await aiohttp_client(
        make_app({"mode": "jwt", "jwt": {"algorithms": ["ES256"], "jwks_file": str(tmp_path / "jwks.json")}})
    )
    good = token(ec_key, "ES256", headers={"kid": "k1"})
    assert (await get(client, "/p/v1/me", Authorization=f"Bearer {good}"))[0] == 200
    unknown = token(ec_key, "ES256", headers={"kid": "k2"})
    assert (await get(client, "/p/v1/me", Authorization=f"Bearer {unknown}"))[0] == 401


async def test_trusted_headers(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(make_app({"mode": "trusted_headers", "trusted_headers": {"secret": "gw"}}))
    base = {"X-Tenant-Id": TENANT, "X-User-Id": USER}
    status, body, _ = await get(client, "/p/v1/me", **base, **{"X-Gateway-Secret": "gw"})
    assert (status, body["tenant"], body["admin"]) == (200, TENANT, False)
    assert (await get(client, "/p/v1/me", **base))[0] == 401
    assert (await get(client, "/p/v1/me", **base, **{"X-Gateway-Secret": "gx"}))[0] == 401
    assert (await get(client, "/p/v1/me", **{"X-Tenant-Id": TENANT, "X-Gateway-Secret": "gw"}))[0] == 401
    bad = {"X-Tenant-Id": "nope", "X-User-Id": USER, "X-Gateway-Secret": "gw"}
    assert (await get(client, "/p/v1/me", **bad))[0] == 401
    admin = {**base, "X-Gateway-Secret": "gw", "X-Admin": "true"}
    assert (await get(client, "/p/v1/admin", **admin))[0] == 200


def test_misconfigured_modes_fail_at_start() -> None:
    with pytest.raises(ConfigError, match=r"auth\.jwt"):
        Authenticator(parse_config({"auth": {"mode": "jwt"}}, env={}).auth)
    with pytest.raises(ConfigError, match=r"trusted_headers\.secret"):
        Authenticator(parse_config({"auth": {"mode": "trusted_headers"}}, env={}).auth)


def test_dev_mode_refuses_non_loopback_bind(caplog: pytest.LogCaptureFixture) -> None:
    check_bind_allowed(parse_config({"server": {"host": "127.0.0.1"}}, env={}))
    check_bind_allowed(parse_config({"server": {"host": "::1"}}, env={}))
    with pytest.raises(ConfigError, match="loopback"):
        check_bind_allowed(parse_config({"server": {"host": "0.0.0.0"}}, env={}))
    override = parse_config(
        {"server": {"host": "0.0.0.0"}, "auth": {"allow_dev_on_non_loopback": True}}, env={}
    )
    check_bind_allowed(override)
    assert "non-loopback" in caplog.text
    check_bind_allowed(parse_config({"server": {"host": "0.0.0.0"}, "auth": {"mode": "jwt"}}, env={}))
