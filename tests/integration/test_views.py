"""The monitoring views return the right numbers for a seeded history (DESIGN.md §1)."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from angela_queue import monitoring
from angela_queue.store import TaskStore
from tests.history import add_task, add_worker, seed_history

MONITOR = "angela_queue_monitor"


def rows_by_key(conn, view: str) -> dict[tuple[str, str], dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"SELECT * FROM angela_queue.{view}").fetchall()
    return {(r["queue"], r["tier"]): r for r in rows}


def test_queue_stats_for_a_seeded_history(conn):
    expected = seed_history(conn)
    stats = rows_by_key(conn, "queue_stats")
    assert set(stats) == {("default", t) for t in ("critical", "high", "medium", "low")}
    for key in (("default", "high"), ("default", "low"), ("default", "medium")):
        for column, value in expected[key].items():
            assert stats[key][column] == pytest.approx(value), (key, column)
    assert stats[("default", "medium")]["oldest_pending_age_s"] == pytest.approx(400, abs=5)
    critical = stats[("default", "critical")]
    assert critical["pending"] == critical["done_1h"] == critical["started_1h"] == 0
    assert critical["wait_p50_s"] is None and critical["oldest_pending_age_s"] is None


def test_queue_stats_columns_are_stable(conn):
    """The documented contract: names and order (new columns are only appended)."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM angela_queue.queue_stats LIMIT 0")
        names = [d.name for d in cur.description or []]
    assert names == [
        "queue",
        "tier",
        "target_wait_s",
        "pending",
        "scheduled",
        "running",
        "oldest_pending_age_s",
        "pending_past_target",
        "done_1h",
        "failed_1h",
        "dropped_1h",
        "cancelled_1h",
        "started_1h",
        "wait_p50_s",
        "wait_p95_s",
        "processing_p50_s",
        "processing_p95_s",
        "slo_breaches_1h",
        "dropped",
        "retrying",
        "retried_1h",
        "reclaimed",
    ]


def test_queue_stats_agrees_with_tier_slo(conn):
    seed_history(conn)
    stats, slo = rows_by_key(conn, "queue_stats"), rows_by_key(conn, "tier_slo")
    for key, s in slo.items():
        assert stats[key]["pending"] == s["pending"]
        assert stats[key]["started_1h"] == s["started_1h"]
        assert stats[key]["slo_breaches_1h"] == s["started_1h"] - s["met_1h"]
        assert stats[key]["target_wait_s"] == s["target_wait_s"]


def test_worker_stats_has_the_agreed_columns_and_ages(conn):
    live = add_worker(conn, status="active", heartbeat_ago=3, completed=7)
    dead = add_worker(conn, status="dead", heartbeat_ago=7200)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {r["id"]: r for r in cur.execute("SELECT * FROM angela_queue.worker_stats")}
    assert list(rows[live])[:12] == [
        "id",
        "hostname",
        "pid",
        "queues",
        "status",
        "heartbeat_age_s",
        "tasks_completed",
        "tasks_failed",
        "avg_processing_ms",
        "current_task_id",
        "last_active_at",
        "started_at",
    ]
    assert rows[live]["heartbeat_age_s"] == pytest.approx(3, abs=1)
    assert rows[live]["tasks_completed"] == 7 and rows[live]["avg_processing_ms"] == 12.5
    # monitoring shows dead workers of the last hour only, and judges health.
    snap = monitoring.snapshot(TaskStore(conn))
    assert [(w.id, w.health) for w in snap.workers] == [(live, "ok")]
    assert dead not in rows or rows[dead]["status"] == "dead"


def test_snapshot_is_the_views_rows(conn):
    seed_history(conn)
    snap = monitoring.snapshot(TaskStore(conn))
    stats = rows_by_key(conn, "queue_stats")
    for q in snap.queues:
        view = stats[(q.queue, q.tier)]
        for column, value in view.items():
            if column != "oldest_pending_age_s":  # an age: it grows between the two reads
                assert getattr(q, column) == value, column
    assert [(q.queue, q.tier) for q in snap.active_queues()] == [
        ("default", "high"),
        ("default", "medium"),
        ("default", "low"),
    ]


