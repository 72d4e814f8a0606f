"""Error classification shared by the HTTP adapters.

Messages built here end up in ``run.error.message``, which any project member can
read, so they never carry a credential: response bodies are redacted and trimmed.
"""

from __future__ import annotations

import json
import re

from backend.runs.providers.base import (
    PermanentProviderError,
    ProviderError,
    ToolCall,
    TransientProviderError,
    Usage,
)

# Generous: the worker's per-attempt timeout (agent type, default 300 s) is the real limit.
DEFAULT_TIMEOUT_SECONDS = 600.0
# A black-holed host should fail fast and be retried, not eat the whole attempt.
CONNECT_TIMEOUT_SECONDS = 10.0
MAX_MESSAGE_CHARS = 300

_KEY_LIKE = re.compile(r"\b(?:sk|key)-[\w\-*.]{6,}", re.IGNORECASE)

_TRANSIENT_STATUS = {408: "timeout", 409: "conflict", 429: "rate_limited", 529: "overloaded"}
_PERMANENT_STATUS = {
    400: "bad_request",
    401: "authentication_error",
    402: "payment_required",
    403: "permission_denied",
    404: "not_found",
    413: "request_too_large",
    422: "bad_request",
}


def clean_message(text: str, secret: str | None) -> str:
    """Redact the API key (and anything shaped like one) and trim to a short line."""
    if secret:
        text = text.replace(secret, "[redacted]")
    text = _KEY_LIKE.sub("[redacted]", " ".join(text.split()))
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text


def status_error(
    provider: str, status: int, detail: str | None, *, secret: str | None, usage: Usage | None
) -> ProviderError:
    """Map an HTTP error status to a transient or permanent error with a stable code."""
    if status in _TRANSIENT_STATUS or status >= 500:
        code = _TRANSIENT_STATUS.get(status, "server_error")
        error_cls: type[ProviderError] = TransientProviderError
    else:
        code = _PERMANENT_STATUS.get(status, "client_error")
        error_cls = PermanentProviderError
    if status == 401:
        # Auth failures often quote (part of) the key back; the code says enough.
        detail = f"the {provider} API key was rejected"
    message = f"{provider} API error {status}: {detail or code}"
    return error_cls(code, clean_message(message, secret), usage=usage)


def transport_error(provider: str, *, timeout: bool, usage: Usage | None) -> ProviderError:
    """A failure below HTTP is always transient: a timeout or a lost connection."""
    code = "timeout" if timeout else "connection_error"
    what = "timed out" if timeout else "could not be reached or dropped the connection"
    return TransientProviderError(code, f"{provider} API {what}", usage=usage)


def not_configured(provider: str, setting: str) -> PermanentProviderError:
    return PermanentProviderError("not_configured", f"{provider} is not configured: set {setting}")


def incomplete_stream(provider: str, usage: Usage | None) -> TransientProviderError:
    return TransientProviderError(
        "incomplete_stream", f"{provider} stream ended before the response finished", usage=usage
    )


def tool_call(
    provider: str, call_id: str | None, name: str | None, arguments: str, usage: Usage | None
) -> ToolCall:
    """A streamed tool call, its JSON ``arguments`` parsed ("" means no arguments).

    Arguments that are not a JSON object are the model's slip, not a lasting fault: the
    error is transient so that the step is asked again, and it keeps the usage consumed.
    """
    if not call_id or not name:
        raise TransientProviderError(
            "invalid_response", f"{provider} sent a tool call without an id or name", usage=usage
        )
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        # The arguments are the model's text: they are not quoted into the run's error.
        raise TransientProviderError(
            "invalid_tool_arguments",
            clean_message(
                f"{provider} sent arguments for tool {name[:64]!r} that are not a JSON object",
                None,
            ),
            usage=usage,
        )
    return ToolCall(id=call_id, name=name, arguments=parsed)
