"""The reaper on fabricated state: dead, missing and wedged workers, by the database clock."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta

import psycopg

from angela_queue.reaper import Reaper, ReaperConfig
from angela_queue.sql import QUERIES
from angela_queue.store import AsyncTaskStore, Outcome, TaskStore
from tests.integration.test_claim import add, claim, walk

TIMEOUT = 30.0


def add_worker(conn, heartbeat_age_s: float = 0.0, status: str = "active") -> int:
    return conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, status, heartbeat_at)"
        " VALUES ('h', 1, '{default}', %s, now() - make_interval(secs => %s)) RETURNING id",
        (status, heartbeat_age_s),
    ).fetchone()[0]


def add_running(
    conn,
    worker_id: int | None,
    *,
    attempts: int = 1,
    max_attempts: int = 5,
    started_ago_s: float = 1.0,
    timeout_s: int = 60,
    queue: str = "default",
) -> int:
    task_id = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, max_attempts, timeout_s)"
        " VALUES ('a.b', %s, %s, %s) RETURNING id",
        (queue, max_attempts, timeout_s),
    ).fetchone()[0]
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'running', attempts = %s, worker_id = %s,"
        " started_at = now() - make_interval(secs => %s) WHERE id = %s",
        (attempts, worker_id, started_ago_s, task_id),
    )
    return task_id


def task(conn, task_id: int, columns: str = "status, attempts, worker_id"):
    return conn.execute(
        f"SELECT {columns} FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()


def reap(conn, **config):
    return Reaper(ReaperConfig(heartbeat_timeout_s=TIMEOUT, **config)).run_once(TaskStore(conn))


def test_reaper_marks_silent_workers_dead_and_requeues_their_tasks(conn):
    silent = add_worker(conn, heartbeat_age_s=TIMEOUT + 5)
    alive = add_worker(conn, heartbeat_age_s=TIMEOUT - 5)
    lost = add_running(conn, silent, attempts=2)
    kept = add_running(conn, alive)
    before = conn.execute(
        "SELECT heartbeat_at FROM angela_queue.workers WHERE id = %s", (silent,)
    ).fetchone()[0]

    result = reap(conn)

    assert result.dead_workers == (silent,)
    assert result.retried == [lost] and result.failed == []
    status, attempts, worker_id = task(conn, lost)
    assert (status, attempts, worker_id) == ("pending", 2, silent)  # the attempt stays counted
    ready, error = task(conn, lost, "ready, last_error")
    assert ready is True
    assert error.startswith(f"Reclaimed: worker {silent} was lost") and "2/5" in error
    assert task(conn, kept) == ("running", 1, alive)
    rows = dict(conn.execute("SELECT id, status FROM angela_queue.workers").fetchall())
    assert rows == {silent: "dead", alive: "active"}
    # The last sign of life is kept: it says when the worker went silent.
    assert (
        conn.execute(
            "SELECT heartbeat_at FROM angela_queue.workers WHERE id = %s", (silent,)
        ).fetchone()[0]
        == before
    )


def test_reaper_fails_tasks_whose_attempts_are_used_up(conn):
    silent = add_worker(conn, heartbeat_age_s=3600)
    last = add_running(conn, silent, attempts=3, max_attempts=3)
    more = add_running(conn, silent, attempts=2, max_attempts=3)

    result = reap(conn)

    assert result.failed == [last] and result.retried == [more]
    status, finished = task(conn, last, "status, finished_at IS NOT NULL")
    assert (status, finished) == ("failed", True)
    assert task(conn, more, "status, finished_at IS NULL") == ("pending", True)


def test_reaper_reclaims_tasks_of_dead_and_missing_workers(conn):
    dead = add_worker(conn, heartbeat_age_s=0, status="dead")  # e.g. a graceful stop that
    on_dead = add_running(conn, dead)  # could not write its outcomes
    on_missing = add_running(conn, 987654)
    on_nobody = add_running(conn, None)

    result = reap(conn)

    assert result.dead_workers == ()
    assert sorted(result.retried) == sorted([on_dead, on_missing, on_nobody])
    for task_id in (on_dead, on_missing, on_nobody):
        assert task(conn, task_id)[0] == "pending"


def test_reaper_reclaims_overdue_tasks_of_a_live_but_wedged_worker(conn):
    alive = add_worker(conn)
    # timeout_s 60 + heartbeat timeout 30 = 90 s: one past it, one not yet.
    wedged = add_running(conn, alive, started_ago_s=95, timeout_s=60)
    slow = add_running(conn, alive, started_ago_s=85, timeout_s=60)

    result = reap(conn)

    assert result.dead_workers == ()
    assert result.retried == [wedged] and result.overdue == (wedged,)
    assert "wedged" in task(conn, wedged, "last_error")[0]
    assert task(conn, slow)[0] == "running"
    assert conn.execute("SELECT status FROM angela_queue.workers").fetchone()[0] == "active"


def test_reaper_leaves_live_work_alone(conn):
    alive = add_worker(conn, heartbeat_age_s=1)
    running = add_running(conn, alive, started_ago_s=50)
    result = reap(conn)
    assert not result.changed
    assert result.summary() == "nothing to reap"
    assert task(conn, running)[0] == "running"


def test_reaper_compares_with_the_database_clock_or_an_injected_now(conn):
    alive = add_worker(conn, heartbeat_age_s=1)
    running = add_running(conn, alive)
    assert not reap(conn).changed
    db_now = conn.execute("SELECT now()").fetchone()[0]
    later = Reaper(ReaperConfig(heartbeat_timeout_s=TIMEOUT)).run_once(
        TaskStore(conn), now=db_now + timedelta(hours=1)
    )
    assert later.dead_workers == (alive,) and later.retried == [running]


def test_reaper_notifies_each_queue_of_requeued_tasks_once(dsn, conn):
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES ('other'), ('exhausted_only')")
    silent = add_worker(conn, heartbeat_age_s=3600)
    for _ in range(3):
        add_running(conn, silent)
    add_running(conn, silent, queue="other")
    add_running(conn, silent, attempts=5, max_attempts=5, queue="exhausted_only")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN angela_queue")
        reap(conn)
        notes = sorted(n.payload for n in listener.notifies(timeout=0.5))
    assert notes == ["default", "other"]


def test_reaper_works_through_many_batches(conn):
    silent = add_worker(conn, heartbeat_age_s=3600)
    ids = [add_running(conn, silent) for _ in range(30)]
    result = reap(conn, batch_size=7)
    assert sorted(result.retried) == ids


def test_late_completion_of_a_reaped_worker_is_a_no_op(dsn, conn):
    first = add_worker(conn)
    task_id = add(conn)
    (old,) = claim(dsn, 1, worker_id=first)
    conn.execute(
        "UPDATE angela_queue.workers SET heartbeat_at = now() - interval '1 hour' WHERE id = %s",
        (first,),
    )
    assert reap(conn).retried == [task_id]
    second = add_worker(conn)
    (rerun,) = claim(dsn, 1, worker_id=second)
    assert rerun.attempts == 2

    async def complete(worker_id, attempts, by):
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            store = AsyncTaskStore(c)
            return await store.task_complete_many(
                worker_id, [Outcome(task_id, attempts, True, result={"by": by})]
            )

    assert asyncio.run(complete(first, old.attempts, "zombie")) == set()
    assert asyncio.run(complete(second, rerun.attempts, "rerun")) == {task_id}
    assert asyncio.run(complete(first, old.attempts, "zombie")) == set()
    assert task(conn, task_id, "status, result, worker_id") == (
        "succeeded",
        {"by": "rerun"},
        second,
    )


def test_a_worker_declared_dead_claims_nothing(dsn, conn):
    add(conn)
    dead = add_worker(conn, status="dead")
    assert claim(dsn, 5, worker_id=dead) == []
    alive = add_worker(conn)
    assert len(claim(dsn, 5, worker_id=alive)) == 1


AUDIT = """
CREATE TABLE reclaim_audit (task_id bigint NOT NULL, attempts int NOT NULL);
CREATE FUNCTION audit_reclaim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'running' AND NEW.status <> 'running' AND NEW.last_error LIKE 'Reclaimed%' THEN
        INSERT INTO reclaim_audit VALUES (NEW.id, NEW.attempts);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_reclaim AFTER UPDATE ON angela_queue.tasks
    FOR EACH ROW EXECUTE FUNCTION audit_reclaim();
