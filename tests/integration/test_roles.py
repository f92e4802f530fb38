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
