"""Per-account request rate limits: a token bucket per account in this process, off unless configured.

`TUNEHOUSE_RATE_LIMIT_PER_S` requests per second refill an account's bucket of `TUNEHOUSE_RATE_BURST`; a
request finding it empty is refused with the dialect's rate-limit error and `Retry-After` (whole seconds
until a token is back), which every SDK honours.
"""

from __future__ import annotations

import math
import threading
import time

from fastapi import Request

from tunehouse.api.limits import Limits


class RateLimited(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"Too many requests: retry after {retry_after_s} s.")
        self.retry_after_s = retry_after_s
        self.message = str(self)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class RateLimiter:
    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s, self.burst = per_s, max(1, burst)
        self._buckets: dict[int, tuple[float, float]] = {}  # account → (tokens, at monotonic time)
        self._lock = threading.Lock()

    def take(self, account_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(account_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.per_s)
            if tokens < 1:
                self._buckets[account_id] = (tokens, now)
                raise RateLimited(max(1, math.ceil((1 - tokens) / self.per_s)))
            self._buckets[account_id] = (tokens - 1, now)


def limiter_for(limits: Limits) -> RateLimiter | None:
    return RateLimiter(limits.rate_per_s, limits.rate_burst) if limits.rate_limited else None


def count_request(request: Request, account_id: int) -> None:
    """Spends one of the account's requests; raises RateLimited when none is left."""
    limiter = getattr(request.app.state, "rate_limiter", None)
    if isinstance(limiter, RateLimiter):
        limiter.take(account_id)
