"""One error model: every failure leaves as the API.md envelope, with the request id.

Nothing from the internals (SQL, stack traces, secrets) reaches a response.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from backend.core.logging import innermost_frame

log = structlog.get_logger()


class ErrorCode(StrEnum):
    """Every `error.code` an answer can carry (a closed set: clients may switch on it)."""

    bad_request = "bad_request"
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    conflict = "conflict"
    invalid_transition = "invalid_transition"
    budget_exceeded = "budget_exceeded"
    payload_too_large = "payload_too_large"
    unsupported_media_type = "unsupported_media_type"
    validation_error = "validation_error"
    rate_limited = "rate_limited"
    internal_error = "internal_error"
    unavailable = "unavailable"


class AppError(Exception):
    status_code = 500
    code = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details
        if headers is not None:
            self.headers = headers


class BadRequest(AppError):
    status_code, code = 400, "bad_request"


class Unauthorized(AppError):
    status_code, code = 401, "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(AppError):
    status_code, code = 403, "forbidden"


class NotFound(AppError):
    status_code, code = 404, "not_found"


class Conflict(AppError):
    status_code, code = 409, "conflict"


class InvalidTransition(AppError):
    status_code, code = 409, "invalid_transition"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="status")


class BudgetExceeded(AppError):
    status_code, code = 402, "budget_exceeded"


class ValidationFailed(AppError):
    status_code, code = 422, "validation_error"


class RateLimited(AppError):
    status_code, code = 429, "rate_limited"


class Unavailable(AppError):
    status_code, code = 503, "unavailable"


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def envelope(
    request: Request,
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "field": field,
        "request_id": request_id(request),
    }
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or str(loc[-1] if loc else "")


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only location, message and type: echoing the rejected input could leak a password.
    return [
        {
            "field": _field_of(tuple(e.get("loc", ()))),
            "message": e.get("msg", ""),
            "type": e["type"],
        }
        for e in exc.errors()
    ]


# Postgres saying "not now" rather than "no": connection exceptions (08), insufficient
# resources such as too many clients (53), shutting down or starting up (57P01-57P03).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03")


def is_connection_error(exc: BaseException) -> bool:
    """The database (through SQLAlchemy, or asyncpg directly) is unreachable or refusing for
    now: try again later. Anything else is an answer."""
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        return bool(exc.connection_invalidated) or (orig is not None and is_connection_error(orig))
    sqlstate = getattr(exc, "sqlstate", None) or ""
    # PoolTimeoutError: every pooled connection stayed busy for pool_timeout seconds.
    return sqlstate.startswith(_UNAVAILABLE_SQLSTATES) or isinstance(
        exc, OSError | ConnectionError | TimeoutError | PoolTimeoutError
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return envelope(
            request,
            exc.status_code,
            exc.code,
            exc.message,
            field=exc.field,
            details=exc.details,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("loc", ("",))[0] == "path" for e in exc.errors()):
            # PATCH /agents/metrics matched /agents/{agent_id} for want of a PATCH on the fixed
            # path: a 405, as for any method a path does not have, not a bad id.
            methods = allowed_methods(request)
            if request.method not in methods:
                return envelope(
                    request,
                    405,
                    "method_not_allowed",
                    "Method Not Allowed",
                    headers={"Allow": ", ".join(methods)},
                )
        details = _validation_details(exc)
        first = details[0] if details else {"field": None, "message": "Invalid request"}
        if first.get("type") == "json_invalid":
            return envelope(request, 400, "bad_request", "Malformed JSON body", details=details)
        message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
        return envelope(
            request, 422, "validation_error", str(message), field=first["field"], details=details
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, RecursionError):
            # FastAPI's body parse gave up: JSON nested far deeper than any field allows.
            return envelope(request, 422, "validation_error", "The JSON body is nested too deeply")
        code = _HTTP_CODES.get(exc.status_code) or (
            ErrorCode.internal_error if exc.status_code >= 500 else ErrorCode.bad_request
        )
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; a path has one per method.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return envelope(
            request, exc.status_code, code, message, headers=dict(headers) if headers else None
        )

    @app.exception_handler(IntegrityError)
    async def _integrity(request: Request, exc: IntegrityError) -> JSONResponse:
        log.info("integrity_conflict", constraint=getattr(exc.orig, "constraint_name", None))
        return envelope(request, 409, "conflict", "The request conflicts with existing data")

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if is_data_error(exc):
            # Input the schemas let through but Postgres refuses (a NUL character, an
            # out-of-range number): the caller's fault, and the transaction rolled back.
            log.info("data_error", sqlstate=getattr(exc.orig, "sqlstate", None))
            return envelope(
                request,
                422,
                "validation_error",
                "A value is not acceptable (e.g. a NUL character or a number out of range)",
            )
        return unexpected_error_response(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(request, exc)


def allowed_methods(request: Request) -> list[str]:
    """The methods of the request's path: those of the most specific templates matching it
    (/users/me, not /users/{user_id})."""
    routes = getattr(request.app.state, "route_methods", None)
    if routes is None:
        routes = [
            (compile_path(c.path_format)[0], c.path_format.count("{"), c.original_route.methods)  # type: ignore[attr-defined]
            for c in iter_route_contexts(request.app.routes)
            if c.path_format and getattr(c.original_route, "methods", None)
        ]
        request.app.state.route_methods = routes
    path = request.scope["path"]
    matches = [(params, methods) for regex, params, methods in routes if regex.match(path)]
    fewest = min((params for params, _ in matches), default=0)
    return sorted({m for params, methods in matches if params == fewest for m in methods})


def unexpected_error_response(request: Request, exc: BaseException) -> JSONResponse:
    """503 for a lost DB/Redis connection, else 500; logged without a stack trace."""
    if is_connection_error(exc) or _is_redis_down(exc):
        log.warning("backend_unavailable", error_type=type(exc).__name__)
        return envelope(request, 503, "unavailable", "A backing service is unavailable")
    log.error("unhandled_error", error_type=type(exc).__name__, where=_innermost_frame(exc))
    return envelope(request, 500, "internal_error", "Internal server error")


def is_data_error(exc: DBAPIError) -> bool:
    """Postgres class 22 (data exception), or asyncpg refusing a parameter client-side."""
    import asyncpg

    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    cause = getattr(exc.orig, "__cause__", None)
    return sqlstate.startswith("22") or isinstance(cause, asyncpg.DataError)


def _innermost_frame(exc: BaseException) -> str:
    return innermost_frame(exc.__traceback__)


def _is_redis_down(exc: BaseException) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError)
