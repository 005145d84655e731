"""Dense vectors of stored turns, set off the client's path.

`Memory.commit` stores the finished exchange durably (the reply without its dense vector) before the
client's final response is sent, and hands the reply to a `VectorBackfill`: a background thread that
embeds it and sets its vector moments later. Until then the reply is stored, exported and offered as a
recent turn like any other; only a dense similarity search cannot find it yet. A process that dies first
loses nothing: on start the backfill finds every stored turn still without a dense vector and embeds it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from imem.store import TurnStore
from imem.turn import Turn

Embed = Callable[[list[str]], np.ndarray]


class VectorBackfill:
    def __init__(self, store: TurnStore, embed: Embed, log: Callable[[str], None] = print,
                 batch_size: int = 64, retry_seconds: float = 1.0, recover: bool = True, linger: float = 0.0):
        self.store, self.embed, self.log = store, embed, log
        self.batch_size, self.retry_seconds = batch_size, retry_seconds
        # Seconds a turn may wait for others to be embedded with: a batch costs little more than one turn,
        # and every pass taken off the embedder is one fewer that a client's query embedding queues behind.
        self.linger = linger
        self._queue: deque[Turn] = deque()
        self._oldest = 0.0  # when the oldest queued turn was submitted
        self._busy = 0  # turns taken off the queue and not yet written
        self._recovering = recover
        self._closing = False
        self._draining = 0  # callers in drain(): no lingering while they wait
        self._cond = threading.Condition()
        self.embedded = 0  # turns whose vector this backfill has set (for tests and metrics)
        self._thread = threading.Thread(target=self._run, name="vector-backfill", daemon=True)
        self._thread.start()

    # ---- the caller's side ----------------------------------------------------------------------------
    def submit(self, turns: list[Turn]) -> None:
        with self._cond:
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.extend(turns)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._busy + (1 if self._recovering else 0)

    def drain(self, timeout: float = 10.0) -> bool:
        """Waits until every submitted turn (and the start-up recovery) is done; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._draining += 1
            self._cond.notify_all()
            try:
                while self._queue or self._busy or self._recovering:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                return True
            finally:
                self._draining -= 1

    def close(self, timeout: float = 10.0) -> bool:
        """Finishes what it can within `timeout`; whatever is left is recovered on the next start."""
        drained = self.drain(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=max(1.0, self.retry_seconds * 2))
        return drained

    # ---- the background thread ------------------------------------------------------------------------
    def _run(self) -> None:
        if self._recovering:
            self._recover()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                while (len(self._queue) < self.batch_size and not self._draining and not self._closing
                       and time.monotonic() < self._oldest + self.linger):
                    self._cond.wait(self._oldest + self.linger - time.monotonic())
                if self._closing:
                    return
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
                self._busy = len(batch)
            try:
                self._write(batch)
            except Exception as error:  # embedder not ready or store busy: keep the turns, try again
                self.log(f"embedding {len(batch)} stored turn(s) failed, retrying: {error!r}")
                with self._cond:
                    self._queue.extendleft(reversed(batch))
                    self._busy = 0
                    self._cond.wait(self.retry_seconds)  # woken early only by close()
                continue
            with self._cond:
                self._busy = 0
                self._cond.notify_all()

    def _write(self, turns: list[Turn]) -> None:
        vectors = self.embed([t.text or " " for t in turns])
        for turn, vector in zip(turns, vectors):
            if self.store.set_vector(turn, vector):
                self.embedded += 1

    def _recover(self) -> None:
        """Embeds every stored turn without a dense vector (left so by a process that died)."""
        recovered, previous = 0, None
        try:
            while not self._closing:
                try:
                    turns = self.store.missing_vectors(self.batch_size)
                    ids = [t.point_id for t in turns]
                    if not turns or ids == previous:  # done, or nothing more can be done for these
                        break
                    self._write(turns)
                    previous = ids  # only once written: a failed attempt is tried again
                    recovered += len(turns)
                except Exception as error:
                    self.log(f"recovering stored turns without a vector failed, retrying: {error!r}")
                    with self._cond:
                        self._cond.wait(self.retry_seconds)
        finally:
            if recovered:
                self.log(f"set the dense vector of {recovered} stored turn(s) left without one")
            with self._cond:
                self._recovering = False
                self._cond.notify_all()
