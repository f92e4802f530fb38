"""Inserts notify a queue only while a worker waits for it (migration 0012)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from angela_queue.store import TaskStore, insert_row
from angela_queue.types import EnqueueRequest


def notified(listener: psycopg.Connection[Any]) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=0.3, stop_after=10)]


def arm(conn: psycopg.Connection[Any], queue: str = "default") -> None:
    conn.execute("SELECT angela_queue.queue_arm(%s)", (queue,))


def test_only_the_first_insert_after_a_worker_armed_notifies(dsn, conn):
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN angela_queue")
        conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
        assert notified(listener) == []  # nobody waits: no NOTIFY, no cluster-wide lock
        arm(conn)
        conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
        assert notified(listener) == ["default"]
        conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
        assert notified(listener) == []  # the first insert cleared the flag
        arm(conn)
        TaskStore(conn).task_insert_many([insert_row(EnqueueRequest("a.b")) for _ in range(3)])
        assert notified(listener) == ["default"]  # the bulk path too, once per statement


def test_scheduled_tasks_and_other_queues_do_not_notify(dsn, conn):
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES ('other')")
    arm(conn)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN angela_queue")
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('a.b', now() + interval '1 h')"
        )
        conn.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('a.b', 'other')")
        assert notified(listener) == []
        conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
        assert notified(listener) == ["default"]


def test_arming_waits_for_producers_that_have_not_committed(dsn, conn):
    """No lost wake-up: once the flag is set, every insert that did not notify is
    committed, so the claim that follows the arming sees it."""
    with psycopg.connect(dsn) as producer, psycopg.connect(dsn) as worker:
        producer.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")  # open
        worker.execute("SET lock_timeout = '300ms'")
        with pytest.raises(pg_errors.LockNotAvailable):
            arm(worker)
        worker.rollback()
        producer.commit()
        arm(worker)
        worker.commit()
    assert conn.execute(
        "SELECT waiting FROM angela_queue.queue_waiters WHERE queue = 'default'"
    ).fetchone() == (True,)


def test_a_producer_role_can_clear_the_flag(dsn, conn):
    from psycopg.conninfo import make_conninfo

    arm(conn)
    as_producer = make_conninfo(dsn, options="-c role=angela_queue_producer")
    with psycopg.connect(as_producer, autocommit=True) as producer:
        producer.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
    assert conn.execute(
        "SELECT waiting FROM angela_queue.queue_waiters WHERE queue = 'default'"
    ).fetchone() == (False,)
