"""Optional API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

With no key configured every endpoint is open. With keys, the API routes and the API's
documentation (`/docs`, `/redoc`, `/openapi.json`, unless `VAE_PUBLIC_DOCS=true`) need
one; `/health`, `/ready` and `/metrics` never do (probes and scrapers carry no secrets).

Both headers are read alike: surrounding whitespace is dropped, and an empty value is no
key. When a request carries both, the Bearer token is the key and `X-API-Key` is not
read, so a proxy's header never decides for the client's. Keys are compared in constant
time against every configured key, and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable

from starlette.requests import Request

from app.errors import UnauthorizedError


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(key.encode() for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def accepts(self, presented: str) -> bool:
        """True if `presented` is one of the keys; time does not depend on which."""
        candidate = presented.encode()
        matched = False
        for key in self._keys:  # no early exit: every key is compared every time
            matched |= hmac.compare_digest(key, candidate)
        return matched


def presented_key(request: Request) -> str | None:
    """The key a request carries: its Bearer token, else its `X-API-Key`, trimmed."""
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-api-key", "").strip() or None


def api_key_guard(keys: ApiKeys, role: str = "API") -> Callable[[Request], Awaitable[None]]:
    """A route dependency that refuses requests without a valid key (401); `role` names
    the kind of key in the message ("API", or "admin" for the management routes)."""

    async def require_api_key(request: Request) -> None:
        if not keys.enabled:
            return
        presented = presented_key(request)
        if presented is None:
            raise UnauthorizedError(f"an {role} key is required: Authorization: Bearer <key>")
        if not keys.accepts(presented):
            raise UnauthorizedError(f"the {role} key is not valid")

    return require_api_key
