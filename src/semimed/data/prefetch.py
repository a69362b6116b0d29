"""Training batches drawn ahead in a background thread (`train.prefetch`).

`Prefetcher` wraps a `TrainStream`: one thread draws and augments the next `depth` batches
while the loop trains on the current one, so on a GPU the data stream (crops, augmentations,
host-to-device copies) overlaps the step instead of adding to it. The batches and their
order are exactly the stream's own: the stream draws from its own random generators only
(`semimed.data.loaders`), never from the global ones the methods use, so prefetching changes
no number.

On CUDA the thread draws on its own CUDA stream (`CudaHandoff`), so the batch's host-to-device
copies and GPU augmentations run beside the step's kernels instead of queueing between them on
the loop's stream; the loop's stream waits for an event recorded after each batch, and each
tensor is marked as used there (``Tensor.record_stream``), so the caching allocator does not
hand its memory back to the drawing stream while the step still reads it. On a CPU the thread
draws as the stream would (no handoff).

Resume stays exact: every prefetched batch is kept with the stream's state from just before
it was drawn, and `state_dict()` returns the state after the batches the loop has taken, not
after the ones waiting in the buffer. Errors raised while drawing reach the loop at the
`next()` that would have returned that batch.
"""

from __future__ import annotations

import collections
import contextlib
import threading

import torch


class CudaHandoff:
    """Batches drawn on a side CUDA stream, handed to the stream current in the loop."""

    def __init__(self, device: torch.device) -> None:
        self.side = torch.cuda.Stream(device)

    def drawing(self) -> contextlib.AbstractContextManager:
        """The context the thread draws a batch in: the side stream current."""
        return torch.cuda.stream(self.side)

    def ready(self) -> torch.cuda.Event:
        """An event after the work queued on the side stream so far (one batch)."""
        event = torch.cuda.Event()
        event.record(self.side)
        return event

    def receive(self, batch, ready: torch.cuda.Event) -> None:
        """Make the loop's current stream wait for ``ready`` and mark each CUDA tensor of
        ``batch`` (a dict of tensors) as used by that stream."""
        current = torch.cuda.current_stream(self.side.device)
        current.wait_event(ready)
        for value in batch.values() if isinstance(batch, dict) else ():
            if isinstance(value, torch.Tensor) and value.is_cuda:
                value.record_stream(current)


def handoff_for(stream):
    """`CudaHandoff` for a stream whose ``device`` is a CUDA device, else None."""
    device = getattr(stream, "device", None)
    if device is not None and torch.device(device).type == "cuda":
        return CudaHandoff(torch.device(device))
    return None


class _NoHandoff:
    """The CPU: the thread draws as the stream does; nothing to hand over."""

    def drawing(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def ready(self) -> None:
        return None

    def receive(self, batch, ready) -> None:
        pass


class Prefetcher:
    """`next(prefetcher)` is `next(stream)`, drawn up to `depth` batches ahead in a thread.

    Attributes not defined here (e.g. the stream's `lab_stream`) are the stream's. Call
    `close()` when done (the thread is a daemon, so a crash does not hang the process).
    ``handoff``: how batches cross from the thread to the loop (default `handoff_for`)."""

    def __init__(self, stream, depth: int, handoff=None) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1; got {depth}")
        self.stream, self.depth = stream, depth
        self._handoff = handoff or handoff_for(stream) or _NoHandoff()
        # (state before, batch or error, the handoff's ready marker)
        self._buffer: collections.deque = collections.deque()
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
            _, item, ready = self._buffer.popleft()
            self._ready.notify_all()
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._handoff.receive(item, ready)
        return item

    def _work(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._stop or len(self._buffer) < self.depth)
                if self._stop:
                    return
            with self._draw:
                state = self.stream.state_dict()
                with self._handoff.drawing():
                    try:
                        item = next(self.stream)
                    except BaseException as err:  # handed to the loop, which raises it
                        item = err
                    ready = self._handoff.ready()
                with self._ready:
                    self._buffer.append((state, item, ready))
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
