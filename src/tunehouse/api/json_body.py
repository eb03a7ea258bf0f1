"""Reading a request body as a JSON object, the one shape every dialect's JSON endpoints take."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request


async def json_object(request: Request, empty: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The body as a dict; `empty` for a blank body; None when it is not a JSON object (each dialect
    answers that in its own envelope)."""
    raw = await request.body()
    if not raw.strip():
        return empty
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
