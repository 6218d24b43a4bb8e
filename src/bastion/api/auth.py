"""Who is calling over HTTP: API keys for ``/v1``, the admin key for ``/admin``.

A key may come as ``Authorization: Bearer <key>`` (what the OpenAI SDK sends) or as
``x-api-key: <key>`` (what the Anthropic SDK sends), so both SDKs work unchanged.

With ``auth.mode: off`` a request without a key runs as the tenant ``default``. The SDKs insist
on *some* key, so clients send placeholders (``unused``, ``sk-no-key-required``): only a token
shaped like a bastion key (``bst_…``) is authenticated in that mode, and then for real: a
caller that presents a bastion key expects its tenant, and a wrong or revoked one must say so
rather than silently run as ``default``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from starlette.requests import Request

from bastion.api.headers import headers_of
from bastion.config import AuthConfig, read_secret
from bastion.domain.errors import Forbidden, Unauthenticated
from bastion.domain.identity import DEFAULT_PRINCIPAL, Principal
from bastion.services.identity import IdentityService, looks_like_key


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The presented key, Bearer first, or None. ``headers`` is Starlette's case-insensitive
    ``Headers`` or any mapping with lower-case names."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key")
    if api_key and api_key.strip():
        return api_key.strip()
    return None


async def principal_for(request: Request, identity: IdentityService,
                        auth: AuthConfig) -> Principal:
    """The principal a request runs as, or ``Unauthenticated``."""
    token = token_from_headers(headers_of(request))
    if auth.mode == "off" and (token is None or not looks_like_key(token)):
        return DEFAULT_PRINCIPAL
    return await identity.authenticate(token)


def admin_guard(request: Request, auth: AuthConfig) -> None:
    """Allow the request only with the admin key; the key is read from the environment on each
    call, so rotating it needs no restart. 403 when no admin key is configured (the admin API
    is off, whatever is presented), 401 for a missing or wrong key. The comparison is constant
    time so the key cannot be discovered one character at a time."""
    env = auth.admin_key_env
    expected = read_secret(env)
    if not expected:
        hint = f"set {env}" if env else "set auth.admin_key_env and that environment variable"
        raise Forbidden(f"admin API disabled: {hint}", code="admin_disabled")
    given = token_from_headers(request.headers)
    if given is None:
        raise Unauthenticated("missing admin key: send 'Authorization: Bearer <admin key>'")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthenticated("invalid admin key")
