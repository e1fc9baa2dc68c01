"""Structured logging: structlog configured once, JSON for machines, console for humans, secrets redacted.

Logs go to stderr. stdout carries command output (the ``check`` table, the demo's URLs, the
``--check-config`` summary) and stays parseable; the format default follows whether stderr is a terminal.

Redaction runs last before rendering, on every event whatever the caller passed:

- a key that looks secret (``secret``, ``password``, ``token``, ``authorization``, ``credential``; any case,
  at any depth of nested dicts, lists and tuples) has its value replaced by ``[REDACTED]``;
- every string value, the event message and formatted tracebacks included, passes the output gate
  (:func:`exporter.redaction.scrub`): registered secrets and URL passwords masked, lone surrogates
  replaced, control characters other than newline and tab dropped.

Records of the standard library's ``logging``, whoever writes them (aiohttp, asyncio, the credentials
library, Python's ``warnings``), pass the record gate (:func:`gate_foreign_records`) before any handler
sees them: message, arguments and traceback become one gated text (the output gate, then secret-looking
``key: value`` pairs and URL queries cut, a bare request path's too, as libraries quote response bodies
and signed requests), and the record goes to the root logger's handlers only. A
handler a library attaches to its own logger (alibabacloud-credentials adds a stderr handler to
``credentials`` each time one of its modules is imported) is never called, so each line is written
once, by the same chain, in the configured format.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import re2
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from exporter.logformat import LEVELS, LOG_FORMATS, LogFormat

# The secret registry and the gate live in exporter.redaction (every output uses them); re-exported
# here because logging is where most callers first meet them.
from exporter.redaction import (
    REDACTED,
    mask_secrets,
    register_secret,
    register_secrets,
    registered_secret_count,
    scrub,
)

__all__ = [
    "LEVELS",
    "LOG_FORMATS",
    "REDACTED",
    "LogFormat",
    "configure_logging",
    "gate_foreign_records",
    "gate_library_text",
    "mask_secrets",
    "redact",
    "register_secret",
    "register_secrets",
    "registered_secret_count",
    "reset_logging",
]


_SECRET_KEY_RE = re.compile(r"secret|passw(or)?d|token|authorization|credential", re.IGNORECASE)
# In free text: the value after a secret-looking key (``"AccessKeySecret": "..."``, ``token=...``), as
# library messages quote response bodies, URLs and repr()s. Narrower words than _SECRET_KEY_RE
# ("credentials: connection refused" keeps its reason). RE2: linear in whatever a library writes.
_SECRET_PAIR_RE = re2.compile(
    r"""(["']?[\w-]*(?i:secret|token|passw(?:or)?d)[\w-]*["']?\s*[:=]\s*)"""
    r"""("[^"]*"|'[^']*'|[^\s,;}&'"]+)"""
)
# A URL's query, which signed and presigned URLs carry their signatures and tokens in.
_URL_QUERY_RE = re2.compile(r"""(?i)(\b[a-z][a-z0-9+.-]*://[^\s?#'"]*)\?[^\s#'"]*""")
# A request's path with its query, as urllib3 quotes the request it gave up on ("Max retries exceeded
# with url: /?Action=AssumeRole&...&Signature=..."): a signed request that never reached the server can
# be replayed by whoever reads the line until its timestamp expires. The path starts a word ("and/or?"
# is no path), and its query is cut whatever it holds.
_PATH_QUERY_RE = re2.compile(r"""(?m)(^|[^\w.~/-])(/[^\s?#'"]*)\?[^\s#'"]*""")


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value, keep_lines=True)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_secret_key(k) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    # Anything else is rendered through repr() by both renderers anyway; do it here so it can be masked.
    return scrub(repr(value), keep_lines=True)


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and _SECRET_KEY_RE.search(key) is not None


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact secret-looking keys and mask registered secrets in every value."""
    return {k: (REDACTED if _is_secret_key(k) else _redact_value(v)) for k, v in event_dict.items()}


def gate_library_text(text: str) -> str:
    """A library's free text (a log record, an exception's message): through the output gate, then
    secret-looking pairs and URL and request queries cut, as libraries quote bodies and signed requests."""
    text = scrub(text, keep_lines=True)
    if _SECRET_PAIR_RE.search(text):
        text = _SECRET_PAIR_RE.sub(rf"\1{REDACTED}", text)
    if "?" in text:
        if "://" in text:
            text = _URL_QUERY_RE.sub(rf"\1?{REDACTED}", text)
        text = _PATH_QUERY_RE.sub(rf"\1\2?{REDACTED}", text)
    return text


def _gate_record(record: logging.LogRecord) -> None:
    """Make ``record`` safe for any handler: its message, arguments, traceback and stack gated, in place."""
    try:
        message = record.getMessage()
    except Exception:  # a caller's format string and arguments that do not fit: say so, drop the args
        message = f"{record.msg!s} (log arguments did not format)"
    record.msg, record.args = gate_library_text(message), ()
    if record.exc_info:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None  # the exception object still holds the raw message
    if record.exc_text:
        record.exc_text = gate_library_text(record.exc_text)
    if record.stack_info:
        record.stack_info = gate_library_text(record.stack_info)


def _call_root_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    """``Logger.callHandlers`` for every logger: the record gated, then the root's handlers only."""
    del self  # whichever logger it came from, and whatever handlers that logger has
    _gate_record(record)
    handlers = logging.root.handlers
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)
    if not handlers and logging.lastResort is not None and record.levelno >= logging.lastResort.level:
        logging.lastResort.handle(record)


