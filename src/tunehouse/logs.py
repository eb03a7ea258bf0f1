"""Structured logs: one JSON object per line, carrying the id of the request it happened in.

`TUNEHOUSE_LOG_LEVEL` (default INFO) sets the level; `TUNEHOUSE_LOG_FORMAT=text` gives plain lines instead.
The request id is the one every dialect's error envelope carries, so a caller's report finds its log lines.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime

import orjson

from tunehouse.api.request_context import current_request_id


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = current_request_id()
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        try:
            # orjson: a line per request (the access log); the stdlib where it refuses (lone surrogates).
            return orjson.dumps(out, default=str).decode()
        except TypeError:
            return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging() -> None:
    """Root handler for the process (uvicorn's loggers included: pass `log_config=None` to it)."""
    level = os.environ.get("TUNEHOUSE_LOG_LEVEL", "INFO").upper()
    # None of these is in a line we write; not gathering them saves work on every record (the access log
    # writes one per request). These are the switches the logging documentation's "Optimization" names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    if os.environ.get("TUNEHOUSE_LOG_FORMAT", "json").lower() == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # The level applies to this project's loggers; libraries stay at INFO so DEBUG is readable.
    logging.getLogger("tunehouse").setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
