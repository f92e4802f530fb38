"""scripts/profile_push.py: the push experiment's two workers, on a real database."""

from __future__ import annotations

import psycopg
import pytest

from scripts.profile_push import KIND, install, measure

pytestmark = pytest.mark.slow


def test_both_workers_start_every_task_and_push_hands_them_over_in_the_insert(dsn):
    install(dsn)
    claimed = measure(dsn, "claim", 20, 50.0)
    assert len(claimed) == 20 and all(0 < ms < 1000 for ms in claimed)
    pushed = measure(dsn, "push", 20, 50.0)
    assert len(pushed) == 20 and all(0 < ms < 1000 for ms in pushed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # The push run's timed tasks were inserted running, fenced to its worker: the trigger
        # gave each one to the offer the worker left before it (warm-up tasks sent before
        # the first offer stay pending: the push worker never claims).
        rows = conn.execute(
            "SELECT status, attempts, worker_id IS NOT NULL, started_at = enqueued_at"
            " FROM angela_queue.tasks"
            " WHERE kind = %s AND status <> 'succeeded' AND (payload->>'sent')::float > 0",
            (KIND,),
        ).fetchall()
    assert len(rows) == 20
    assert set(rows) == {("running", 1, True, True)}
