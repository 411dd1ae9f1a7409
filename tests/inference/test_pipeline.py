"""Reading, inference and writing in threads: order, per-item failures, bounded read-ahead."""

from __future__ import annotations

import pytest

from atrous.inference.pipeline import run_pipeline


def _collect(**kwargs):
    written, failures, done = [], [], []
    run_pipeline(
        kwargs.pop("items"),
        load=kwargs.pop("load", lambda item: item * 10),
        infer=kwargs.pop("infer", lambda batch: [x + 1 for x in batch]),
        write=kwargs.pop("write", lambda item, data, result: written.append((item, result))),
        on_failure=kwargs.pop(
            "on_failure", lambda item, stage, error: failures.append((item, stage, str(error)))
        ),
        on_done=done.append,
        **kwargs,
    )
    return written, failures, done


@pytest.mark.parametrize("batch_size", [1, 3])
def test_every_item_is_written_in_order(batch_size):
    written, failures, done = _collect(items=list(range(10)), batch_size=batch_size)
    assert written == [(i, i * 10 + 1) for i in range(10)]
    assert failures == [] and sorted(done) == list(range(10))


def test_a_failure_is_the_items_own_and_the_others_go_on():
    def load(item):
        if item == 2:
            raise OSError("unreadable")
        return item

    def infer(batch):
        if 5 in batch:
            raise ValueError("too large")
        return batch

    written: list = []

    def write(item, data, result):
        if item == 7:
            raise OSError("disk full")
        written.append(item)

    _, failures, done = _collect(
        items=list(range(9)), load=load, infer=infer, write=write, batch_size=4
    )
    # the batch holding 5 was inferred again one by one: only 5 failed
    assert written == [0, 1, 3, 4, 6, 8]
    assert sorted(failures) == [
        (2, "read", "unreadable"),
        (5, "infer", "too large"),
        (7, "write", "disk full"),
    ]
    assert sorted(done) == list(range(9))


def test_a_source_that_breaks_off_keeps_what_it_gave():
    def frames():
        yield from range(5)
        raise RuntimeError("truncated after 5")

    written: list = []
    with pytest.raises(RuntimeError, match="truncated after 5"):
        run_pipeline(
            frames(),
            load=lambda x: x,
            infer=lambda batch: batch,
            write=lambda item, data, result: written.append(item),
            on_failure=lambda *a: None,
        )
    assert written == [0, 1, 2, 3, 4]


def test_a_fatal_failure_stops_reading_and_is_raised():
    read: list = []

    def source():
        for i in range(1000):
            read.append(i)
            yield i

    def on_failure(item, stage, error):
        raise KeyError(f"stop at {item}")

    def write(item, data, result):
        if item == 3:
            raise OSError("encoder gone")

    with pytest.raises(KeyError, match="stop at 3"):
        run_pipeline(
            source(),
            load=lambda x: x,
            infer=lambda batch: batch,
            write=write,
            on_failure=on_failure,
        )
    assert len(read) < 50  # it did not read on to the end


def test_reading_runs_at_most_a_few_items_ahead():
    import time

    read: list = []

    def source():
        for i in range(60):
            read.append(i)
            yield i

    def infer(batch):
        time.sleep(0.01)  # a slow model: the reader gets as far ahead as the queues let it
        return batch

    ahead: list = []
    run_pipeline(
        source(),
        load=lambda x: x,
        infer=infer,
        write=lambda item, data, result: ahead.append(len(read) - item),
        on_failure=lambda *a: None,
        depth=3,
    )
    # two queues of 3, the item in the model, one waiting in the reader, and the one written
    assert 3 <= max(ahead) <= 3 + 3 + 3
