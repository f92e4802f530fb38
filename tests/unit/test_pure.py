"""Pure pieces: retry backoff, adaptive poll, SQL loader, registry, errors."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from angela_queue import errors, retry
from angela_queue.payload import UndecodablePayload, tolerant_loads
from angela_queue.registry import Handler, Registry
from angela_queue.sql import QUERIES, parse
from angela_queue.types import EnqueueRequest
from angela_queue.worker import poll_interval


def test_backoff_doubles_and_keeps_at_least_half_the_delay():
    rand = random.Random(1)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)]:
        samples = [retry.backoff_s(attempt, 1.0, 3600.0, rand) for _ in range(200)]
        assert min(samples) >= full / 2
        assert max(samples) <= full
        assert max(samples) - min(samples) > full / 4  # jitter spreads them


def test_backoff_is_capped():
    assert retry.backoff_s(40, 1.0, 60.0, random.Random(0)) <= 60.0


def test_next_attempt_is_none_when_attempts_are_used_up():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry.next_attempt_at(3, 3, now, 1.0, 60.0) is None
    later = retry.next_attempt_at(1, 3, now, 1.0, 60.0, delay_s=7.0)
    assert later == now + timedelta(seconds=7)


@pytest.mark.parametrize(
    ("pending", "expected"), [(0, 1.0), (5, 1.0), (6, 0.5), (20, 0.5), (21, 0.1), (500, 0.1)]
)
def test_adaptive_poll_interval(pending, expected):
    assert poll_interval(pending, 0.1, 0.5, 1.0) == expected


def test_every_query_is_loaded_without_comment_lines():
    assert {"task_claim", "task_insert", "task_complete_many", "task_fail_many"} <= set(QUERIES)
    for text in QUERIES.values():
        assert not any(line.lstrip().startswith("--") for line in text.splitlines())


def test_duplicate_query_names_are_an_error():
    with pytest.raises(ValueError, match="duplicate"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_registry_refuses_bad_and_duplicate_kinds_and_suggests_names():
    reg = Registry()
    reg.add(Handler("conversation.analyze", lambda t: None, is_async=False))
    with pytest.raises(errors.ConfigurationError, match="already registered"):
        reg.add(Handler("conversation.analyze", lambda t: None, is_async=False))
    with pytest.raises(errors.ConfigurationError, match="invalid kind"):
        reg.add(Handler("Bad Kind", lambda t: None, is_async=False))
    with pytest.raises(errors.TaskNotRegistered, match=r"did you mean 'conversation\.analyze'"):
        reg.get("conversation.analyse")


def test_error_defaults_to_its_docstring():
    assert str(errors.SchemaError()).startswith("The database schema is missing")


def test_workers_run_on_uvloop_where_it_is_installed():
    import sys

    from angela_queue.worker import event_loop_factory

    factory = event_loop_factory()
    if sys.platform == "win32":
        assert factory is None
    else:
        import uvloop

        assert factory is uvloop.new_event_loop


def test_a_stop_signal_arriving_inside_event_wait_cannot_deadlock():
    """A handler that calls event.set() itself would wait forever when the signal lands
    while the main thread holds the event's lock inside event.wait() (seen as a reaper that
    ignored SIGTERM in CI). The lock is held here on purpose when the signal is delivered."""
    import subprocess
    import sys

    program = """
import os, signal, threading
from angela_queue.watchdog import set_on_signals
stop = threading.Event()
set_on_signals(stop, signal.SIGTERM)
with stop._cond:  # as inside stop.wait(), between its checks
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, lock held
assert stop.wait(5), "never set"
print("stopped")
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(json_values, st.sampled_from(["", " ", "\n"]), st.booleans())
def test_tolerant_loads_reads_what_json_loads_reads(value, space, as_bytes):
    text = space + json.dumps(value) + space
    data = text.encode() if as_bytes else text
    assert tolerant_loads(data) == json.loads(text)


def test_tolerant_loads_gives_json_errors_and_an_undecodable_for_deep_nesting():
    with pytest.raises(json.JSONDecodeError):
        tolerant_loads(b"{not json")
    with pytest.raises(json.JSONDecodeError):
        tolerant_loads(b'{"a": 1} trailing')
    assert tolerant_loads(b"123456789012345678901234567890") == 123456789012345678901234567890
    deep = tolerant_loads(b"[" * 100_000 + b"]" * 100_000)
    assert isinstance(deep, UndecodablePayload) and deep == {}


@pytest.mark.parametrize("delay", [float("inf"), float("nan"), 1e300, "5", True])
def test_a_retry_delay_that_is_not_a_sane_number_of_seconds_is_refused_in_the_handler(delay):
    """Raised where the handler raises Retry, so that attempt fails with this message; the
    delay never reaches the database, where it would fail the whole flush of outcomes."""
    with pytest.raises(ValueError, match="Retry delay_s must be a number of seconds up to"):
        errors.Retry(delay_s=delay)


def test_sane_retry_delays_are_kept():
    assert errors.Retry(delay_s=0).delay_s == 0
    assert errors.Retry(delay_s=2.5).delay_s == 2.5
    assert errors.Retry(delay_s=errors.MAX_RETRY_DELAY_S).delay_s == errors.MAX_RETRY_DELAY_S
    assert errors.Retry().delay_s is None


@pytest.mark.parametrize(
    "item",
    [
        {"kind": "a.b"},
        {"kind": "a.b", "payload": None},
        {"kind": "a.b", "payload": {}},
        {"kind": "a.b", "payload": {"n": 1}},
        {"kind": "handled.kind", "payload": {"n": 1}},
        {"kind": "handled.kind", "payload": {"n": 1}, "queue": "other", "max_attempts": 2},
        {"kind": "a.b", "priority": 9, "batch_key": "k", "timeout_s": 5},
        {"kind": "a.b", "payload": MappingProxyType({"n": 1})},
        MappingProxyType({"kind": "a.b", "payload": {"n": 1}}),
        EnqueueRequest("handled.kind", {"n": 1}),
    ],
)
def test_a_bulk_row_is_the_row_of_the_request_the_item_makes(item):
    """enqueue_many builds rows without requests for plain {kind, payload} dicts: the same
    row, handler and settings defaults included."""
    from angela_queue import App, Settings
    from angela_queue.store import insert_row

    app = App(Settings(dsn="postgresql://nobody@localhost/none", max_attempts=3, timeout_s=40))
    app.task("handled.kind", queue="fast", max_attempts=8, timeout_s=20)(lambda task: None)
    assert app._as_row(item) == insert_row(app._as_request(item))


def test_a_bulk_row_is_validated_like_a_request():
    from angela_queue import App, Settings

    app = App(Settings(dsn="postgresql://nobody@localhost/none"))
    with pytest.raises(errors.InvalidTask, match="kind"):
        app._as_row({"payload": {}})
    with pytest.raises(errors.InvalidTask, match="JSON object"):
        app._as_row({"kind": "a.b", "payload": [1]})
    with pytest.raises(TypeError, match="unknown enqueue option"):
        app._as_row({"kind": "a.b", "priorty": 3})
