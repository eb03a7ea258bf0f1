"""Reading a request body as a JSON object, the one shape every dialect's JSON endpoints take."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from tunehouse import json_text
from tunehouse.api.limits import Limits
from tunehouse.core.errors import InvalidInput

MAX_JSON_INT = 2**63 - 1


async def json_object(request: Request, empty: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The body as a dict; `empty` for a blank body; None when it is not a JSON object (each dialect
    answers that in its own envelope). A body beyond the configured limits raises InvalidInput."""
    raw = await request.body()
    if not raw.strip():
        return empty
    limits = _limits(request)
    try:
        body = json_text.loads(raw)
    except RecursionError:
        raise InvalidInput("body", f"JSON nested deeper than {limits.max_json_depth} levels") from None
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    check_value(body, limits)
    return body


def _limits(request: Request) -> Limits:
    app = request.scope.get("app")
    found = getattr(getattr(app, "state", None), "limits", None)
    return found if isinstance(found, Limits) else Limits()


def check_value(value: Any, limits: Limits, where: str = "") -> None:
    """Depth, string lengths and NUL characters (which PostgreSQL cannot store), iteratively."""
    stack: list[tuple[Any, int, str]] = [(value, 1, where)]
    while stack:
        v, depth, path = stack.pop()
        if isinstance(v, str):
            _check_text(v, limits, path)
        elif isinstance(v, int) and not -MAX_JSON_INT <= v <= MAX_JSON_INT:
            raise InvalidInput(path or "body", "integers must be within a signed 64-bit range")
        elif isinstance(v, dict | list):
            if depth > limits.max_json_depth:
                raise InvalidInput(path or "body", f"JSON nested deeper than {limits.max_json_depth} levels")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, child in items:
                if isinstance(k, str):
                    _check_text(k, limits, path)
                name = str(k)[:64]
                stack.append(
                    (child, depth + 1, (f"{path}.{name}" if path else name) if isinstance(v, dict) else path)
                )


def _check_text(text: str, limits: Limits, path: str) -> None:
    if len(text) > limits.max_string_chars:
        raise InvalidInput(path or "body", f"a string is longer than {limits.max_string_chars} characters")
    if "\x00" in text:
        raise InvalidInput(path or "body", "text must not contain NUL (U+0000) characters")
