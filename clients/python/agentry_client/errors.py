"""Errors: one `AgentryError` per API error envelope, subclassed by HTTP status."""

from __future__ import annotations

from typing import Any


class AgentryError(Exception):
    """An error answered by the API (or, for `status` None, met on the way to it)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        field: str | None = None,
        request_id: str | None = None,
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code
        self.field, self.request_id, self.details = field, request_id, details
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message} (request_id: {self.request_id or '-'})"


class BadRequest(AgentryError):
    """400."""


class ValidationError(BadRequest):
    """422: `field` names the first offending field."""


class Unauthorized(AgentryError):
    """401."""


class Forbidden(AgentryError):
    """403."""


class NotFound(AgentryError):
    """404 (or a name that matched nothing, with no request id)."""


class Conflict(AgentryError):
    """409: `conflict` or `invalid_transition`."""


class BudgetExceeded(AgentryError):
    """402."""


class PayloadTooLarge(AgentryError):
    """413."""


class RateLimited(AgentryError):
    """429 after the retries (or at once for a request that may not be retried)."""


class ServerError(AgentryError):
    """5xx other than 503."""


class Unavailable(ServerError):
    """503: a backing service is down."""


class ConnectionFailed(AgentryError):
    """The server could not be reached (or the connection broke) after the retries."""


class ProtocolError(AgentryError):
    """The server answered something that is not the API (not JSON, a stream cut short...)."""


_BY_STATUS: dict[int, type[AgentryError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: BudgetExceeded,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}


def error_class(status: int) -> type[AgentryError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else AgentryError


def from_response(
    status: int, body: bytes, headers: Any, retry_after: float | None = None
) -> AgentryError:
    """The error for a non-2xx answer; tolerant of bodies that are not the envelope."""
    import json

    request_id = headers.get("x-request-id")
    envelope: dict[str, Any] = {}
    try:
        parsed = json.loads(body or b"null")
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            envelope = parsed["error"]
    except ValueError:
        pass
    text = body.decode("utf-8", "replace").strip()[:200] if body else ""
    return error_class(status)(
        str(envelope.get("message") or text or f"HTTP {status}"),
        status=status,
        code=str(envelope.get("code") or f"http_{status}"),
        field=envelope.get("field"),
        request_id=envelope.get("request_id") or request_id,
        details=envelope.get("details"),
        retry_after=retry_after,
    )
