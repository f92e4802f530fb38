"""Bounded queues (DESIGN.md §3): the bound holds for every producer, overflow is visible."""

from __future__ import annotations

import multiprocessing
import time

import psycopg
import pytest

from angela_queue import App, QueueFull, Settings
from angela_queue.store import TaskStore


def bound(conn, name: str, max_size: int, drop_below: int = 5, policy: str = "drop_low"):
    store = TaskStore(conn)
    store.queue_upsert(name)
    store.queue_set_bound(
        name, max_size=max_size, drop_below_priority=drop_below, overflow_policy=policy
    )


def counts(conn, queue: str) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT status, count(*) FROM angela_queue.tasks WHERE queue = %s GROUP BY 1", (queue,)
        ).fetchall()
    )


def test_low_priority_overflow_is_dropped_row_by_row(conn):
    bound(conn, "small", 10)
    for _ in range(25):
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('a.b', 'small', 3)"
        )
    assert counts(conn, "small") == {"pending": 10, "dropped": 15}
    reason = conn.execute(
        "SELECT last_error FROM angela_queue.tasks WHERE status = 'dropped' LIMIT 1"
    ).fetchone()[0]
    assert reason == "dropped: queue small was full (10/10)"


def test_low_priority_overflow_is_dropped_in_one_statement(conn):
    bound(conn, "small", 10)
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, priority)"
        " SELECT 'a.b', 'small', 3 FROM generate_series(1, 25)"
    )
    assert counts(conn, "small") == {"pending": 10, "dropped": 15}


def test_higher_priority_insert_into_a_full_queue_fails_with_its_sqlstate(conn):
    bound(conn, "small", 2)
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, priority)"
        " SELECT 'a.b', 'small', 8 FROM generate_series(1, 2)"
    )
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('a.b', 'small', 8)"
        )
    assert exc.value.sqlstate == "AQ002"
    assert exc.value.diag.message_primary == 'queue "small" is full (max_size 2)'
    assert counts(conn, "small") == {"pending": 2}


def test_running_tasks_keep_their_place_and_finished_ones_free_it(conn):
    bound(conn, "small", 2)
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, priority)"
        " SELECT 'a.b', 'small', 8 FROM generate_series(1, 2)"
    )
    conn.execute("UPDATE angela_queue.tasks SET status = 'running' WHERE queue = 'small'")
    with pytest.raises(psycopg.Error):
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('a.b', 'small', 8)"
        )
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'succeeded' WHERE id = (SELECT min(id)"
        " FROM angela_queue.tasks WHERE queue = 'small')"
    )
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('a.b', 'small', 8)"
    )


def test_reject_policy_never_drops(conn):
    bound(conn, "strict", 1, policy="reject")
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('a.b', 'strict', 1)"
    )
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('a.b', 'strict', 1)"
        )
    assert exc.value.sqlstate == "AQ002"


def test_bounded_insert_needs_read_committed(dsn, conn):
    bound(conn, "small", 5)
    with psycopg.connect(dsn) as rr:
        rr.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        rr.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")  # unbounded: fine
        rr.commit()
        with pytest.raises(psycopg.Error) as exc:
            rr.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('a.b', 'small')")
    assert exc.value.sqlstate == "AQ005"


def _produce(dsn: str, n: int, priority: int, out: multiprocessing.Queue[tuple[int, int]]):
    ok = full = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(n):
            try:
                conn.execute(
                    "INSERT INTO angela_queue.tasks (kind, queue, priority)"
                    " VALUES ('a.b', 'shared', %s)",
                    (priority,),
                )
                ok += 1
            except psycopg.Error as exc:
                assert exc.sqlstate == "AQ002", exc
                full += 1
    out.put((ok, full))


