"""Dense vectors for stored turns that have none.

Every turn is stored with its dense vector: a message and ingested history with their own, a chat reply
with its exchange's (the message's: a reply is found by similarity through the question it answers, by
its own words through BM25, and beside its message as a neighbour). A store written by an earlier
version may hold replies without one; on start, memory embeds those in the background.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from imem.store import TurnStore

Embed = Callable[[list[str]], np.ndarray]


class VectorRecovery:
    def __init__(self, store: TurnStore, embed: Embed, log: Callable[[str], None] = print, batch_size: int = 64,
                 retry_seconds: float = 1.0):
        self.store, self.embed, self.log = store, embed, log
        self.batch_size, self.retry_seconds = batch_size, retry_seconds
        self.recovered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vector-recovery", daemon=True)
        self._thread.start()

    def wait(self, timeout: float = 10.0) -> bool:
        """Waits until every turn without a vector has one (or nothing more can be done); False on timeout."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self, timeout: float = 1.0) -> bool:
        """Stops; whatever is left is recovered on the next start."""
        self._stop.set()
        return self.wait(timeout)

    def _run(self) -> None:
        previous = None
        try:
            while not self._stop.is_set():
                try:
                    turns = self.store.missing_vectors(self.batch_size)
                    ids = [t.point_id for t in turns]
                    if not turns or ids == previous:  # done, or nothing more can be done for these
                        return
                    vectors = self.embed([t.text or " " for t in turns])
                    for turn, vector in zip(turns, vectors, strict=True):
                        if self.store.set_vector(turn, vector):
                            self.recovered += 1
                    previous = ids  # only once written: a failed attempt is tried again
                except Exception as error:  # embedder not ready or store busy: try again
                    self.log(f"recovering stored turns without a vector failed, retrying: {error!r}")
                    self._stop.wait(self.retry_seconds)
        finally:
            if self.recovered:
                self.log(f"set the dense vector of {self.recovered} stored turn(s) left without one")
