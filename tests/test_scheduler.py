"""The continuous-batching scheduler on the tiny model: late rows join a running batch and leave when done,
cancelled rows stop consuming steps, the queue bound answers Busy, admission is FIFO, and every row's text
equals the same request generated alone (greedy)."""
from __future__ import annotations

import threading
import time

import pytest

from app.backends import GenItem, LocalBackend
from app.scheduler import Busy, Scheduler
from tests.tiny_adapter import make_adapter, untie_base


@pytest.fixture(scope="module")
def backend(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sched")
    base = untie_base(tiny_model_dir, tmp / "base")
    be = LocalBackend(str(base), threads=1)
    be.load_adapter("a", make_adapter(base, tmp / "a", seed=1))
    be.load_adapter("b", make_adapter(base, tmp / "b", seed=2))
    be.force_length = True  # random weights: no early eos, so the token counts below are exact
    return be


def item(text: str, adapter=None, tokens: int = 8, decide=None) -> GenItem:
    return GenItem([{"role": "user", "content": text}], adapter, tokens, decide)


def alone(be, it: GenItem) -> str:
    return be.generate([it])[0][0].text


def test_rows_equal_their_solo_runs_in_a_mixed_batch(backend):
    items = [item("Is X safe?", None, 6, {}), item("Do statins help? " * 8, "a", 9), item("Hi", "b", 12, {}),
             item("Why? " * 30, "a", 5)]
    s = Scheduler(backend, max_batch=8)
    rows, _ = s.generate(items)
    for it, gen in zip(items, rows):
        solo = backend.generate([it])[0][0]
        assert gen.text == solo.text and gen.new_tokens == it.max_new_tokens
        if it.decide is not None:  # scored rows: the same yes/no/maybe log-probs (float noise aside)
            assert gen.option_logprobs == pytest.approx(solo.option_logprobs, abs=1e-4)
    assert [g.batch_size for g in rows] == [4, 4, 4, 4]
    assert s.stats()["served"] == 4


def test_a_late_request_joins_the_running_batch_and_leaves_first(backend):
    s = Scheduler(backend, max_batch=4)
    first_delta = threading.Event()
    long_row = s.submit(item("Tell me everything", "a", 60), on_text=lambda d: first_delta.set())
    assert first_delta.wait(30)
    short_row = s.submit(item("Is X safe?", "b", 4))
    short = s.result(short_row)
    assert not long_row.done.is_set()  # the short one did not wait for the long one to finish
    long_ = s.result(long_row)
    assert short.batch_size == 2 and long_.batch_size == 2  # it joined mid-decode
    assert short.text == alone(backend, item("Is X safe?", "b", 4))
    assert long_.text == alone(backend, item("Tell me everything", "a", 60))
    assert s.stats()["steps"] < 60 + 4  # shared steps, not one after the other


def test_cancel_stops_the_row_and_frees_its_slot(backend):
    s = Scheduler(backend, max_batch=1)
    cancel, deltas = threading.Event(), []

    def on_text(delta):
        deltas.append(delta)
        if len(deltas) == 3:
            cancel.set()

    row = s.submit(item("Tell me everything", None, 200), on_text=on_text, cancel=cancel)
    gen = s.result(row)
    assert gen.cancelled and gen.new_tokens < 10 and deltas[-1] is None
    nxt = s.generate([item("Is X safe?", None, 3)])[0][0]  # the only slot is free again
    assert nxt.new_tokens == 3
    assert s.stats()["cancelled"] == 1 and s.stats()["active"] == 0


def test_full_queue_answers_busy_and_admission_is_fifo(backend):
    s = Scheduler(backend, max_batch=1, queue_limit=2)
    started = threading.Event()
    running = s.submit(item("long", None, 80), on_text=lambda d: started.set())
    assert started.wait(30)
    queued = [s.submit(item(f"question {i}", None, 3)) for i in range(2)]
    with pytest.raises(Busy) as err:
        s.submit(item("one too many", None, 3))
    assert "queue_limit=2" in str(err.value) and err.value.retry_after >= 1
    done_order = []
    for row in queued:
        row.done.wait(60)
        done_order.append(time.perf_counter())
    assert done_order == sorted(done_order) and all(r.done.is_set() for r in queued)
    assert s.result(running).new_tokens == 80 and s.stats()["busy"] == 1


def test_an_error_fails_the_rows_in_flight_and_the_worker_goes_on(backend):
    s = Scheduler(backend, max_batch=2)
    with pytest.raises(Exception):
        s.generate([item("ok", "no-such-adapter", 3)])
    assert s.generate([item("Is X safe?", "a", 3)])[0][0].text == alone(backend, item("Is X safe?", "a", 3))


def test_engine_stream_closed_early_frees_the_row(tiny_model_dir, tmp_path):
    from app.config import EngineConfig
    from app.engine import Engine

    engine = Engine(EngineConfig(base_model=str(untie_base(tiny_model_dir, tmp_path / "base")),
                                 adapters_dir=str(tmp_path / "none"), adapters=(), max_new_tokens=1500))
    engine.backend.force_length = True
    cancel = threading.Event()
    parts = engine.stream("Tell me everything", cancel=cancel)
    assert isinstance(next(parts), str)
    parts.close()  # the client went away: the row's cancel is set (the scheduler then drops it: see above)
    assert cancel.is_set()
    deadline = time.time() + 10
    while engine.scheduler.stats()["active"] and time.time() < deadline:
        time.sleep(0.05)
    assert engine.scheduler.stats()["active"] == 0
    whole = engine.stream("Is X safe?", max_new_tokens=5)
    items = list(whole)
    assert "".join(items[:-1]) == items[-1].text and items[-1].timings["new_tokens"] == 5


def test_a_stream_ending_in_a_cut_character_still_equals_the_answer(backend):
    """Text ending inside a multi-byte character is held back while decoding goes on; when the row finishes
    there, the rest is sent, so the streamed deltas always add up to the final text."""
    from app.scheduler import _Row

    tok = backend.tokenizer
    half = next(i for i in range(len(tok)) if tok.decode([i]).endswith("\ufffd"))  # half of a UTF-8 character
    start = tok("Yes, it is", add_special_tokens=False)["input_ids"]
    deltas = []
    row = _Row(item("Hi"), [1, 2], on_text=deltas.append, generated=start + [half],
               emitted=tok.decode(start, skip_special_tokens=True))  # what the stream had sent so far
    Scheduler(backend)._finish(row)
    assert deltas[-1] is None and row.emitted + "" == tok.decode(start + [half], skip_special_tokens=True)
    assert "Yes, it is" + "".join(deltas[:-1]) == tok.decode(start + [half], skip_special_tokens=True)
    assert row.result.text.endswith("\ufffd")
