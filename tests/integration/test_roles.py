"""The privilege matrix of the least-privilege roles (DESIGN.md §1, issue 11)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo

from angela_queue import App, Settings, errors
from angela_queue.store import TaskStore


def as_role(dsn: str, role: str) -> str:
    return make_conninfo(dsn, options=f"-c role={role}")


@pytest.fixture
def producer(dsn):
    with psycopg.connect(as_role(dsn, "angela_queue_producer"), autocommit=True) as conn:
        yield conn


def test_producer_enqueues_by_sql_and_through_the_client(dsn, conn, producer):
    producer.execute(
        "INSERT INTO angela_queue.tasks (kind, payload, priority)"
        " VALUES ('a.b', '{\"text\": \"urgent?\"}', 8)"
    )
    app = App(Settings(dsn=as_role(dsn, "angela_queue_producer")))
    one = app.enqueue("a.b", {"n": 1}, dedupe_key="k1")
    assert app.enqueue("a.b", {"n": 1}, dedupe_key="k1") == one
    many = app.enqueue_many([{"kind": "a.b", "payload": {"n": i}} for i in range(50)])
    app.close()
    assert {m.status for m in many} == {"queued"}
    status = producer.execute(
        "SELECT status, tier FROM angela_queue.tasks WHERE id = %s", (one,)
    ).fetchone()
    assert status == ("pending", "medium")
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0] == 52


def test_producer_respects_a_bounded_queue(conn, producer):
    TaskStore(conn).queue_upsert("small")
    TaskStore(conn).queue_set_bound("small", max_size=1)
    producer.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('a.b', 'small')")
    with pytest.raises(psycopg.Error) as exc:
        producer.execute(
            "INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('a.b', 'small', 8)"
        )
    assert exc.value.sqlstate == "AQ002"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE angela_queue.tasks SET priority = 10",
        "DELETE FROM angela_queue.tasks",
        "SELECT payload FROM angela_queue.tasks",
        "SELECT result, last_error FROM angela_queue.tasks",
        "INSERT INTO angela_queue.tasks (kind, status) VALUES ('a.b', 'running')",
        "INSERT INTO angela_queue.tasks (kind, attempts) VALUES ('a.b', 3)",
        "INSERT INTO angela_queue.tasks (kind, worker_id) VALUES ('a.b', 1)",
        "SELECT * FROM angela_queue.workers",
        "UPDATE angela_queue.queues SET max_size = 1000",
        "INSERT INTO angela_queue.boost_rules (name, predicate, boost) VALUES ('x', '$.a', 9)",
        "DELETE FROM angela_queue.rule_vars",
    ],
)
def test_producer_cannot_touch_what_is_not_its_own(conn, producer, statement):
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
    with pytest.raises(pg_errors.InsufficientPrivilege):
        producer.execute(statement)


def test_internal_columns_are_refused_or_normalised_for_any_role(conn):
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("INSERT INTO angela_queue.tasks (kind, status) VALUES ('a.b', 'running')")
    assert exc.value.sqlstate == "AQ006"
    row = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, attempts, worker_id, finished_at, result)"
        " VALUES ('a.b', 7, 99, now(), '{\"x\": 1}')"
        " RETURNING attempts, worker_id, finished_at, result"
    ).fetchone()
    assert row == (0, None, None, None)


def test_worker_role_claims_completes_and_registers(dsn, conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
    import asyncio

    from angela_queue.store import AsyncTaskStore, Outcome

    async def work() -> set[int]:
        async with await psycopg.AsyncConnection.connect(
            as_role(dsn, "angela_queue_worker"), autocommit=True
        ) as c:
            store = AsyncTaskStore(c)
            wid = await store.worker_register("h", 1, ["default"], ["a.b"], 1)
            (task,) = await store.task_claim(wid, ["default"], ["a.b"], 5)
            await store.task_promote_due()
            return await store.task_complete_many(wid, [Outcome(task.id, task.attempts, True)])

    assert len(asyncio.run(work())) == 1
    with psycopg.connect(as_role(dsn, "angela_queue_worker"), autocommit=True) as w:
        with pytest.raises(pg_errors.InsufficientPrivilege):
            w.execute("UPDATE angela_queue.queues SET paused = true")
        with pytest.raises(pg_errors.InsufficientPrivilege):
            w.execute("DELETE FROM angela_queue.boost_rules")


def test_client_reports_a_privilege_error_as_a_typed_error(dsn, conn):
    app = App(Settings(dsn=as_role(dsn, "angela_queue_producer")))
    with pytest.raises(errors.DatabaseError, match="permission denied"), app.connect() as c:
        TaskStore(c).queue_upsert("nope")
    app.close()


# -- the matrix: each role against each kind of statement ------------------------------------

PRODUCER = "angela_queue_producer"
WORKER = "angela_queue_worker"
MONITOR = "angela_queue_monitor"
TASK = "(SELECT min(id) FROM angela_queue.tasks)"
MATRIX = [
    # A producer inserts the public columns and reads a task's progress, nothing more.
    (PRODUCER, "INSERT INTO angela_queue.tasks (kind, payload, priority, queue, run_at,"
     " max_attempts, timeout_s, dedupe_key) VALUES ('a.b', '{}', 3, 'default', now(), 2, 5,"
     " 'k')", True),
    (PRODUCER, f"SELECT id, status, attempts, tier FROM angela_queue.tasks WHERE id = {TASK}",
     True),
    (PRODUCER, "SELECT nextval('angela_queue.tasks_id_seq')", True),
    *[
        (PRODUCER, f"INSERT INTO angela_queue.tasks (kind, {column}) VALUES ('a.b', {value})",
         False)
        for column, value in [
            ("result", "'{}'"), ("last_error", "'x'"), ("started_at", "now()"),
            ("finished_at", "now()"), ("first_started_at", "now()"), ("boost", "9"),
            ("tier", "'critical'"), ("deadline_at", "now()"), ("ready", "true"),
            ("aging_from", "now() - interval '10 years'"), ("status", "'pending'"),
        ]
    ],
    (PRODUCER, "SELECT * FROM angela_queue.tasks", False),
    (PRODUCER, "SELECT last_error FROM angela_queue.tasks", False),
    (PRODUCER, f"UPDATE angela_queue.tasks SET status = 'running' WHERE id = {TASK}", False),
    (PRODUCER, f"UPDATE angela_queue.tasks SET attempts = 0 WHERE id = {TASK}", False),
    (PRODUCER, f"UPDATE angela_queue.tasks SET worker_id = NULL WHERE id = {TASK}", False),
    (PRODUCER, "TRUNCATE angela_queue.tasks", False),
    (PRODUCER, "SELECT setval('angela_queue.tasks_id_seq', 1)", False),
    (PRODUCER, "SELECT * FROM angela_queue.task_requeue('failed')", False),
    (PRODUCER, "INSERT INTO angela_queue.workers (hostname, pid, queues) VALUES ('h', 1,"
     " '{default}')", False),
    (PRODUCER, "UPDATE angela_queue.workers SET stop_requested = true", False),
    (PRODUCER, "SELECT * FROM angela_queue.supervisor_decisions", False),
    (PRODUCER, "UPDATE angela_queue.tiers SET target_wait = interval '1 s'", False),
    (PRODUCER, "DROP TABLE angela_queue.tasks", False),
    (PRODUCER, "CREATE TABLE angela_queue.mine (x int)", False),
    (PRODUCER, "SELECT * FROM angela_queue.queue_stats", False),
    # Claim floors (migration 0014): lowered by the triggers, raised by workers; a floor set
    # too high would hide tasks, so nobody writes one directly.
    (PRODUCER, "UPDATE angela_queue.claim_floors SET floor = 'infinity'", False),
    (PRODUCER, "SELECT angela_queue.claim_floor_raise('default', '{a.b}')", False),
    (PRODUCER, "SELECT angela_queue.claim_floor_lower('default', 'a.b', 0)", False),
    (PRODUCER, "SELECT angela_queue.queue_offer(1, 1, '{default}', '{a.b}')", False),
    (PRODUCER, "SELECT * FROM angela_queue.worker_offers", False),
    (PRODUCER, "DELETE FROM angela_queue.worker_offers", False),
    # A worker claims, completes, reaps, prunes and registers; it never reconfigures or
    # reshapes the queue.
    (WORKER, f"UPDATE angela_queue.tasks SET status = 'running', attempts = attempts + 1"
     f" WHERE id = {TASK}", True),
    (WORKER, f"DELETE FROM angela_queue.tasks WHERE id = {TASK}", True),
    (WORKER, "INSERT INTO angela_queue.workers (hostname, pid, queues) VALUES ('h', 1,"
     " '{default}')", True),
    (WORKER, "SELECT * FROM angela_queue.tier_slo", True),
    (WORKER, "INSERT INTO angela_queue.tasks (kind) VALUES ('follow.up')", True),
    (WORKER, "UPDATE angela_queue.queues SET max_size = 1", False),
    (WORKER, "DELETE FROM angela_queue.queues", False),
    (WORKER, "INSERT INTO angela_queue.queues (name) VALUES ('mine')", False),
    (WORKER, "UPDATE angela_queue.tiers SET target_wait = interval '1 s'", False),
    (WORKER, "INSERT INTO angela_queue.rule_vars (name, value) VALUES ('x', '1')", False),
    (WORKER, "UPDATE angela_queue.alembic_version SET version_num = '0001'", False),
    (WORKER, "DELETE FROM angela_queue.workers", True),  # the cleaner's (migration 0013)
    (WORKER, "TRUNCATE angela_queue.tasks", False),
    (WORKER, "DROP TABLE angela_queue.tasks", False),
    (WORKER, "ALTER TABLE angela_queue.tasks DROP CONSTRAINT tasks_kind_check", False),
    (WORKER, "CREATE TABLE angela_queue.mine (x int)", False),
    (WORKER, "SELECT angela_queue.claim_floor_raise('default', '{a.b}')", True),
    (WORKER, "SELECT floor FROM angela_queue.claim_floors", True),
    (WORKER, "UPDATE angela_queue.claim_floors SET floor = 'infinity'", False),
    (WORKER, "INSERT INTO angela_queue.claim_floors VALUES ('default', 'a.b', 'infinity')", False),
    (WORKER, "SELECT angela_queue.claim_floor_lower('default', 'a.b', 0)", False),
    (WORKER, "SELECT angela_queue.queue_offer(1, 1, '{default}', '{a.b}')", True),
    (WORKER, "DELETE FROM angela_queue.worker_offers WHERE worker_id = 1", True),
    (WORKER, f"UPDATE angela_queue.tasks SET sort_key = sort_key - 1 WHERE id = {TASK}",
     True),  # the floor trigger writes as its owner
    # A monitor reads the views, and nothing else.
    (MONITOR, "SELECT * FROM angela_queue.queue_stats", True),
    (MONITOR, "SELECT * FROM angela_queue.worker_stats", True),
    (MONITOR, "SELECT * FROM angela_queue.tier_slo", True),
    (MONITOR, "SELECT * FROM angela_queue.unserved_kinds", True),
    (MONITOR, "SELECT id FROM angela_queue.tasks", False),
    (MONITOR, "SELECT * FROM angela_queue.supervisor_decisions", False),
    (MONITOR, "SELECT * FROM angela_queue.tiers", False),
    (MONITOR, "SELECT * FROM angela_queue.rule_vars", False),
    (MONITOR, "SELECT nextval('angela_queue.tasks_id_seq')", False),
    (MONITOR, "INSERT INTO angela_queue.workers (hostname, pid, queues) VALUES ('h', 1,"
     " '{default}')", False),
    (MONITOR, "CREATE VIEW angela_queue.mine AS SELECT 1", False),
    (MONITOR, "SELECT * FROM angela_queue.claim_floors", False),
    (MONITOR, "SELECT * FROM angela_queue.worker_offers", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("role", "statement", "allowed"),
    MATRIX,
    ids=[f"{r.removeprefix('angela_queue_')}-{'may' if a else 'not'}-{i}" for i, (r, _, a) in
         enumerate(MATRIX)],
)  # fmt: skip
def test_privilege_matrix(conn, role, statement, allowed):
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, 2)")
    # A failed task, so that task_requeue('failed') has something to write.
    conn.execute("UPDATE angela_queue.tasks SET status = 'failed', finished_at = now()"
                 " WHERE id = (SELECT max(id) FROM angela_queue.tasks)")  # fmt: skip
    with conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL ROLE {role}")
        if allowed:
            conn.execute(statement)
        else:
            with pytest.raises(pg_errors.InsufficientPrivilege):
                conn.execute(statement)


def seed_orphans(conn, n: int = 3) -> None:
    conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, status, heartbeat_at)"
        " VALUES ('h', 1, '{default}', 'active', now() - interval '1 hour')"
    )
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, %s)",
                 (n,))  # fmt: skip
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'running', attempts = 1, started_at = now(),"
        " worker_id = (SELECT max(id) FROM angela_queue.workers)"
    )


def test_the_reaper_runs_as_the_worker_role(dsn, conn):
    from angela_queue.reaper import Reaper, ReaperConfig

    seed_orphans(conn)
    with psycopg.connect(as_role(dsn, WORKER), autocommit=True) as w:
        reaped = Reaper(ReaperConfig(heartbeat_timeout_s=5)).run_once(TaskStore(w))
    assert len(reaped.retried) == 3 and len(reaped.dead_workers) == 1


def test_the_cleaner_runs_as_the_worker_role(dsn, conn):
    from angela_queue.cleaner import Cleaner, CleanerConfig

    seed_orphans(conn)
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() - interval '2 d'"
    )
    conn.execute(
        "UPDATE angela_queue.workers SET status = 'dead', heartbeat_at = now() - interval '2 d'"
    )
    with psycopg.connect(as_role(dsn, WORKER), autocommit=True) as w:
        cleaned = Cleaner(CleanerConfig(retention_s=86400)).run_once(TaskStore(w))
    assert (cleaned.tasks, cleaned.workers, cleaned.skipped) == (3, 1, False)
