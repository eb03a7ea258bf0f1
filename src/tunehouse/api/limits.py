"""Configured limits on what one request may carry, and how often an account may send one.

Each is read from the environment once, at app creation: `TUNEHOUSE_MAX_BODY_BYTES` (a JSON or form body),
`TUNEHOUSE_MAX_UPLOAD_BYTES` (a dataset upload), `TUNEHOUSE_MAX_JSON_DEPTH`, `TUNEHOUSE_MAX_STRING_CHARS`
(any one string in a JSON body), `TUNEHOUSE_RATE_LIMIT_PER_S` and `TUNEHOUSE_RATE_BURST` (requests per
account; 0 turns the rate limit off). Page sizes have per-endpoint maxima of their dialect's spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Integers beyond this are refused before they reach SQL (where 2^63 overflows a BIGINT parameter).
MAX_QUERY_INT = 2**31 - 1
# Bounds what an error body or header echoes of the caller's input.
MAX_ECHO_CHARS = 256


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    max_json_depth: int = 32
    max_string_chars: int = 65_536
    rate_per_s: float = 0.0
    rate_burst: int = 0

    @property
    def rate_limited(self) -> bool:
        return self.rate_per_s > 0


def _env(name: str, default: float, cast: type = int) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {raw!r}")
    return float(value)


def load_limits() -> Limits:
    d = Limits()
    rate = _env("TUNEHOUSE_RATE_LIMIT_PER_S", d.rate_per_s, float)
    return Limits(
        max_body_bytes=int(_env("TUNEHOUSE_MAX_BODY_BYTES", d.max_body_bytes)),
        max_upload_bytes=int(_env("TUNEHOUSE_MAX_UPLOAD_BYTES", d.max_upload_bytes)),
        max_json_depth=int(_env("TUNEHOUSE_MAX_JSON_DEPTH", d.max_json_depth)),
        max_string_chars=int(_env("TUNEHOUSE_MAX_STRING_CHARS", d.max_string_chars)),
        rate_per_s=rate,
        rate_burst=int(_env("TUNEHOUSE_RATE_BURST", max(1, int(rate * 2)) if rate else 0)),
    )


def echo(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """`value` as the caller may see it quoted back: printable, and cut to `limit` characters."""
    text = "".join(c if c.isprintable() else "?" for c in str(value)[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"
