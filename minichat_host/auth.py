"""Who is calling: resolves an `Identity` (tenant, user, admin) for every API request.

Modes (config `auth.mode`): `dev` (one fixed identity; loopback only), `jwt`, `trusted_headers`.
Handlers read the identity with `identity(request)`; every query is scoped by its tenant and user.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Final

import jwt
import msgspec
from aiohttp import web

from minichat_host.api.problems import ProblemError
from minichat_host.config import AuthConfig, Config, ConfigError, JwtConfig

log = logging.getLogger("minichat.auth")


class Identity(msgspec.Struct, frozen=True):
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    is_admin: bool = False


IDENTITY_KEY = web.RequestKey("minichat.identity", Identity)
# Verified bearer tokens remembered per process (each entry ~1 KiB with the token itself).
VERIFIED_TOKEN_CACHE_SIZE: Final = 10_000
_NUMBER_TYPES: Final = (int, float)  # a tuple: a union is built anew on every check


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401, "unauthorized", detail, title="Unauthorized", headers={"WWW-Authenticate": "Bearer"}
    )


def _as_uuid(value: Any, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise _unauthorized(f"the {what} in the credentials is not a UUID") from None


class _JwtVerifier:
    """Verifies bearer tokens with a shared secret (HS256), a PEM public key or a JWKS file."""

    def __init__(self, cfg: JwtConfig) -> None:
        self._cfg = cfg
        self._keys: dict[str | None, Any] = {}
        self._verified: dict[str, tuple[Identity, float, float]] = {}
        if cfg.jwks_file:
            try:
                jwks = json.loads(Path(cfg.jwks_file).read_text(encoding="utf-8"))
                for key in jwt.PyJWKSet.from_dict(jwks).keys:
                    self._keys[key.key_id] = key.key
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(f"$.auth.jwt.jwks_file: cannot load {cfg.jwks_file}: {exc}") from None
        elif cfg.public_key_file:
            try:
                self._keys[None] = Path(cfg.public_key_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"$.auth.jwt.public_key_file: {exc.strerror}") from None
        elif cfg.secret:
            self._keys[None] = cfg.secret
        else:
            raise ConfigError("$.auth.jwt: set one of secret, public_key_file or jwks_file for auth.mode jwt")

    def _key_for(self, token: str) -> Any:
        if None in self._keys:
            return self._keys[None]
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self._keys:
            raise _unauthorized("unknown signing key")
        return self._keys[kid]

    def verify(self, token: str) -> Identity:
        # A token that verified once verifies again until it expires: skip the signature check and claim
        # parsing for it (both are most of what an authenticated hot request costs besides its query).
        cached = self._verified.get(token)
        if cached is not None:
            identity, not_before, expires = cached
            if not_before <= time.time() < expires:
                return identity
            del self._verified[token]  # expired: the full check below answers with the right error
        identity, not_before, expires = self._verify_fully(token)
        if len(self._verified) >= VERIFIED_TOKEN_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (identity, not_before, expires)
        return identity

    def _verify_fully(self, token: str) -> tuple[Identity, float, float]:
        """The identity, and the window (leeway included) in which the token stays valid."""
        cfg = self._cfg
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key_for(token),
                algorithms=list(cfg.algorithms),
                audience=cfg.audience or None,
                issuer=cfg.issuer or None,
                leeway=cfg.leeway_seconds,
                options={
                    "require": ["exp", cfg.tenant_claim, cfg.user_claim],
                    "verify_aud": bool(cfg.audience),
                },
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired") from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        roles = claims.get(cfg.admin_claim)
        is_admin = roles == cfg.admin_value or (isinstance(roles, list) and cfg.admin_value in roles)
        identity = Identity(
            tenant_id=_as_uuid(claims[cfg.tenant_claim], "tenant"),
            user_id=_as_uuid(claims[cfg.user_claim], "user"),
            is_admin=is_admin,
        )
        leeway = float(cfg.leeway_seconds)
        not_before = claims.get("nbf")
        return (
            identity,
            float(not_before) - leeway if isinstance(not_before, _NUMBER_TYPES) else float("-inf"),
            float(claims["exp"]) + leeway,
        )


class Authenticator:
    """Turns request headers into an Identity, or raises a 401 problem."""

    def __init__(self, config: AuthConfig) -> None:
        self._config = config
        self._dev = Identity(
            tenant_id=uuid.UUID(config.dev_tenant_id),
            user_id=uuid.UUID(config.dev_user_id),
            is_admin=config.dev_is_admin,
        )
        self._jwt = _JwtVerifier(config.jwt) if config.mode == "jwt" else None
        if config.mode == "trusted_headers" and not config.trusted_headers.secret:
            raise ConfigError("$.auth.trusted_headers.secret: required for auth.mode trusted_headers")
        self._gateway_secret = config.trusted_headers.secret.encode()

    def authenticate(self, request: web.Request) -> Identity:
        mode = self._config.mode
        if mode == "dev":
            return self._dev
        if mode == "jwt":
            assert self._jwt is not None
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("missing bearer token")
            return self._jwt.verify(token.strip())
        return self._from_trusted_headers(request)

    def _from_trusted_headers(self, request: web.Request) -> Identity:
        cfg = self._config.trusted_headers
        presented = request.headers.get(cfg.secret_header, "").encode()
        # Constant-time comparison so the secret cannot be guessed byte by byte from timings.
        if not presented or not hmac.compare_digest(presented, self._gateway_secret):
            raise _unauthorized("missing or wrong gateway secret")
        tenant = request.headers.get(cfg.tenant_header)
        user = request.headers.get(cfg.user_header)
        if not tenant or not user:
            raise _unauthorized(f"headers {cfg.tenant_header} and {cfg.user_header} are required")
        return Identity(
            tenant_id=_as_uuid(tenant, "tenant"),
            user_id=_as_uuid(user, "user"),
            is_admin=request.headers.get(cfg.admin_header, "").lower() in ("1", "true", "yes"),
        )


def identity(request: web.Request) -> Identity:
    value = request.get(IDENTITY_KEY)
    if not isinstance(value, Identity):
        raise ProblemError(401, "unauthorized", "Authentication required")
    return value


def require_admin(request: web.Request) -> Identity:
    who = identity(request)
    if not who.is_admin:
        raise ProblemError(403, "forbidden", "This endpoint requires the admin role")
    return who


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_allowed(config: Config) -> None:
    """`dev` auth trusts everyone as one user: refuse it off loopback unless explicitly overridden."""
    if config.auth.mode != "dev" or is_loopback(config.server.host):
        return
    if not config.auth.allow_dev_on_non_loopback:
        raise ConfigError(
            f"auth.mode is 'dev' but server.host is {config.server.host!r}, not a loopback address; "
            "use jwt or trusted_headers, or set auth.allow_dev_on_non_loopback: true"
        )
    log.warning("auth.mode 'dev' on non-loopback %s: every caller is the dev user", config.server.host)
