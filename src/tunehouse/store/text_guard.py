"""No text with NUL reaches the database: PostgreSQL cannot store it, and SQLite would differ from it.

Every dialect already refuses NUL in the JSON bodies and query strings it reads; this catches text from any
other path (form fields, file names) and turns it into the caller's invalid-parameter error, not a 500.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, event

from tunehouse.core.errors import InvalidInput


def _has_nul(params: Any) -> bool:
    if isinstance(params, str):
        return "\x00" in params
    if isinstance(params, Mapping):
        return any(_has_nul(v) for v in params.values())
    if isinstance(params, Iterable) and not isinstance(params, bytes | bytearray | memoryview):
        return any(_has_nul(v) for v in params)
    return False


def refuse_nul_text(engine: Engine) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def _check(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if parameters and _has_nul(parameters):
            raise InvalidInput("text", "text must not contain NUL (U+0000) characters")
