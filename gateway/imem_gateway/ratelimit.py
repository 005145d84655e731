"""Per-key limits on requests and tokens per minute, as token buckets that refill continuously.

Requests are counted on arrival. Tokens (prompt + completion, as the ensemble reports them) are only
known when a reply finishes, so they are charged then: a key may overshoot its token budget with the
replies in flight, and is refused (429) until the bucket has refilled above zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Bucket:
    per_minute: int
    level: float
    stamp: float

    @property
    def rate(self) -> float:  # per second
        return self.per_minute / 60.0

    def refill(self, now: float) -> None:
        self.level = min(float(self.per_minute), self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until the level reaches `amount`."""
        return max(0.0, (amount - self.level) / self.rate)


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.requests: dict[str, Bucket] = {}
        self.tokens: dict[str, Bucket] = {}

    def _bucket(self, table: dict, key: str, per_minute: int, now: float) -> Bucket:
        bucket = table.get(key)
        if bucket is None or bucket.per_minute != per_minute:
            bucket = table[key] = Bucket(per_minute, float(per_minute), now)
        bucket.refill(now)
        return bucket

    def admit(self, key: str, requests_per_minute: int, tokens_per_minute: int) -> tuple[str, float] | None:
        """Counts one request. Returns None when admitted, else (which limit, seconds to wait)."""
        now = self.clock()
        if tokens_per_minute:
            tokens = self._bucket(self.tokens, key, tokens_per_minute, now)
            if tokens.level <= 0:
                # Strictly above zero again, so a retry at that moment is admitted.
                return "tokens per minute", tokens.wait_for(0) + 1 / tokens.rate
        if requests_per_minute:
            requests = self._bucket(self.requests, key, requests_per_minute, now)
            if requests.level < 1:
                return "requests per minute", requests.wait_for(1)
            requests.level -= 1
        return None

    def charge(self, key: str, tokens_per_minute: int, tokens: int) -> None:
        if tokens_per_minute and tokens > 0:
            self._bucket(self.tokens, key, tokens_per_minute, self.clock()).level -= tokens
