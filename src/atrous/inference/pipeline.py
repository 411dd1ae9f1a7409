"""Reading, inference and writing overlapped: three stages joined by bounded queues.

``atrous predict`` spends much of its time outside the model (decoding photos or video frames,
drawing and encoding pictures). `run_pipeline` reads in one thread, runs the model in the
calling thread and writes in another, so the model waits for neither; decoding and encoding
(Pillow, OpenCV, zlib, numpy) release the GIL. The queues are bounded, so memory stays a few
images whatever the number of inputs, and a slow disk slows the reader instead of filling memory.

Outcomes are reported per item through callbacks: a failure to read, infer or write one item is
that item's failure and the others go on. An exception raised by iterating the items (a video
that breaks off) or by a callback ends the run after everything already read has been inferred
and written, and is raised again in the caller.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

__all__ = ["run_pipeline"]

Item = TypeVar("Item")
Data = TypeVar("Data")
Result = TypeVar("Result")

_END = object()  # closes a queue


class _Stage:
    """A daemon thread whose exception is kept for the caller instead of being printed."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                target()
            except BaseException as error:  # re-raised in the caller's thread
                self.error = error

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()


def run_pipeline(
    items: Iterable[Item],
    *,
    load: Callable[[Item], Data],
    infer: Callable[[list[Data]], Sequence[Result]],
    write: Callable[[Item, Data, Result], None],
    on_failure: Callable[[Item, str, Exception], None],
    on_done: Callable[[Item], None] | None = None,
    batch_size: int = 1,
    depth: int | None = None,
) -> None:
    """Load, infer and write every item; `write` sees the items in their order.

    Args:
        items: what to process, iterated in the reading thread (a list, or a generator such as
            a video's frames).
        load: item -> data for the model (in the reading thread).
        infer: a batch of data -> one result each (in the calling thread, where the model
            lives). When a batch fails, its items are inferred one by one, so that the failure
            is the item's at fault.
        write: ``(item, data, result)`` -> None (in the writing thread).
        on_failure: ``(item, stage, error)`` for an item that could not be processed, `stage`
            being "read", "infer" or "write"; called from the calling thread for the first two
            and from the writing thread for "write". An exception it raises ends the run (and
            is raised here).
        on_done: called with every item once it is finished, failed or not (progress).
        batch_size: items per `infer` call (fewer at the end).
        depth: the capacity of each queue (default ``2 * batch_size + 2``).

    Raises:
        Whatever iterating `items`, `infer` outside a per-item failure, or a callback raised;
        after the items already read were written.
    """
    batch_size = max(1, int(batch_size))
    depth = depth or 2 * batch_size + 2
    loaded: queue.Queue = queue.Queue(maxsize=depth)
    inferred: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = on_done or (lambda item: None)

    def put(q: queue.Queue, value: Any) -> bool:
        # Gives up when the run is stopping, so that no thread waits for ever on a full queue.
        while not stop.is_set():
            try:
                q.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                try:
                    value = (item, load(item), None)
                except Exception as error:  # this item's failure, reported by the caller
                    value = (item, None, error)
                if not put(loaded, value):
                    return
        finally:
            put(loaded, _END)

    def write_all() -> None:
        failed: BaseException | None = None
        while True:
            value = inferred.get()
            if value is _END:
                if failed is not None:
                    raise failed
                return
            if failed is not None:  # after a fatal error the queue is only drained
                continue
            item, data, result = value
            try:
                try:
                    write(item, data, result)
                except Exception as error:
                    on_failure(item, "write", error)
                done(item)
            except BaseException as fatal:
                failed = fatal
                stop.set()

    def infer_batch(batch: list[tuple[Any, Any]]) -> None:
        try:
            results = infer([data for _, data in batch])
        except Exception as error:
            if len(batch) == 1:
                on_failure(batch[0][0], "infer", error)
                done(batch[0][0])
                return
            for one in batch:
                infer_batch([one])
            return
        for (item, data), result in zip(batch, results):
            inferred.put((item, data, result))

    reader = _Stage(read, "atrous-read")
    writer = _Stage(write_all, "atrous-write")
    try:
        batch: list[tuple[Any, Any]] = []
        while not stop.is_set():
            try:
                value = loaded.get(timeout=0.05)
            except queue.Empty:
                continue
            if value is _END:
                break
            item, data, error = value
            if error is not None:
                on_failure(item, "read", error)
                done(item)
                continue
            batch.append((item, data))
            if len(batch) == batch_size:
                infer_batch(batch)
                batch = []
        if batch and not stop.is_set():
            infer_batch(batch)
    finally:
        stop.set()  # a reader still running (the caller failed) gives up
        inferred.put(_END)
        writer.thread.join()
        reader.thread.join()
    for stage in (writer, reader):
        if stage.error is not None:
            raise stage.error
