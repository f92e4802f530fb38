"""Push at the SQL level (migration 0017): offers, their filling at commit, and its rules."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo

from angela_queue import errors
from angela_queue.push import channel, parse_push
from angela_queue.sql import QUERIES as Q
from angela_queue.store import AsyncTaskStore, TaskStore, insert_row
from angela_queue.store_errors import translate
from angela_queue.types import EnqueueRequest


def add_worker(conn: psycopg.Connection[Any], kinds: tuple[str, ...] = ("a.b",)) -> int:
    row = conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, kinds, concurrency, status)"
        " VALUES ('test', 1, '{default}', %s, 1, 'idle') RETURNING id",
        (list(kinds),),
    ).fetchone()
    assert row is not None
    return int(row[0])


def offer(
    conn: psycopg.Connection[Any],
    worker_id: int,
    offer_id: int = 1,
    kinds: tuple[str, ...] = ("a.b",),
    queues: tuple[str, ...] = ("default",),
) -> str:
    row = conn.execute(
        Q["queue_offer"],
        {
            "worker_id": worker_id,
            "offer_id": offer_id,
            "queues": list(queues),
            "kinds": list(kinds),
        },
    ).fetchone()
    assert row is not None
    return str(row[0])


@contextmanager
def listener(dsn: str, worker_id: int, lock: bool = True) -> Iterator[psycopg.Connection[Any]]:
    """The worker's listener session: its lock (unless told not to) and its channel."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if lock:
            got = conn.execute(Q["worker_hold_listener_lock"], {"worker_id": worker_id})
            assert got.fetchone() == (True,)
        conn.execute(f"LISTEN {channel(worker_id)}")
        yield conn


def pushes(conn: psycopg.Connection[Any]) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=0.3, stop_after=10)]


def insert(
    conn: psycopg.Connection[Any], kind: str = "a.b", priority: int = 5, **extra: Any
) -> int:
    columns = ", ".join(["kind", "priority", *extra])
    values = ", ".join(["%s"] * (2 + len(extra)))
    row = conn.execute(
        f"INSERT INTO angela_queue.tasks ({columns}) VALUES ({values}) RETURNING id",
        (kind, priority, *extra.values()),
    ).fetchone()
    assert row is not None
    return int(row[0])


