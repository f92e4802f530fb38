"""Push bookkeeping (angela_queue/push.py) and what a worker counts as its own, without a
database: the slots an offer holds, and the notifications it reads."""

from __future__ import annotations

import json

from angela_queue import App, Settings, Task
from angela_queue.push import AWAITED_LATE_S, Offers, Push, parse_push
from angela_queue.store import Outcome
from angela_queue.worker import Worker

ROW = {
    "queue": "default", "kind": "a.b", "payload": {"n": 1}, "priority": 5, "boost": 0,
    "tier": "medium", "attempts": 1, "max_attempts": 5,
    "enqueued_at": "2026-12-01T12:00:00.5+00:00", "run_at": "2026-12-01T12:00:00.5+00:00",
    "deadline_at": "2026-12-01T12:05:00.5+00:00", "started_at": "2026-12-01T12:00:00.6+00:00",
    "batch_key": "a.b", "dedupe_key": None, "timeout_s": 60, "effective_priority": 1.5,
}  # fmt: skip


def test_a_notification_carries_the_offer_the_task_and_its_row():
    push = parse_push(f"7 42 {json.dumps(ROW)}", worker_id=3)
    assert (push.offer_id, push.task_id) == (7, 42)
    assert push.task is not None
    assert (push.task.id, push.task.kind, push.task.payload, push.task.worker_id) == (
        42, "a.b", {"n": 1}, 3,
    )  # fmt: skip
    assert push.task.started_at is not None and push.task.started_at.tzinfo is not None


def test_a_row_too_large_or_too_deep_is_read_from_the_database_instead():
    assert parse_push("7 42", worker_id=3) == Push(7, 42, None)
    deep = "[" * 5000 + "]" * 5000
    assert parse_push(f'7 42 {{"payload": {deep}}}', worker_id=3) == Push(7, 42, None)


def test_an_offer_holds_its_slot_until_it_is_withdrawn_or_its_push_comes():
    offers = Offers()
    first = offers.next_offer_id()
    offers.offered(first)
    assert offers.reserved() == 1
    assert offers.withdrawn(first) is True  # deleted: the slot is free again
    assert offers.reserved() == 0
    second = offers.next_offer_id()
    assert second != first
    offers.offered(second)
    assert offers.withdrawn(None) is False  # filled: its push is on its way
    assert offers.reserved() == 1 and not offers.late()
    assert offers.late(now=offers.awaited[second] + AWAITED_LATE_S + 0.1)
    assert offers.received(Push(second, 9, None), running=False) is True
    assert offers.reserved() == 0


def test_a_late_copy_of_an_adopted_task_is_ignored_once():
    offers = Offers()
    offers.offered(1)
    offers.adopted([9])  # the adoption withdrew the offer and found task 9 pushed
    assert offers.reserved() == 0
    assert offers.received(Push(1, 9, None), running=False) is False
    assert offers.received(Push(2, 10, None), running=True) is False  # already running
    assert offers.received(Push(3, 11, None), running=False) is True


def test_a_worker_knows_every_task_it_runs_batch_mates_included():
    """What a reconnect must not release or adopt: running tasks (a batch's mates are only
    in the counters) and those whose outcome is not written yet."""
    app = App(Settings(dsn="postgresql://unused"))

    @app.task("a.b")
    def handler(task: Task) -> None:
        return None

    worker = Worker(app)
    for task_id in (10, 11, 12):  # one batch: only its first task has a slot
        worker.counters.started(task_id)
    worker._outcomes.append(Outcome(20, 1, True))
    assert worker._known_ids() == [10, 11, 12, 20]
