"""Optional bearer-token authentication, shared by both ingresses."""

from __future__ import annotations

import hmac

from serve_app.core.errors import Unauthenticated


class BearerAuth:
    """Checks ``Authorization: Bearer <token>``; ``token=None`` disables the check."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None) -> None:
        if self._token is None:
            return
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise Unauthenticated("missing bearer token", details={"scheme": "Bearer"})
        if not hmac.compare_digest(value.strip().encode(), self._token):
            raise Unauthenticated("invalid bearer token", details={"scheme": "Bearer"})
