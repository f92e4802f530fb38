"""Batch handlers with a real worker (issue 7): low tiers batch, high tiers never wait."""

from __future__ import annotations

import os
import signal

import pytest

from tests.apps.sample_app import CREATE_BATCHES, CREATE_RUNS
from tests.e2e.helpers import start_worker, stop, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def db(conn):
    conn.execute(CREATE_RUNS)
    conn.execute(CREATE_BATCHES)
    return conn


def count(conn, where: str) -> int:
    return conn.execute(f"SELECT count(*) FROM angela_queue.tasks WHERE {where}").fetchone()[0]


def batches(conn) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {}
    for b, task_id, key in conn.execute(
        "SELECT batch, task_id, batch_key FROM test_batches ORDER BY batch, task_id"
    ):
        out.setdefault(b, []).append((task_id, key))
    return out


def test_low_priority_tasks_of_one_key_run_in_batches_of_at_most_five(dsn, db):
    db.execute(
        "INSERT INTO angela_queue.tasks (kind, priority) SELECT 'test.batch', 2"
        " FROM generate_series(1, 12)"
    )
    worker = start_worker(dsn, "--concurrency", "2")
    try:
        wait_for(lambda: count(db, "status = 'succeeded'") == 12, timeout=30)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    got = batches(db)
    sizes = [len(b) for b in got.values()]
    assert sum(sizes) == 12 and max(sizes) <= 5 and max(sizes) > 1, sizes
    ids = sorted(t for b in got.values() for t, _ in b)
    assert ids == sorted(r[0] for r in db.execute("SELECT id FROM angela_queue.tasks"))
    avg = db.execute(
        "SELECT batch_tasks::float / batches_run FROM angela_queue.workers"
    ).fetchone()[0]
    assert avg == pytest.approx(12 / len(sizes))


def test_different_batch_keys_never_share_a_batch(dsn, db):
    db.execute(
        "INSERT INTO angela_queue.tasks (kind, priority, batch_key)"
        " SELECT 'test.batch', 3, 'user-' || (i % 3) FROM generate_series(1, 15) i"
    )
    worker = start_worker(dsn, "--concurrency", "3")
    try:
        wait_for(lambda: count(db, "status = 'succeeded'") == 15, timeout=30)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    for members in batches(db).values():
        assert len({key for _, key in members}) == 1, members


def test_a_critical_task_of_a_batch_kind_starts_within_100_ms(dsn, db):
    worker = start_worker(dsn, env={"ANGELA_QUEUE_POLL_IDLE_S": "30"})
    try:
        wait_for(
            lambda: (
                db.execute(
                    "SELECT count(*) FROM angela_queue.workers WHERE status = 'idle'"
                ).fetchone()[0]
                == 1
            )
        )
        import time

        time.sleep(0.5)
        task_id = db.execute(
            "INSERT INTO angela_queue.tasks (kind, priority) VALUES ('test.batch', 9) RETURNING id"
        ).fetchone()[0]
        wait_for(lambda: count(db, "status = 'succeeded'") == 1, timeout=10, interval=0.01)
        waited = db.execute(
            "SELECT extract(epoch FROM started_at - enqueued_at)"
            " FROM angela_queue.tasks WHERE id = %s",
            (task_id,),
        ).fetchone()[0]
        ran_at = db.execute(
            "SELECT extract(epoch FROM min(at)) - extract(epoch FROM"
            " (SELECT enqueued_at FROM angela_queue.tasks WHERE id = %s))"
            " FROM test_batches",
            (task_id,),
        ).fetchone()[0]
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert float(waited) < 0.1, waited
    assert float(ran_at) < 0.5, ran_at  # the handler ran at once: no wait for mates


def test_a_partially_failed_batch_retries_only_the_failed_tasks(dsn, db):
    db.execute(
        "INSERT INTO angela_queue.tasks (kind, priority, payload) SELECT 'test.batch', 2,"
        " CASE WHEN i = 3 THEN '{\"fail\": true}'::jsonb ELSE '{}' END"
        " FROM generate_series(1, 5) i"
    )
    worker = start_worker(dsn, env={"ANGELA_QUEUE_RETRY_BASE_S": "0.1"})
    try:
        wait_for(lambda: count(db, "status = 'failed'") == 1, timeout=30)
    finally:
        code, output = stop(worker)
    assert code == 0, output
    assert count(db, "status = 'succeeded' AND attempts = 1") == 4
    failed_id, attempts, error = db.execute(
        "SELECT id, attempts, last_error FROM angela_queue.tasks WHERE status = 'failed'"
    ).fetchone()
    assert attempts == 5 and f"task {failed_id} is bad" in error
    runs_of = dict(db.execute("SELECT task_id, count(*) FROM test_batches GROUP BY 1").fetchall())
    assert runs_of[failed_id] == 5 and set(runs_of.values()) == {1, 5}


def test_a_worker_killed_during_a_batch_gets_every_task_reclaimed(dsn, db):
    env = {"ANGELA_QUEUE_HEARTBEAT_S": "0.3", "ANGELA_QUEUE_HEARTBEAT_TIMEOUT_S": "2"}
    db.execute(
        "INSERT INTO angela_queue.tasks (kind, priority, payload) SELECT 'test.batch', 2,"
        " '{\"sleep\": 30}' FROM generate_series(1, 4)"
    )
    victim = start_worker(dsn, env=env)
    wait_for(lambda: count(db, "status = 'running'") == 4, timeout=20)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    db.execute("UPDATE angela_queue.tasks SET payload = '{}'")  # the re-run is quick
    rescuer = start_worker(dsn, env=env)
    try:
        wait_for(lambda: count(db, "status = 'succeeded'") == 4, timeout=30)
    finally:
        code, output = stop(rescuer)
    assert code == 0, output
    assert count(db, "attempts = 2") == 4
