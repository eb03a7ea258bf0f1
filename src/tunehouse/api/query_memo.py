"""Work on a request's query string done once per distinct short string.

Clients poll with the same few short query strings (a Qianfan V2 Action), so what the edge, the signature
check and the metrics work out of one is remembered. Strings longer than MAX_REMEMBERED are worked out each
time: the memory cannot grow with what clients send.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_REMEMBERED = 256


def per_query(maxsize: int) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Remembers ``fn(query, *args)`` (at most ``maxsize`` results) for queries of MAX_REMEMBERED or fewer
    characters or bytes; ``fn`` must not return what a caller could change."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        remembered = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(query: str | bytes, *args: Any) -> T:
            return remembered(query, *args) if len(query) <= MAX_REMEMBERED else fn(query, *args)

        return call

    return wrap
