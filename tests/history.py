"""A seeded task history with chosen timestamps, and the figures the views must show for it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def add_task(
    conn: psycopg.Connection[Any],
    now: datetime,
    *,
    priority: int,
    enqueued_ago: float,
    queue: str = "default",
    status: str = "pending",
    wait: float | None = None,
    processing: float | None = None,
    attempts: int = 0,
    last_error: str | None = None,
    ready: bool = True,
) -> int:
    """Insert a task as a producer would, then put it in the state wanted, times exact."""
    enqueued = now - timedelta(seconds=enqueued_ago)
    row = conn.execute(
        "INSERT INTO angela_queue.tasks (queue, kind, priority, enqueued_at)"
        " VALUES (%s, 'a.b', %s, %s) RETURNING id",
        (queue, priority, enqueued),
    ).fetchone()
    assert row is not None
    first = None if wait is None else enqueued + timedelta(seconds=wait)
    finished = None
    if processing is not None:
        assert first is not None
        finished = first + timedelta(seconds=processing)
    if status in ("dropped", "cancelled"):
        finished = now - timedelta(seconds=60)
    conn.execute(
        "UPDATE angela_queue.tasks SET status = %s, attempts = %s, first_started_at = %s,"
        " started_at = %s, finished_at = %s, last_error = %s, ready = %s,"
        " run_at = CASE WHEN %s THEN run_at ELSE now() + interval '1 hour' END WHERE id = %s",
        (status, attempts, first, first, finished, last_error, ready, ready, row[0]),
    )
    return int(row[0])


def seed_history(conn: psycopg.Connection[Any]) -> dict[Any, Any]:
    """The history the view tests assert on; returns the expected figures."""
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    now = row[0]
    waits, runs = [10.0, 20.0, 30.0, 100.0], [1.0, 2.0, 3.0, 4.0]
    for i, (wait, run) in enumerate(zip(waits, runs, strict=True)):
        add_task(
            conn,
            now,
            priority=8,
            enqueued_ago=900,
            status="succeeded",
            wait=wait,
            processing=run,
            attempts=2 if i == 0 else 1,
        )
    add_task(
        conn,
        now,
        priority=8,
        enqueued_ago=900,
        status="failed",
        wait=5.0,
        processing=0.5,
        attempts=5,
        last_error="ValueError: boom",
    )
    # Two hours ago: outside every "last hour" figure.
    add_task(conn, now, priority=8, enqueued_ago=7300, status="succeeded", wait=1, processing=1)
    for _ in range(2):
        add_task(conn, now, priority=2, enqueued_ago=120, status="dropped")
    add_task(conn, now, priority=2, enqueued_ago=120, status="cancelled")
    for _ in range(3):
        add_task(conn, now, priority=5, enqueued_ago=400)  # due, past the 300 s target
    add_task(conn, now, priority=5, enqueued_ago=10, ready=False)  # scheduled
    add_task(conn, now, priority=5, enqueued_ago=10, ready=False, attempts=1)  # a retry
    add_task(
        conn,
        now,
        priority=5,
        enqueued_ago=30,
        status="running",
        wait=20,
        attempts=2,
        last_error="Reclaimed: worker 7 was lost (no heartbeat) during attempt 1/5",
    )
    all_waits = [*waits, 5.0]
    all_runs = [*runs, 0.5]
    return {
        ("default", "high"): {
            "target_wait_s": 60.0,
            "done_1h": 4,
            "failed_1h": 1,
            "started_1h": 5,
            "slo_breaches_1h": 1,
            "retried_1h": 2,
            "wait_p50_s": percentile_cont(all_waits, 0.5),
            "wait_p95_s": percentile_cont(all_waits, 0.95),
            "processing_p50_s": percentile_cont(all_runs, 0.5),
            "processing_p95_s": percentile_cont(all_runs, 0.95),
            "pending": 0,
        },
        ("default", "low"): {"dropped_1h": 2, "dropped": 2, "cancelled_1h": 1, "done_1h": 0},
        ("default", "medium"): {
            "pending": 3,
            "pending_past_target": 3,
            "scheduled": 2,
            "retrying": 1,
            "running": 1,
            "reclaimed": 1,
            "started_1h": 1,
            "slo_breaches_1h": 0,
            "wait_p50_s": 20.0,
        },
        "waits": all_waits,
        "runs": all_runs,
        "now": now,
    }


def add_worker(
    conn: psycopg.Connection[Any], *, status: str, heartbeat_ago: float, completed: int = 0
) -> int:
    row = conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, status, heartbeat_at,"
        " tasks_completed, tasks_failed, avg_processing_ms)"
        " VALUES ('host-a', 4242, '{default}', %s, now() - make_interval(secs => %s), %s, 1, 12.5)"
        " RETURNING id",
        (status, heartbeat_ago, completed),
    ).fetchone()
    assert row is not None
    return int(row[0])
