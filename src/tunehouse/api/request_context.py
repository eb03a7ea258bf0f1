"""The id of the request being served, shared by the log records and every dialect's error envelope."""

from __future__ import annotations

import itertools
import os
from contextvars import ContextVar

_current: ContextVar[str | None] = ContextVar("tunehouse_request_id", default=None)


class _Ids:
    """UUID-shaped ids, unique without a random draw per request (uuid4's urandom call cost a measurable
    share of a polled request): 64 random bits per process, then a counter."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # a forked child must not repeat its parent's ids

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.prefix = f"{self.prefix[:8]}-{self.prefix[8:12]}-{self.prefix[12:16]}-"
        self.counter = itertools.count(int.from_bytes(os.urandom(2), "big") << 48)

    def next(self) -> str:
        n = next(self.counter) & 0xFFFF_FFFF_FFFF_FFFF
        return f"{self.prefix}{n >> 48:04x}-{n & 0xFFFF_FFFF_FFFF:012x}"


_ids = _Ids()


def new_request_id() -> str:
    return _ids.next()


def current_request_id() -> str | None:
    return _current.get()


def bind_request_id(rid: str) -> object:
    """Binds `rid` for the rest of this task (and the threads it hands work to); returns the reset token."""
    return _current.set(rid)


def reset_request_id(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
