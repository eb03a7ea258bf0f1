"""The id of the request being served, shared by the log records and every dialect's error envelope."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

_current: ContextVar[str | None] = ContextVar("tunehouse_request_id", default=None)


def new_request_id() -> str:
    return str(uuid.uuid4())


def current_request_id() -> str | None:
    return _current.get()


def bind_request_id(rid: str) -> object:
    """Binds `rid` for the rest of this task (and the threads it hands work to); returns the reset token."""
    return _current.set(rid)


def reset_request_id(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
