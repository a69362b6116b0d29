"""Training batches drawn ahead in a background thread (`train.prefetch`).

`Prefetcher` wraps a `TrainStream`: one thread draws and augments the next `depth` batches
while the loop trains on the current one, so on a GPU the data stream (crops, augmentations,
host-to-device copies) overlaps the step instead of adding to it. The batches and their
order are exactly the stream's own: the stream draws from its own random generators only
(`semimed.data.loaders`), never from the global ones the methods use, so prefetching changes
no number.

Resume stays exact: every prefetched batch is kept with the stream's state from just before
it was drawn, and `state_dict()` returns the state after the batches the loop has taken, not
after the ones waiting in the buffer. Errors raised while drawing reach the loop at the
`next()` that would have returned that batch.
"""

from __future__ import annotations

import collections
import threading


class Prefetcher:
    """`next(prefetcher)` is `next(stream)`, drawn up to `depth` batches ahead in a thread.

    Attributes not defined here (e.g. the stream's `lab_stream`) are the stream's. Call
    `close()` when done (the thread is a daemon, so a crash does not hang the process)."""

    def __init__(self, stream, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1; got {depth}")
        self.stream, self.depth = stream, depth
        self._buffer: collections.deque = collections.deque()  # (state before, batch or error)
        self._ready = threading.Condition()
        self._draw = threading.Lock()  # held while the stream draws: its state is consistent
        self._stop = False
        self._thread: threading.Thread | None = None

    def __getattr__(self, name: str):
        if name == "stream":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.stream, name)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="prefetch", daemon=True)
            self._thread.start()
        with self._ready:
            self._ready.wait_for(lambda: self._buffer)
            _, item = self._buffer.popleft()
            self._ready.notify_all()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def _work(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._stop or len(self._buffer) < self.depth)
                if self._stop:
                    return
            with self._draw:
                state = self.stream.state_dict()
                try:
                    item = next(self.stream)
                except BaseException as err:  # handed to the loop, which raises it
                    item = err
                with self._ready:
                    self._buffer.append((state, item))
                    self._ready.notify_all()
            if isinstance(item, BaseException):
                return

    def state_dict(self) -> dict:
        """The stream's state after the batches `next()` has returned (resume point)."""
        with self._draw, self._ready:
            return self._buffer[0][0] if self._buffer else self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("Prefetcher.load_state_dict: call it before the first batch")
        self.stream.load_state_dict(state)

    def close(self) -> None:
        """Stop the thread and drop the prefetched batches."""
        with self._ready:
            self._stop = True
            self._ready.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._buffer.clear()
