"""Host side of the registry HTTP API (CLI, deploy, demo): one call helper that maps failures onto
edgekit errors.

Every request carries the API bearer token from ``EDGEKIT_REGISTRY_TOKEN`` (ADR 0009); a 401/403
answer becomes :class:`~edgekit.core.errors.AuthError` / ``ForbiddenError`` with a hint.
"""

from __future__ import annotations

import os
from typing import Any

from edgekit.core.errors import AuthError, EdgekitError, ForbiddenError, TransportError, UsageError, error_class

TOKEN_ENV = "EDGEKIT_REGISTRY_TOKEN"


def auth_headers(token: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer …`` from ``token`` or ``$EDGEKIT_REGISTRY_TOKEN``; {} when neither is set."""
    token = (token or os.environ.get(TOKEN_ENV) or "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def raise_for_auth(status: int, data: dict, registry: str, token_sent: bool) -> None:
    """Turn a 401/403 answer into AuthError/ForbiddenError whose hint says what to do next."""
    if status not in (401, 403):
        return
    err = (data or {}).get("error") or {}
    message = err.get("message") or f"HTTP {status}"
    if status == 403:
        raise ForbiddenError(f"registry {registry}: {message}")
    if not token_sent:
        raise AuthError(f"registry {registry} needs an API token and none was sent ({TOKEN_ENV} is not set)")
    raise AuthError(f"registry {registry} refused the token: {message}",
                    hint=f"Check {TOKEN_ENV}; create a new token with `edgekit registry token create`.")



def api(registry: str, method: str, path: str, *, body: dict | None = None, params: dict | None = None,
        timeout: float = 30.0, token: str | None = None) -> Any:
    """Call the registry (``token``, else $EDGEKIT_REGISTRY_TOKEN); a JSON error answer is re-raised
    as the same edgekit error class."""
    import requests

    url = f"{registry.rstrip('/')}{path}"
    headers = auth_headers(token)
    try:
        r = requests.request(method, url, json=body, params=params, timeout=timeout, headers=headers)
    except requests.RequestException as exc:
        raise TransportError(f"cannot reach the registry at {registry}: {exc}",
                             hint="Start it with `edgekit registry serve` or pass --registry URL.") from None
    try:
        data = r.json()
    except ValueError:
        raise TransportError(f"registry answered HTTP {r.status_code} with non-JSON: {r.text[:200]}") from None
    raise_for_auth(r.status_code, data, registry, bool(headers))
    if r.status_code >= 400:
        err = data.get("error") or {}
        cls = error_class(err.get("code", ""))
        if cls is EdgekitError and r.status_code < 500:
            cls = UsageError
        raise cls(err.get("message", f"HTTP {r.status_code}"), hint=err.get("hint"), **(err.get("details") or {}))
    return data


def split_ref(ref: str) -> tuple[str, str]:
    """``MODEL@VERSION`` → (model, version)."""
    model, at, version = ref.partition("@")
    if not at or not model or not version:
        raise UsageError(f"expected MODEL@VERSION, got {ref!r}", hint="e.g. digits-cnn@2.0.0; see `edgekit models ls`.")
    return model, version