"""


def test_concurrent_reapers_reclaim_each_task_exactly_once(dsn, conn):
    conn.execute(AUDIT)
    silent = [add_worker(conn, heartbeat_age_s=3600) for _ in range(20)]
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, max_attempts)"
        " SELECT 'a.b', 10 FROM generate_series(1, 1000)"
    )
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'running', attempts = 1, started_at = now(),"
        " worker_id = (%s::bigint[])[1 + id %% 20]",
        (silent,),
    )
    live = add_worker(conn)
    results = []
    errors: list[BaseException] = []
    start = threading.Barrier(9)
    done = threading.Event()

    def reaper() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                r = Reaper(ReaperConfig(heartbeat_timeout_s=TIMEOUT, batch_size=37))
                start.wait()
                for _ in range(15):
                    results.append(r.run_once(TaskStore(c)))
        except BaseException as exc:
            errors.append(exc)

    def claimer() -> None:
        # Requeued tasks are claimed again at once by a live worker: a reaper that
        # reclaimed from a stale snapshot would take them back a second time.
        with psycopg.connect(dsn, autocommit=True) as c:
            start.wait()
            while not done.is_set():
                c.execute(
                    "UPDATE angela_queue.tasks SET status = 'running', worker_id = %s,"
                    " attempts = attempts + 1, started_at = now()"
                    " WHERE id IN (SELECT id FROM angela_queue.tasks WHERE status = 'pending'"
                    " LIMIT 50 FOR UPDATE SKIP LOCKED)",
                    (live,),
                )

    threads = [threading.Thread(target=reaper) for _ in range(8)]
    side = threading.Thread(target=claimer)
    for t in [*threads, side]:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    side.join(10)
    assert not errors, errors

    reclaimed = [r.task_id for res in results for r in res.reclaimed]
    assert len(reclaimed) == 1000 and len(set(reclaimed)) == 1000
    marked = [w for res in results for w in res.dead_workers]
    assert sorted(marked) == sorted(silent)
    audit = conn.execute(
        "SELECT count(*), count(DISTINCT task_id), max(attempts) FROM reclaim_audit"
    ).fetchone()
    assert audit == (1000, 1000, 1)
    # Every task is now either pending again or running under the live worker, attempt 2.
    left = dict(
        conn.execute(
            "SELECT status || ':' || coalesce(worker_id::text, '-'), count(*)"
            " FROM angela_queue.tasks GROUP BY 1"
        ).fetchall()
    )
    assert sum(left.values()) == 1000
    assert set(left) <= {f"running:{live}", *(f"pending:{w}" for w in silent)}
    assert conn.execute("SELECT max(attempts) FROM angela_queue.tasks").fetchone()[0] <= 2


def test_release_unknown_puts_back_lost_claims_uncounted(dsn, conn):
    me = add_worker(conn)
    known = add_running(conn, me, attempts=1)
    lost = add_running(conn, me, attempts=3)
    other = add_running(conn, add_worker(conn))

    async def release():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            return await AsyncTaskStore(c).task_release_unknown(me, [known])

    assert asyncio.run(release()) == [lost]
    assert task(conn, lost)[:2] == ("pending", 2)
    assert task(conn, known)[0] == "running" and task(conn, other)[0] == "running"


def test_worker_stats_view_has_its_documented_columns(conn):
    alive = add_worker(conn, heartbeat_age_s=2)
    add_running(conn, alive)
    add_running(conn, alive)
    conn.execute(
        "UPDATE angela_queue.workers SET tasks_completed = 7, tasks_failed = 1,"
        " avg_processing_ms = 12.5, current_task_id = 42, last_active_at = now()"
        " WHERE id = %s",
        (alive,),
    )
    cur = conn.execute("SELECT * FROM angela_queue.worker_stats")
    columns = [c.name for c in cur.description]
    assert columns[:12] == [
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
    row = dict(zip(columns, cur.fetchone(), strict=True))
    assert row["id"] == alive and row["queues"] == ["default"]
    assert 1.5 < row["heartbeat_age_s"] < 10
    assert (row["tasks_completed"], row["tasks_failed"], row["avg_processing_ms"]) == (7, 1, 12.5)
    assert row["current_task_id"] == 42 and row["tasks_running"] == 2


def test_reaper_queries_never_scan_finished_tasks(conn):
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, 20000)"
    )
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now()")
    silent = add_worker(conn, heartbeat_age_s=3600)
    for _ in range(5):
        add_running(conn, silent)
    conn.execute("ANALYZE angela_queue.tasks")
    for name, params in [
        ("task_reclaim_orphaned", {"limit": 1000, "now": None}),
        ("task_reclaim_overdue", {"grace_s": 30.0, "limit": 1000, "now": None}),
    ]:
        plan = conn.execute(b"EXPLAIN (FORMAT JSON) " + QUERIES[name].encode(), params).fetchone()[
            0
        ]
        root = plan[0]["Plan"] if isinstance(plan, list) else json.loads(plan)[0]["Plan"]
        scans = [n for n, _ in walk(root, []) if n.get("Relation Name") == "tasks"]
        assert scans, name
        for node in scans:
            assert node["Node Type"] != "Seq Scan", (name, node)
