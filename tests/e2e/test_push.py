"""Push with real worker processes and real signals (migration 0017): a killed worker's
offer is never filled, and a killed listener loses no pushed task."""

from __future__ import annotations

import signal
import time

import pytest

from tests.apps.sample_app import CREATE_RUNS
from tests.e2e.helpers import start_worker, stop, wait_for

pytestmark = pytest.mark.slow

LISTENER_LOCKS = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1095827716"


@pytest.fixture
def runs(conn):
    conn.execute(CREATE_RUNS)
    return conn


def offer_of(conn, worker_pid: int) -> int | None:
    row = conn.execute(
        "SELECT o.worker_id FROM angela_queue.worker_offers o"
        " JOIN angela_queue.workers w ON w.id = o.worker_id WHERE w.pid = %s",
        (worker_pid,),
    ).fetchone()
    return None if row is None else int(row[0])


def insert(conn) -> int:
    row = conn.execute(
        "INSERT INTO angela_queue.tasks (kind) VALUES ('test.record') RETURNING id"
    ).fetchone()
    return int(row[0])


def test_a_sigkilled_workers_offer_is_never_filled(dsn, runs):
    killed = start_worker(dsn, "--concurrency", "1")
    try:
        dead_id = wait_for(lambda: offer_of(runs, killed.pid))
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=10)
        # Its sessions end with the process, and the listener's lock with them.
        wait_for(lambda: runs.execute(LISTENER_LOCKS).fetchall() == [])
        task_id = insert(runs)
        time.sleep(0.5)
        row = runs.execute(
            "SELECT status, worker_id, attempts FROM angela_queue.tasks WHERE id = %s",
            (task_id,),
        ).fetchone()
        assert row == ("pending", None, 0)  # not handed to the dead worker
        assert offer_of(runs, killed.pid) is None  # its offer was dropped instead
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.communicate()
    alive = start_worker(dsn, "--concurrency", "1")
    try:
        wait_for(lambda: runs.execute(
            "SELECT status = 'succeeded' AND worker_id <> %s AND attempts = 1"
            " FROM angela_queue.tasks WHERE id = %s", (dead_id, task_id)
        ).fetchone()[0])  # fmt: skip
    finally:
        code, output = stop(alive)
    assert code == 0, output


def test_a_killed_listener_loses_no_pushed_task(dsn, runs):
    """Each time, the worker's listener backend is terminated with an offer standing and a
    task inserted right after: the task is pushed before the session ended (its
    notification lost, then adopted) or claimed after, and runs exactly once either way."""
    worker = start_worker(dsn, "--concurrency", "1", env={"ANGELA_QUEUE_POLL_IDLE_S": "30"})
    task_ids = []
    try:
        for _ in range(5):
            wait_for(lambda: offer_of(runs, worker.pid))
            (pid,) = wait_for(lambda: runs.execute(LISTENER_LOCKS).fetchall())[0]
            runs.execute("SELECT pg_terminate_backend(%s)", (pid,))
            task_ids.append(insert(runs))
            wait_for(
                lambda: runs.execute(
                    "SELECT status = 'succeeded' FROM angela_queue.tasks WHERE id = %s",
                    (task_ids[-1],),
                ).fetchone()[0],
                timeout=15,
            )
    finally:
        code, output = stop(worker)
    assert code == 0, output
    rows = runs.execute(
        "SELECT t.attempts, (SELECT count(*) FROM test_runs r WHERE r.task_id = t.id)"
        " FROM angela_queue.tasks t WHERE t.id = ANY(%s) ORDER BY t.id",
        (task_ids,),
    ).fetchall()
    assert rows == [(1, 1)] * 5, output