@pytest.mark.parametrize("priority", [8, 3])
def test_concurrent_producers_never_exceed_the_bound(dsn, conn, priority):
    bound(conn, "shared", 50)
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[int, int]] = ctx.Queue()
    procs = [ctx.Process(target=_produce, args=(dsn, 20, priority, results)) for _ in range(8)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    accepted = sum(ok for ok, _ in got)
    refused = sum(full for _, full in got)
    if priority >= 5:  # refused with AQ002
        assert (accepted, refused) == (50, 110)
        assert counts(conn, "shared") == {"pending": 50}
    else:  # every insert succeeds, the overflow is recorded as dropped
        assert (accepted, refused) == (160, 0)
        assert counts(conn, "shared") == {"pending": 50, "dropped": 110}


def test_requeue_dropped_respects_the_bound(conn):
    bound(conn, "small", 10)
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, priority)"
        " SELECT 'a.b', 'small', 3 FROM generate_series(1, 25)"
    )
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'succeeded' WHERE id IN (SELECT id"
        " FROM angela_queue.tasks WHERE status = 'pending' ORDER BY id LIMIT 5)"
    )
    rows = TaskStore(conn).task_requeue("dropped", "small")
    assert rows == [{"queue_name": "small", "requeued": 5, "left_behind": 10}]
    assert counts(conn, "small") == {"pending": 10, "dropped": 10, "succeeded": 5}
    assert TaskStore(conn).task_requeue("dropped", "small")[0]["requeued"] == 0


def test_enqueue_many_reports_each_task(dsn, conn):
    bound(conn, "small", 5)
    app = App(Settings(dsn=dsn))
    items = [{"kind": "a.b", "queue": "small", "priority": p} for p in [8, 8, 8, 2, 2, 2, 2, 8, 8]]
    got = app.enqueue_many(items)
    app.close()
    assert [g.status for g in got] == ["queued"] * 5 + ["dropped"] * 2 + ["rejected"] * 2
    assert all(g.id is not None for g in got[:7]) and got[7].id is None
    assert counts(conn, "small") == {"pending": 5, "dropped": 2}
    # The overflow mode was local to the bulk enqueue: a later raw insert fails loudly.
    with pytest.raises(psycopg.Error):
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('a.b', 'small', 8)"
        )


def test_enqueue_raises_queue_full_after_the_wait(dsn, conn):
    bound(conn, "small", 1)
    app = App(Settings(dsn=dsn, enqueue_wait_s=1.0))
    app.enqueue("a.b", queue="small", priority=8)
    started = time.monotonic()
    with pytest.raises(QueueFull, match="small"):
        app.enqueue("a.b", queue="small", priority=8)
    waited = time.monotonic() - started
    app.close()
    assert 0.9 <= waited < 2.5


def test_enqueue_waits_for_room_and_keeps_the_callers_transaction(dsn, conn):
    bound(conn, "small", 1)
    conn.execute("CREATE TABLE side_effects (note text)")
    app = App(Settings(dsn=dsn, enqueue_wait_s=0.3))
    app.enqueue("a.b", queue="small", priority=8)
    with psycopg.connect(dsn) as caller:
        caller.execute("INSERT INTO side_effects VALUES ('mine')")
        with pytest.raises(QueueFull):
            app.enqueue("a.b", queue="small", priority=8, conn=caller)
        caller.commit()
    assert conn.execute("SELECT note FROM side_effects").fetchall() == [("mine",)]
    app.close()


def test_retry_and_cancel(conn):
    ids = [
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, max_attempts) VALUES ('a.b', 1) RETURNING id"
        ).fetchone()[0]
        for _ in range(3)
    ]
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'failed', attempts = 1,"
        " finished_at = now() WHERE id = %s",
        (ids[0],),
    )
    store = TaskStore(conn)
    assert store.task_requeue("failed", ids=[ids[0]])[0]["requeued"] == 1
    assert conn.execute(
        "SELECT status, max_attempts FROM angela_queue.tasks WHERE id = %s", (ids[0],)
    ).fetchone() == ("pending", 2)
    conn.execute("UPDATE angela_queue.tasks SET status = 'running' WHERE id = %s", (ids[1],))
    assert store.task_cancel_many(ids[1:]) == {ids[2]}
