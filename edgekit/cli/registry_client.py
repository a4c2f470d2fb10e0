"""The CLI's side of the registry HTTP API: one call helper that maps failures onto edgekit errors."""

from __future__ import annotations

from typing import Any

from edgekit.core.errors import EdgekitError, TransportError, UsageError


def _error_class(code: str) -> type[EdgekitError]:
    stack: list[type[EdgekitError]] = [EdgekitError]
    while stack:
        cls = stack.pop()
        if cls.code == code:
            return cls
        stack.extend(cls.__subclasses__())
    return EdgekitError


def api(registry: str, method: str, path: str, *, body: dict | None = None, params: dict | None = None,
        timeout: float = 30.0) -> Any:
    """Call the registry; a JSON error answer is re-raised as the same edgekit error class."""
    import requests

    url = f"{registry.rstrip('/')}{path}"
    try:
        r = requests.request(method, url, json=body, params=params, timeout=timeout)
    except requests.RequestException as exc:
        raise TransportError(f"cannot reach the registry at {registry}: {exc}",
                             hint="Start it with `edgekit registry serve` or pass --registry URL.") from None
    try:
        data = r.json()
    except ValueError:
        raise TransportError(f"registry answered HTTP {r.status_code} with non-JSON: {r.text[:200]}") from None
    if r.status_code >= 400:
        err = data.get("error") or {}
        cls = _error_class(err.get("code", ""))
        if cls is EdgekitError and r.status_code < 500:
            cls = UsageError
        raise cls(err.get("message", f"HTTP {r.status_code}"), hint=err.get("hint"))
    return data


def split_ref(ref: str) -> tuple[str, str]:
    """``MODEL@VERSION`` → (model, version)."""
    model, at, version = ref.partition("@")
    if not at or not model or not version:
        raise UsageError(f"expected MODEL@VERSION, got {ref!r}", hint="e.g. digits-cnn@2.0.0; see `edgekit models ls`.")
    return model, version