def test_histograms_count_each_value_in_its_le_bucket(conn):
    expected = seed_history(conn)
    hists = monitoring.histograms(
        TaskStore(conn), wait_bounds=(5.0, 20.0, 60.0), processing_bounds=(1.0, 2.5)
    )
    wait = hists[("wait", "default", "high")]
    # waits 5, 10, 20, 30, 100: a value equal to a bound counts in that bound's bucket.
    assert wait.buckets == [(5.0, 1), (20.0, 3), (60.0, 4)]
    assert wait.count == 5 and wait.total == pytest.approx(sum(expected["waits"]))
    processing = hists[("processing", "default", "high")]
    assert processing.buckets == [(1.0, 2), (2.5, 3)] and processing.count == 5


def test_throughput_and_task_lists(conn):
    seed_history(conn)
    store = TaskStore(conn)
    points = monitoring.throughput(store, bucket_s=60, window_s=3600)
    assert len(points) == 61
    assert sum(p["done"] for p in points) == 4 and sum(p["dropped"] for p in points) == 2
    failures = monitoring.recent_failures(store)
    assert [f["last_error"] for f in failures] == ["ValueError: boom"]
    assert len(monitoring.dropped_tasks(store)) == 2


def test_monitor_role_can_read_the_views_and_nothing_else(conn):
    seed_history(conn)
    task_id = add_task(conn, seed_history(conn)["now"], priority=5, enqueued_ago=1)
    allowed = ("queue_stats", "worker_stats", "tier_slo")
    denied = (
        "SELECT * FROM angela_queue.tasks",
        "SELECT * FROM angela_queue.workers",
        "SELECT * FROM angela_queue.queues",
        "SELECT * FROM angela_queue.boost_rules",
        "SELECT * FROM angela_queue.alembic_version",
        "INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')",
        f"UPDATE angela_queue.tasks SET priority = 9 WHERE id = {task_id}",
        f"DELETE FROM angela_queue.tasks WHERE id = {task_id}",
        "SELECT * FROM angela_queue.task_requeue('failed')",
        "UPDATE angela_queue.queues SET paused = true",
    )
    conn.execute(f"SET ROLE {MONITOR}")
    try:
        for view in allowed:
            conn.execute(f"SELECT * FROM angela_queue.{view}").fetchall()
        for statement in denied:
            with pytest.raises(pg_errors.InsufficientPrivilege), conn.transaction():
                conn.execute(statement)
    finally:
        conn.execute("RESET ROLE")
    row = conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (MONITOR,))
    assert row.fetchone() == (False,)


def test_first_starts_1h_holds_each_task_first_started_in_the_last_hour_once(conn):
    """The view that replaced tasks_first_started_at_idx (migration 0009) must count what
    a plain filter on first_started_at counts, whatever state the task is in now."""
    rows = [
        # (status, ready, first started minutes ago, finished minutes ago)
        ("succeeded", True, 10, 9),
        ("failed", True, 50, 5),
        ("cancelled", True, 30, 20),
        ("running", True, 5, None),
        ("pending", True, 20, None),  # a retry, due
        ("pending", False, 40, None),  # a retry, scheduled
        ("succeeded", True, 90, 30),  # first started before the hour: not counted
        ("running", True, 120, None),  # idem
        ("pending", True, None, None),  # never started
        ("succeeded", True, 70, 50),  # idem, finished within the hour
    ]
    for status, ready, started_ago, finished_ago in rows:
        task_id = conn.execute(
            "INSERT INTO angela_queue.tasks (kind) VALUES ('a.b') RETURNING id"
        ).fetchone()[0]
        conn.execute(
            "UPDATE angela_queue.tasks SET status = %s, ready = %s,"
            " first_started_at = now() - make_interval(mins => %s),"
            " started_at = now() - make_interval(mins => %s),"
            " finished_at = now() - make_interval(mins => %s),"
            " worker_id = CASE WHEN %s = 'running' THEN 1 END WHERE id = %s",
            (status, ready, started_ago, started_ago, finished_ago, status, task_id),
        )
    expected = conn.execute(
        "SELECT count(*) FROM angela_queue.tasks WHERE first_started_at > now() - interval '1 hour'"
    ).fetchone()[0]
    assert expected == 6
    assert conn.execute("SELECT count(*) FROM angela_queue.first_starts_1h").fetchone()[0] == 6
    started = conn.execute("SELECT sum(started_1h) FROM angela_queue.queue_stats").fetchone()[0]
    assert started == 6
    assert conn.execute("SELECT sum(started_1h) FROM angela_queue.tier_slo").fetchone()[0] == 6
