"""When to ask Triton whether a request was cancelled.

In Triton's Python backend each `request.is_cancelled()` (and `sender.is_cancelled()`) is a round trip
from the model's process to the server's and back (python_backend's PbCancel). Asked for every streamed
token, by llm while it generates and by memory for every response it passes on, it costs more than the
rest of that token's work in either. So each request is asked about at most once per `interval`: a
cancellation is noticed within 50 ms (and a few tokens) instead of at the next token.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Hashable

INTERVAL_S = 0.05


class CancellationChecks:
    def __init__(self, interval: float = INTERVAL_S, limit: int = 4096, clock: Callable[[], float] = time.monotonic):
        self.interval, self.limit, self.clock = interval, limit, clock
        self._next: OrderedDict[Hashable, float] = OrderedDict()  # request -> when it is next due

    def due(self, key: Hashable) -> bool:
        """Whether to ask about `key` now: on its first call, then once `interval` has passed since the last
        time it was due."""
        now = self.clock()
        if self._next.get(key, now) > now:
            return False
        self._next[key] = now + self.interval
        self._next.move_to_end(key)
        while len(self._next) > self.limit:  # requests whose end was never seen (their process died)
            self._next.popitem(last=False)
        return True

    def forget(self, key: Hashable) -> None:
        self._next.pop(key, None)
