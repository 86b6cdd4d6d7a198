"""Log lines: one JSON object per line for `tap serve`, carrying the request id of the work.

`configure` installs python-json-logger's formatter on the root logger: every line has `time`
(UTC, ISO 8601 with ms), `level`, `logger`, `msg` and whatever the call passed in `extra`, all
escaped by a JSON encoder (never a hand-made template). `REQUEST_ID` is the request id of the
HTTP request or WebSocket connection being served; the edge sets it, the filter copies it into
every record logged in that context, and work that leaves the request's task (the writer's
commit of a bet) carries the id explicitly (`extra={"request_id": …}`), so that one id follows
a bet from its 202 to its confirmation or rejection.

The other commands (`tap backup`, `tap check`, …) print plain messages: their few lines are a
report for the operator at a terminal.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

REQUEST_ID: ContextVar[str | None] = ContextVar("tap_request_id", default=None)

_RENAMED = {"levelname": "level", "asctime": "time", "name": "logger", "message": "msg"}


class RequestIdFilter(logging.Filter):
    """Adds `request_id` from the context unless the call gave its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            rid = REQUEST_ID.get()
            if rid is not None:
                record.request_id = rid
        return True


def json_formatter() -> logging.Formatter:
    formatter = JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields=_RENAMED,
        json_ensure_ascii=False,
    )
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def configure(level: int, *, as_json: bool) -> None:
    """Root logger → stderr, JSON lines (`as_json`) or bare messages; replaces any handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if as_json else logging.Formatter("%(message)s"))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
