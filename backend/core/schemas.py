"""Shared API schemas: pagination and the error envelope (for OpenAPI)."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel, ConfigDict, PlainSerializer

T = TypeVar("T")


def _money_json(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN))


# Exact Decimal inside; leaves as a JSON number with at most 6 decimals (API.md).
Money = Annotated[Decimal, PlainSerializer(_money_json, return_type=float, when_used="json")]


class Schema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Pagination(BaseModel):
    total: int
    page: int
    limit: int
    total_pages: int
    has_next: bool
    has_prev: bool


class Page(BaseModel, Generic[T]):
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


def _page_params(
    page: Annotated[int, Query(ge=1, le=1_000_000, description="Page number, from 1")] = 1,
    limit: Annotated[int, Query(ge=1, le=100, description="Items per page")] = 20,
) -> PageParams:
    return PageParams(page=page, limit=limit)


Paging = Annotated[PageParams, Depends(_page_params)]


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    request_id: str | None = None
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Message(BaseModel):
    success: bool
    message: str


_ERRORS = {
    400: ("bad_request", "Malformed request"),
    401: ("unauthorized", "Missing, invalid, expired or revoked credentials"),
    402: ("budget_exceeded", "The project's budget is spent"),
    403: ("forbidden", "Insufficient role or API key scope"),
    404: ("not_found", "Not found, or not visible to the caller"),
    409: ("conflict", "Conflict with the current state"),
    422: ("validation_error", "Validation error"),
    429: ("rate_limited", "Rate limit exceeded"),
    503: ("unavailable", "A backing service is unavailable"),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer."""
    return {
        s: {
            "model": ErrorResponse,
            "description": _ERRORS[s][1],
            "content": {
                "application/json": {
                    "example": {
                        "error": {
                            "code": _ERRORS[s][0],
                            "message": _ERRORS[s][1],
                            "field": None,
                            "request_id": "5f0c6c1e-0c0e-4a51-9d5a-0d7f3e2c9b11",
                        }
                    }
                }
            },
        }
        for s in statuses
    }
