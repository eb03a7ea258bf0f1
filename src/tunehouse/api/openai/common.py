"""What the OpenAI routers share: list paging and its cursors."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from tunehouse.api.limits import echo
from tunehouse.api.openai.errors import OpenAIError


def limit_param(request: Request, default: int, maximum: int) -> int:
    """`limit` from the query: below 1 or not an integer is refused, above the maximum is clamped."""
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise OpenAIError(400, f"limit must be an integer, got {echo(raw)!r}", param="limit") from None
    if value < 1:
        raise OpenAIError(400, f"limit must be at least 1, got {value}", param="limit")
    return min(value, maximum)


def listing(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def bad_cursor(after: str) -> OpenAIError:
    return OpenAIError(400, f"Invalid 'after': no item {echo(after)!r} in this list.", param="after")