def task(conn: psycopg.Connection[Any], task_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status, worker_id, attempts, started_at IS NOT NULL, first_started_at IS NOT NULL"
        " FROM angela_queue.tasks WHERE id = %s",
        (task_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def offers(conn: psycopg.Connection[Any]) -> list[tuple[int, int]]:
    return [tuple(r) for r in conn.execute(
        "SELECT worker_id, offer_id FROM angela_queue.worker_offers ORDER BY worker_id"
    )]  # fmt: skip


def test_an_offer_is_filled_by_the_next_commit_with_the_task_claimed_for_it(dsn, conn):
    me = add_worker(conn)
    with listener(dsn, me) as ears:
        assert offer(conn, me, offer_id=7) == "offered"
        assert offers(conn) == [(me, 7)]
        tid = insert(conn, payload=json.dumps({"n": 1}))
        (note,) = pushes(ears)
    push = parse_push(note, me)
    assert (push.offer_id, push.task_id) == (7, tid)
    # Claimed exactly as task_claim would: running under the worker, attempt 1, started.
    assert task(conn, tid) == ("running", me, 1, True, True)
    assert offers(conn) == []
    claimed = conn.execute(
        "SELECT id, queue, kind, payload, priority, boost, tier, attempts, max_attempts,"
        " enqueued_at, run_at, deadline_at, started_at, batch_key, dedupe_key, timeout_s"
        " FROM angela_queue.tasks WHERE id = %s",
        (tid,),
    ).fetchone()
    assert push.task is not None
    assert (
        push.task.id, push.task.queue, push.task.kind, push.task.payload, push.task.priority,
        push.task.boost, push.task.tier, push.task.attempts, push.task.max_attempts,
        push.task.enqueued_at, push.task.run_at, push.task.deadline_at, push.task.started_at,
        push.task.batch_key, push.task.dedupe_key, push.task.timeout_s,
    ) == claimed  # fmt: skip
    assert push.task.worker_id == me


def test_the_best_task_of_the_transaction_is_pushed_not_the_first(dsn, conn):
    me = add_worker(conn)
    with listener(dsn, me) as ears, psycopg.connect(dsn) as producer:
        assert offer(conn, me) == "offered"
        low = insert(producer, priority=2)
        high = insert(producer, priority=9)
        assert pushes(ears) == []  # nothing before the commit
        producer.commit()
        (note,) = pushes(ears)
    assert parse_push(note, me).task_id == high
    assert task(conn, high)[:2] == ("running", me)
    assert task(conn, low)[0] == "pending"


def test_a_pushed_task_starts_at_the_commit_not_at_its_transactions_start(dsn, conn):
    """now() in the producer's transaction is its start: the push dates the start with the
    commit's clock, so a task's wait (and the SLO views) count the time it was invisible."""
    me = add_worker(conn)
    with listener(dsn, me) as ears, psycopg.connect(dsn) as producer:
        assert offer(conn, me) == "offered"
        tid = insert(producer)
        time.sleep(0.3)
        producer.commit()
        assert len(pushes(ears)) == 1
    row = conn.execute(
        "SELECT extract(epoch FROM started_at - enqueued_at), started_at = first_started_at"
        " FROM angela_queue.tasks WHERE id = %s",
        (tid,),
    ).fetchone()
    assert row is not None and float(row[0]) >= 0.3 and row[1] is True


def test_a_waiting_task_makes_the_worker_claim_instead_of_offering(dsn, conn):
    me = add_worker(conn)
    insert(conn)
    assert offer(conn, me) == "due"
    assert offers(conn) == []
    # Due but not promoted yet counts too: the claim promotes it.
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now()")
    insert(conn)
    conn.execute("UPDATE angela_queue.tasks SET ready = false WHERE status = 'pending'")
    assert offer(conn, me) == "due"
    # Other kinds and paused queues do not.
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now()")
    insert(conn, kind="other.kind")
    assert offer(conn, me) == "offered"


def test_a_dead_worker_or_one_asked_to_stop_makes_no_offer(dsn, conn):
    me = add_worker(conn)
    conn.execute("UPDATE angela_queue.workers SET stop_requested = true WHERE id = %s", (me,))
    assert offer(conn, me) == "stopping"
    conn.execute("UPDATE angela_queue.workers SET status = 'dead' WHERE id = %s", (me,))
    assert offer(conn, me) == "stopping"
    assert offers(conn) == []


def test_no_push_to_a_worker_whose_listener_is_gone(dsn, conn):
    me = add_worker(conn)
    with listener(dsn, me, lock=False) as ears:
        assert offer(conn, me) == "offered"
        tid = insert(conn)
        assert pushes(ears) == []
    assert task(conn, tid)[0] == "pending"
    assert offers(conn) == []  # the stale offer is gone


@pytest.mark.parametrize(
    "change", ["status = 'dead'", "stop_requested = true"], ids=["dead", "asked-to-stop"]
)
def test_no_push_to_a_dead_worker_or_one_asked_to_stop(dsn, conn, change):
    me = add_worker(conn)
    with listener(dsn, me) as ears:
        assert offer(conn, me) == "offered"
        conn.execute(f"UPDATE angela_queue.workers SET {change} WHERE id = %s", (me,))
        tid = insert(conn)
        assert pushes(ears) == []
    assert task(conn, tid)[0] == "pending"
    assert offers(conn) == []


def test_other_kinds_scheduled_and_paused_tasks_leave_the_offer_standing(dsn, conn):
    me = add_worker(conn)
    conn.execute("INSERT INTO angela_queue.queues (name, paused) VALUES ('paused', true)")
    with listener(dsn, me) as ears:
        assert offer(conn, me, queues=("default", "paused")) == "offered"
        insert(conn, kind="other.kind")
        insert(conn, run_at="2100-01-01")
        conn.execute("SELECT angela_queue.queue_arm('paused')")
        paused = insert(conn, queue="paused")
        assert pushes(ears) == []
        assert task(conn, paused)[0] == "pending"
        assert offers(conn) == [(me, 1)]
        conn.execute("SELECT angela_queue.queue_arm('default')")  # as a woken worker re-arms
        tid = insert(conn)
        assert [parse_push(n, me).task_id for n in pushes(ears)] == [tid]


def test_each_offer_of_the_queue_gets_one_task_of_a_bulk_insert(dsn, conn):
    workers = [add_worker(conn) for _ in range(3)]
    with listener(dsn, workers[0]) as e0, listener(dsn, workers[1]) as e1:
        # workers[2] has no listener: its offer is dropped, not filled.
        for w in workers:
            assert offer(conn, w) == "offered"
        placed = TaskStore(conn).task_insert_many(
            [insert_row(EnqueueRequest("a.b", priority=p)) for p in (3, 9, 5, 7, 1)]
        )
        got = [
            parse_push(n, w).task_id
            for w, e in zip(workers[:2], (e0, e1), strict=True)
            for n in pushes(e)
        ]
    by_priority = {p: placed[i][0] for i, p in enumerate((3, 9, 5, 7, 1))}
    assert got == [by_priority[9], by_priority[7]]  # the oldest offer gets the best task
    assert offers(conn) == []
    running = conn.execute("SELECT count(*) FROM angela_queue.tasks WHERE status = 'running'")
    assert running.fetchone() == (2,)


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_producer_under_a_stricter_isolation_pushes_nothing_and_never_fails(dsn, conn, level):
    me = add_worker(conn)
    with listener(dsn, me) as ears, psycopg.connect(dsn) as producer:
        assert offer(conn, me) == "offered"
        producer.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
        tid = insert(producer)
        producer.commit()
        assert pushes(ears) == []
    assert task(conn, tid)[0] == "pending"
    assert offers(conn) == [(me, 1)]


def test_a_row_too_large_for_notify_is_announced_by_id(dsn, conn):
    me = add_worker(conn)
    with listener(dsn, me) as ears:
        assert offer(conn, me, offer_id=3) == "offered"
        tid = insert(conn, payload=json.dumps({"text": "x" * 9000}))
        (note,) = pushes(ears)
    assert note == f"3 {tid}"
    push = parse_push(note, me)
    assert (push.offer_id, push.task_id, push.task) == (3, tid, None)
    assert task(conn, tid)[:2] == ("running", me)


def test_withdrawing_returns_a_standing_offer_and_waits_for_one_being_filled(dsn, conn):
    me = add_worker(conn)
    assert offer(conn, me, offer_id=4) == "offered"
    assert conn.execute(Q["offer_withdraw"], {"worker_id": me}).fetchall() == [(4,)]
    assert conn.execute(Q["offer_withdraw"], {"worker_id": me}).fetchall() == []
    with listener(dsn, me), psycopg.connect(dsn) as producer:
        assert offer(conn, me, offer_id=5) == "offered"
        insert(producer)
        # The producer fills the offer as it commits, holding the offer's row lock: a
        # withdrawal meanwhile waits for it, then finds the offer gone.
        producer.execute("SET CONSTRAINTS ALL IMMEDIATE")  # fill now, commit later
        conn.execute("SET lock_timeout = '300ms'")
        with pytest.raises(pg_errors.LockNotAvailable):
            conn.execute(Q["offer_withdraw"], {"worker_id": me})
        conn.execute("SET lock_timeout = 0")
        producer.commit()
        assert conn.execute(Q["offer_withdraw"], {"worker_id": me}).fetchall() == []


def test_marking_a_worker_dead_takes_its_offer_away(dsn, conn):
    me, other = add_worker(conn), add_worker(conn)
    assert offer(conn, me) == "offered"
    assert offer(conn, other) == "offered"
    conn.execute(Q["worker_mark_dead"], {"id": me})
    assert offers(conn) == [(other, 1)]
    conn.execute("UPDATE angela_queue.workers SET heartbeat_at = now() - interval '1 h'")
    assert TaskStore(conn).worker_mark_dead_stale(30) == [other]
    assert offers(conn) == []


def test_adoption_returns_the_running_tasks_the_worker_does_not_know(dsn, conn):
    me = add_worker(conn)
    with listener(dsn, me):
        assert offer(conn, me) == "offered"
        pushed = insert(conn)
    known = insert(conn)
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'running', worker_id = %s, attempts = 1"
        " WHERE id = %s",
        (me, known),
    )
    rows = conn.execute(Q["task_adopt_unknown"], {"worker_id": me, "known_ids": [known]})
    assert [r[0] for r in rows] == [pushed]


def test_offering_on_a_deleted_queue_names_it(dsn, conn):
    """The worker stops with the deleted queue's name (exit 5), whether queue_offer finds
    the queue gone or the queue is deleted under it (the flag's foreign key)."""
    me = add_worker(conn)
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES ('other')")
    conn.execute("DELETE FROM angela_queue.queues WHERE name = 'other'")

    async def offer_on_other() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            await AsyncTaskStore(c).queue_offer(me, 1, ["default", "other"], ["a.b"])

    with pytest.raises(errors.UnknownQueue) as gone:
        asyncio.run(offer_on_other())
    assert gone.value.queue == "other"
    with pytest.raises(psycopg.Error) as fk:
        conn.execute("INSERT INTO angela_queue.queue_waiters VALUES ('other', true)")
    assert translate(fk.value).queue == "other"  # type: ignore[attr-defined]


def test_a_producer_role_fills_an_offer_it_cannot_read(dsn, conn):
    """The fill runs as the schema's owner: a least-privilege producer's insert pushes."""
    me = add_worker(conn)
    producer_dsn = make_conninfo(dsn, options="-c role=angela_queue_producer")
    with listener(dsn, me) as ears, psycopg.connect(producer_dsn, autocommit=True) as producer:
        assert offer(conn, me) == "offered"
        with pytest.raises(pg_errors.InsufficientPrivilege):
            producer.execute("SELECT * FROM angela_queue.worker_offers")
        producer.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
        (note,) = pushes(ears)
    assert task(conn, parse_push(note, me).task_id)[:2] == ("running", me)
