"""The queue in front of a stage replica, and how batches are taken from it.

Calls arrive on the actor's event loop; one serving thread owns the model. The
queue hands chunks across (a thread-safe inbox), holds them while the engine
is full, and decides what goes in next: when the engine is idle it waits for a
first chunk and then up to ``max_wait_ms`` for a fuller batch (as Ray Serve's
batching queue does); a continuous engine takes chunks in arrival order, a
batch engine the oldest chunk and the waiting chunks closest to it in length,
so that one long chunk does not hold short ones back.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchQueue(Generic[T]):
    """Chunks waiting at one stage replica."""

    def __init__(self, max_wait_s: float, length: Callable[[T], int]) -> None:
        self.max_wait_s = max_wait_s
        self.length = length
        self._inbox: queue.Queue[T] = queue.Queue()
        self._waiting: deque[T] = deque()

    def put(self, item: T) -> None:
        """From any thread: a chunk arrived."""
        self._inbox.put(item)

    def __len__(self) -> int:
        return len(self._waiting)

    def fill(self, *, block: bool, want: int) -> None:
        """Moves arrived chunks into the waiting line. With ``block``, first waits for one
        chunk, then at most ``max_wait_s`` for ``want`` of them."""
        if block and not self._waiting:
            self._waiting.append(self._inbox.get())
            deadline = time.perf_counter() + self.max_wait_s
            while len(self._waiting) < want:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    self._waiting.append(self._inbox.get(timeout=remaining))
                except queue.Empty:
                    break
        while True:
            try:
                self._waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                return

    def take(self, n: int, *, by_length: bool) -> list[T]:
        """Up to ``n`` waiting chunks: the oldest first, then either the next in arrival order
        or (``by_length``) those closest to the oldest in length."""
        if n <= 0 or not self._waiting:
            return []
        if not by_length:
            return [self._waiting.popleft() for _ in range(min(n, len(self._waiting)))]
        size = self.length(self._waiting[0])
        nearest = sorted(range(len(self._waiting)), key=lambda i: (abs(self.length(self._waiting[i]) - size), i))
        chosen = set(nearest[:n])
        batch = [item for i, item in enumerate(self._waiting) if i in chosen]
        self._waiting = deque(item for i, item in enumerate(self._waiting) if i not in chosen)
        return batch
