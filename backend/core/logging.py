"""structlog setup: JSON (or console) lines with the request id bound from contextvars.

Our own events go through structlog's native pipeline (no stdlib LogRecord and formatter
per line): dropped first when below the level, then rendered and written as one line
to the stream of the root handler. Libraries' stdlib logs reach that same handler and
are rendered alike by its ProcessorFormatter. The level is the root logger's, read per
event, so it can change at runtime (tests capture INFO lines of a WARNING app that way).
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Any

import structlog
from structlog.typing import EventDict

_ROOT = logging.getLogger()
_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


class _Output:
    """What configure_logging chose last; loggers cached before that still follow it."""

    handler: logging.StreamHandler[Any] | None = None
    renderer: structlog.types.Processor = structlog.processors.JSONRenderer()


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        summarize_exception,
    ]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    _Output.handler, _Output.renderer = handler, renderer
    structlog.configure(
        processors=[drop_below_level, *shared, render],
        logger_factory=HandlerStreamLogger,
        # The level is checked by drop_below_level (it may change at runtime).
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        cache_logger_on_first_use=True,
    )
    _ROOT.handlers[:] = [handler]
    _ROOT.setLevel(level.upper())
    # uvicorn's access log duplicates ours and has no request id.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx2 (the LLM and MCP SDKs' client) logs every request with its URL at INFO; the mcp
    # SDK its sessions' comings and goings.
    for noisy in ("httpx", "httpcore", "httpx2", "mcp", "arq.worker", "arq.jobs"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, _ROOT.level))


def drop_below_level(_: Any, method_name: str, event: EventDict) -> EventDict:
    """First processor: an event below the root logger's level costs nothing more."""
    if not _ROOT.isEnabledFor(_METHOD_LEVELS.get(method_name, logging.INFO)):
        raise structlog.DropEvent
    return event


def render(logger: Any, method_name: str, event: EventDict) -> str:
    return _Output.renderer(logger, method_name, event)  # type: ignore[return-value]


class HandlerStreamLogger:
    """structlog's final logger: one line on the current root handler's stream."""

    def __init__(self, *_: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        handler = _Output.handler
        if handler is None:
            return
        with handler.lock:  # type: ignore[union-attr]
            stream = handler.stream
            stream.write(message + "\n")
            stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def innermost_frame(tb: TracebackType | None) -> str:
    """Where it broke (our innermost frame), without a stack trace."""
    where = "unknown"
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if "/backend/" in name and "site-packages" not in name:
            where = f"{name.rsplit('/backend/', 1)[1]}:{tb.tb_lineno}"
        tb = tb.tb_next
    return where


def summarize_exception(_: Any, __: str, event: EventDict) -> EventDict:
    """Replace exc_info (ours or a library's) by its type and location.

    Tracebacks and exception messages may carry SQL, parameters or secrets: never logged.
    """
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        event.setdefault("error_type", exc_info[0].__name__)
        event.setdefault("where", innermost_frame(exc_info[2]))
    event.pop("stack_info", None)
    return event
