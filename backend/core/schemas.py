"""Shared API schemas: pagination and the error envelope (for OpenAPI)."""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)

from backend.core.errors import ErrorCode

T = TypeVar("T")


def _money_json(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN))


# Exact Decimal inside; leaves as a JSON number with at most 6 decimals (API.md).
Money = Annotated[Decimal, PlainSerializer(_money_json, return_type=float, when_used="json")]


def storable(value: str) -> str:
    # Postgres text and JSONB refuse NUL and lone surrogates: refuse them here (422, not 500).
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode") from None
    return value


# The schema states what storable refuses (NUL), and for a stripped required string that
# something is left (\x1c-\x1f: str.strip() removes them, regex engines' \s does not match).
NO_NUL = r"^[^\x00]*$"
NOT_BLANK = r"^[^\x00]*[^\s\x00\x1c-\x1f][^\x00]*$"


def text(max_length: int, *, min_length: int = 0, strip: bool = False) -> Any:
    """A bounded string Postgres can store."""
    pattern = NOT_BLANK if strip and min_length else NO_NUL
    constraints = StringConstraints(
        strip_whitespace=strip, min_length=min_length, max_length=max_length, pattern=pattern
    )
    return Annotated[str, constraints, AfterValidator(storable)]


def _six_places(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -6:  # else keep the caller's form ("15.25")
        return value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
    return value


def amount(le: int) -> Any:
    """An input amount in [0, le]: a JSON number or a decimal string; rounded to 6 decimals."""
    pattern = rf"^\d{{1,{len(str(le)) - 1}}}(\.\d{{1,20}})?$"

    def refuse_other_forms(value: Any) -> Any:
        # What the schema below forbids is refused: booleans, "1e3", " 5", "0x10".
        if isinstance(value, bool) or (isinstance(value, str) and not re.match(pattern, value)):
            raise ValueError('must be a number, or a decimal string such as "12.50"')
        return value

    number = {"type": "number", "minimum": 0, "maximum": le}
    return Annotated[
        Decimal,
        BeforeValidator(refuse_other_forms),
        Field(ge=0, le=le, allow_inf_nan=False),
        AfterValidator(_six_places),
        WithJsonSchema({"anyOf": [number, {"type": "string", "pattern": pattern}]}),
    ]


def _none() -> None:
    return None


def keep(description: str | None = None) -> Any:
    """A PATCH field that may be left out (keeping the value) but not null: the schema says so.

    A default factory: pydantic then writes no `default: null` the type would contradict.
    """
    return Field(default_factory=_none, description=description)


def _json_integer(value: Any) -> Any:
    # JSON Schema's integer: 3 and 3.0, not true or "3" (which pydantic's lax int would take).
    if isinstance(value, bool | str):
        raise ValueError("must be an integer")
    return value


def integer(*, ge: int, le: int) -> Any:
    """A bounded JSON integer (the bounds first: after the validator they leave the schema)."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_json_integer)]


def examples(*values: dict[str, Any], **config: Any) -> ConfigDict:
    """A model config whose JSON schema carries these examples (shown in /docs, checked by tests)."""
    return ConfigDict(json_schema_extra={"examples": list(values)}, **config)  # type: ignore[typeddict-item]


class Schema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Pagination(BaseModel):
    total: int
    page: int
    limit: int
    total_pages: int
    has_next: bool
    has_prev: bool


def _page_example(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    (item,) = cls.__pydantic_generic_metadata__["args"] or (None,)
    extra = getattr(item, "model_config", {}).get("json_schema_extra") or {}
    if isinstance(extra, dict) and extra.get("examples"):
        pagination = {"total": 1, "page": 1, "limit": 20, "total_pages": 1}
        pagination |= {"has_next": False, "has_prev": False}
        schema["examples"] = [{"data": extra["examples"][:1], "pagination": pagination}]


class Page(BaseModel, Generic[T]):
    model_config = ConfigDict(json_schema_extra=_page_example)
    data: list[T]
    pagination: Pagination


class PageParams(BaseModel):
    page: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit

    def build(self, items: list[Any], total: int) -> dict[str, Any]:
        pages = math.ceil(total / self.limit) if total else 0
        return {
            "data": items,
            "pagination": {
                "total": total,
                "page": self.page,
                "limit": self.limit,
                "total_pages": pages,
                "has_next": self.page < pages,
                "has_prev": self.page > 1,
            },
        }


# async: FastAPI runs a plain `def` dependency in a worker thread, a handoff that costs more
# than the function.
async def _page_params(
    page: Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1")] = 1,
    limit: Annotated[int, Query(ge=1, le=100, description="Items per page")] = 20,
) -> PageParams:
    return PageParams(page=page, limit=limit)


Paging = Annotated[PageParams, Depends(_page_params)]


class ErrorBody(BaseModel):
    code: ErrorCode
    message: str
    field: str | None = None
    request_id: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    model_config = examples(
        {"error": {"code": "not_found", "message": "Agent 5b1f0c7e-… not found", "field": None}}
    )
    error: ErrorBody


class Message(BaseModel):
    model_config = examples({"success": True, "message": "Agent 'triage-bot' terminated"})
    success: bool
    message: str


# status -> description, then (code, message[, field]) per example.
ERRORS: dict[int, tuple[str, list[tuple[str, ...]]]] = {
    400: (
        "Malformed request (e.g. a body that is not JSON)",
        [("bad_request", "Malformed JSON body")],
    ),
    401: (
        "Missing, invalid, expired or revoked credentials (`WWW-Authenticate: Bearer`)",
        [("unauthorized", "Authentication required")],
    ),
    402: ("The project's budget is spent", [("budget_exceeded", "Monthly cost budget exhausted")]),
    403: (
        "Insufficient role or API key scope (API keys: always on /admin/*)",
        [("forbidden", "Your role in this project does not allow agents:write")],
    ),
    404: ("Not found, or not visible to the caller", [("not_found", "Agent 5b1f0c7e-… not found")]),
    409: (
        "A lifecycle transition the current status does not allow, or a conflict",
        [
            ("invalid_transition", "Cannot move agent from terminated to idle", "status"),
            ("conflict", "Idempotency-Key reused with a different body"),
        ],
    ),
    413: ("The body exceeds the size limit (1 MiB)", [("payload_too_large", "Body too large")]),
    422: (
        "Validation error; `field` names the first offending field, `details` lists all",
        [("validation_error", "name: String should have at least 1 character", "name")],
    ),
    429: (
        "Rate limit (or concurrent stream cap) exceeded; see `Retry-After`",
        [("rate_limited", "Rate limit of 60 per window exceeded; retry later")],
    ),
    500: (
        "Unexpected error (logged with the request id)",
        [("internal_error", "Internal server error")],
    ),
    503: (
        "A backing service (database, Redis) is unavailable; nothing was half-written",
        [("unavailable", "A backing service is unavailable")],
    ),
}
_RID = "5f0c6c1e-0c0e-4a51-9d5a-0d7f3e2c9b11"


def _error_example(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field, "request_id": _RID}}


def _examples(status: int) -> dict[str, Any]:
    return {example[0]: {"value": _error_example(*example)} for example in ERRORS[status][1]}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses` for the error statuses only it can answer, with examples."""
    return {
        status: {
            "model": ErrorResponse,
            "description": ERRORS[status][0],
            "content": {"application/json": {"examples": _examples(status)}},
        }
        for status in statuses
    }


def error_content(status: int) -> dict[str, Any]:
    """The same as an OpenAPI response object (for the document's shared responses)."""
    schema = {"$ref": "#/components/schemas/ErrorResponse"}
    content = {"application/json": {"schema": schema, "examples": _examples(status)}}
    return {"description": ERRORS[status][0], "content": content}