def gate_foreign_records() -> None:
    """Send every standard-library record, from any logger, through the record gate to the root's
    handlers only (idempotent; process-wide from then on).

    ``Logger.callHandlers`` is the one place every record passes after its logger's filters, whatever
    handlers a library attached to its loggers and whenever it attached them (the credentials library
    adds them on import, after any start-up clean-up could remove them); replacing it on the class
    covers loggers that exist now and ones created later.
    """
    logging.Logger.callHandlers = _call_root_handlers  # type: ignore[method-assign]  # see above


def _add_foreign_exception(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # The record gate turned the traceback into gated text (exc_text); structlog reads only exc_info.
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord) and record.exc_text and "exception" not in event_dict:
        event_dict["exception"] = record.exc_text
    return event_dict


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that remembers the name it was created with (``get_logger("ehpc.refresh")``)."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


def _logger_factory(*args: Any) -> _NamedPrintLogger:
    # sys.stderr is looked up per logger, not at configure time, so pytest's capture sees the output.
    name = args[0] if args and isinstance(args[0], str) else None
    return _NamedPrintLogger(sys.stderr, name)


def _add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


def _add_stdlib_logger_name(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord) and "logger" not in event_dict:
        event_dict["logger"] = record.name
    return event_dict


_LEADING_KEYS = ("timestamp", "level", "logger", "event")


def _leading_keys_first(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    # JSON lines read better (and grep better) when every line starts the same way.
    head = {k: event_dict[k] for k in _LEADING_KEYS if k in event_dict}
    return head | {k: v for k, v in event_dict.items() if k not in head}


def _renderer(fmt: LogFormat, colors: bool) -> Processor:
    if fmt == "json":
        return _JsonRenderer()
    if fmt == "logfmt":
        return structlog.processors.LogfmtRenderer(key_order=list(_LEADING_KEYS), bool_as_flag=False)
    return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback)


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become a string before redaction so an exception message cannot leak a secret.
        structlog.processors.format_exc_info,
    ]


def configure_logging(fmt: LogFormat | None = None, level: str = "info") -> None:
    """Configure structlog and the standard library's logging once for the process (idempotent)."""
    level_name = level.lower()
    if level_name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    numeric = logging.getLevelNamesMapping()[level_name.upper()]
    is_tty = sys.stderr.isatty()
    chosen: LogFormat = fmt if fmt is not None else ("console" if is_tty else "json")

    shared = _shared_processors()
    structlog.configure(
        processors=[*shared, _add_logger_name, redact, _renderer(chosen, is_tty)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_logger_factory,
        context_class=dict,
        cache_logger_on_first_use=False,
    )

    # Route the standard library (aiohttp, asyncio, the credentials library) through the same processors
    # and redaction; Python's warnings too (a library's DeprecationWarning or urllib3's would otherwise be
    # a plain-text line on stderr, outside the configured format and the gate).
    gate_foreign_records()
    logging.captureWarnings(True)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_add_stdlib_logger_name, *shared, _add_foreign_exception],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            redact,
            _renderer(chosen, is_tty),
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    # Libraries set their own loggers' levels (the credentials library: INFO); the configured level
    # holds for every line all the same.
    handler.setLevel(numeric)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # One access-log line per scrape is noise unless someone is debugging.
    logging.getLogger("aiohttp.access").setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequestFilter) for f in server.filters):
        server.addFilter(_BadRequestFilter())


class _BadRequestFilter(logging.Filter):
    """aiohttp logs every malformed request (already answered 400) at ERROR with a traceback that quotes
    the offending bytes, headers included; a client's mistake becomes one debug line naming the problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a malformed-request record, or drop it when debug logging is off."""
        # Here, not at the top: only aiohttp's server logs through this filter, so aiohttp is loaded
        # already, and commands that serve nothing (--check-config) do not load it for logging.
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.msg = f"bad_http_request: {type(exc).__name__} (HTTP {exc.code})"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


class _JsonRenderer:
    """JSONRenderer with a stable leading key order."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer(sort_keys=False)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        """Render ``event_dict`` as one JSON line."""
        rendered = self._json(logger, method, _leading_keys_first(logger, method, event_dict))
        return rendered if isinstance(rendered, str) else rendered.decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that writes to whatever ``sys.stderr`` is at emit time (pytest swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` to the current ``sys.stderr``."""
        self.stream = sys.stderr
        super().emit(record)


def reset_logging() -> None:
    """Undo :func:`configure_logging` (structlog defaults, our stdlib handler removed); for tests.

    The record gate stays: it only makes records safe and sends them to the root's handlers, and a
    library's own handlers, attached for good, must not start writing again.
    """
    structlog.reset_defaults()
    logging.captureWarnings(False)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.NOTSET)
    server = logging.getLogger("aiohttp.server")
    for f in [f for f in server.filters if isinstance(f, _BadRequestFilter)]:
        server.removeFilter(f)
