"""What every dialect's error envelope shares: the request's id and a bound on the message.

The envelopes themselves live with their dialects (qianfan/, dashscope/, openai/: errors.py)."""

from __future__ import annotations

from typing import Literal

from tunehouse.api.limits import MAX_ECHO_CHARS
from tunehouse.api.request_context import current_request_id, new_request_id

# A message quotes caller input at most MAX_ECHO_CHARS at a time; this bounds the whole of it.
MAX_MESSAGE_CHARS = 4 * MAX_ECHO_CHARS


def request_id() -> str:
    """The id of the request being served (bound by the edge middleware), or a fresh one outside it."""
    return current_request_id() or new_request_id()


def bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


# The failures no route of a dialect handles (see dialects.py), each with its HTTP status; every dialect's
# errors module says how it answers each.
Kind = Literal["invalid", "not_found", "method", "too_large", "rate_limited", "internal"]
KIND_STATUS: dict[str, int] = {
    "invalid": 400,
    "not_found": 404,
    "method": 405,
    "too_large": 413,
    "rate_limited": 429,
    "internal": 500,
}
