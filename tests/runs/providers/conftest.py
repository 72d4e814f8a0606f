"""respx for the SDKs' ``httpx2`` traffic.

anthropic>=1 and openai>=3 send requests through ``httpx2``; respx patches only
``httpx``, so a plain ``respx.mock`` silently sees nothing and the SDK makes a real
connection. ``respx.mock(using="httpx2")`` selects the mocker below: it patches
httpx2's async transport, hands respx an ``httpx`` copy of each request, and turns
respx's ``httpx`` responses and exceptions back into ``httpx2`` ones, so the SDKs'
own error mapping (timeouts, connection errors) runs unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import httpx
import httpx2
import pytest
import respx
from respx.mocks import AbstractRequestMocker

ANTHROPIC_URL = "http://anthropic.test"
OPENAI_URL = "http://openai.test/v1"


def _to_httpx2_error(exc: httpx.HTTPError, request: httpx2.Request) -> Exception:
    cls = getattr(httpx2, type(exc).__name__, None)
    if isinstance(cls, type) and issubclass(cls, httpx2.RequestError):
        return cls(str(exc), request=request)
    return httpx2.TransportError(str(exc), request=request)


class _BridgedStream(httpx2.AsyncByteStream):
    """Streams an ``httpx`` response body, chunk by chunk, as an ``httpx2`` body."""

    def __init__(self, response: httpx.Response, request: httpx2.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.stream:  # type: ignore[union-attr]
                yield chunk
        except httpx.HTTPError as exc:  # e.g. a ReadTimeout raised mid-body by a test
            raise _to_httpx2_error(exc, self._request) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


class HTTPX2Mocker(AbstractRequestMocker):
    name = "httpx2"
    targets: ClassVar[list[str]] = ["httpx2._transports.default.AsyncHTTPTransport"]
    target_methods: ClassVar[list[str]] = ["handle_async_request"]

    @classmethod
    def to_httpx_request(cls, **kwargs: Any) -> httpx.Request:
        request: httpx2.Request = kwargs["request"]
        return httpx.Request(
            request.method,
            str(request.url),
            headers=request.headers.multi_items(),
            stream=request.stream,  # type: ignore[arg-type]
        )

    @classmethod
    async def _send_async_request(cls, httpx_request: httpx.Request, **kwargs: Any) -> Any:
        try:
            return await super()._send_async_request(httpx_request, **kwargs)
        except httpx.HTTPError as exc:  # a respx side_effect such as httpx.ConnectError
            raise _to_httpx2_error(exc, kwargs["request"]) from exc

    @classmethod
    async def from_async_httpx_response(
        cls, httpx_response: httpx.Response, target: Any, **kwargs: Any
    ) -> httpx2.Response:
        return httpx2.Response(
            httpx_response.status_code,
            headers=httpx_response.headers.multi_items(),
            stream=_BridgedStream(httpx_response, kwargs["request"]),
        )


@pytest.fixture
def anthropic_api() -> Iterator[respx.Router]:
    with respx.mock(base_url=ANTHROPIC_URL, using="httpx2", assert_all_called=True) as router:
        yield router


@pytest.fixture
def openai_api() -> Iterator[respx.Router]:
    with respx.mock(base_url=OPENAI_URL, using="httpx2", assert_all_called=True) as router:
        yield router
