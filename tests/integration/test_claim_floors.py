"""Claim floors (migration 0014): a claim starts its index walk at the first due task.

The invariant checked throughout: no due pending task lies below its (queue, kind) floor,
in any snapshot. A task below its floor would be skipped by every claim.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import time
from typing import Any

import psycopg
import pytest

from angela_queue.sql import QUERIES
from angela_queue.store import AsyncTaskStore, Outcome, TaskStore, claim_params
from tests.integration.test_claim import add, claim

BELOW_FLOOR = """
SELECT count(*) FROM angela_queue.tasks t
  JOIN angela_queue.claim_floors f USING (queue, kind)
 WHERE t.status = 'pending' AND t.ready AND t.sort_key < f.floor
"""


def raise_floors(conn: psycopg.Connection[Any], queues=("default",), kinds=("a.b",)) -> int:
    return TaskStore(conn).claim_floor_raise(queues, kinds, min_interval_s=0)


def scalar(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def floor(conn: psycopg.Connection[Any], kind: str = "a.b") -> Any:
    """The floor of ('default', kind), None without a row."""
    row = conn.execute(
        "SELECT floor FROM angela_queue.claim_floors WHERE queue = 'default' AND kind = %s",
        (kind,),
    ).fetchone()
    return None if row is None else float(row[0])


def sort_key(conn: psycopg.Connection[Any], task_id: int) -> float:
    return float(scalar(conn, "SELECT sort_key FROM angela_queue.tasks WHERE id = %s", [task_id]))


def below_floor(conn: psycopg.Connection[Any]) -> int:
    return int(scalar(conn, BELOW_FLOOR))


def finish(dsn: str, tasks, *, retry_in_s: float | None = None, worker_id: int = 1) -> None:
    async def go():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            store = AsyncTaskStore(c)
            if retry_in_s is None:
                await store.task_complete_many(
                    worker_id, [Outcome(t.id, t.attempts, True) for t in tasks]
                )
            else:
                await store.task_fail_many(
                    worker_id,
                    [
                        Outcome(t.id, t.attempts, False, error="x", retry_in_s=retry_in_s)
                        for t in tasks
                    ],
                )

    asyncio.run(go())


def test_the_floor_rises_to_the_first_due_task_and_to_infinity_when_none(dsn, conn):
    ids = [add(conn) for _ in range(3)]
    assert floor(conn) is None  # no row: no floor, every claim walks from the start
    assert raise_floors(conn) == 1
    assert floor(conn) == sort_key(conn, ids[0])
    finish(dsn, claim(dsn, 2))
    raise_floors(conn)
    assert floor(conn) == sort_key(conn, ids[2])
    finish(dsn, claim(dsn, 1))
    raise_floors(conn)
    assert floor(conn) == float("inf")
    assert raise_floors(conn) == 0  # nothing changed, nothing written


def test_a_task_inserted_below_the_floor_lowers_it_and_is_claimed_first(dsn, conn):
    add(conn, priority=1)
    raise_floors(conn)
    urgent = add(conn, priority=10)  # a higher priority: a lower sort_key
    assert floor(conn) == sort_key(conn, urgent)
    assert [t.id for t in claim(dsn, 1)] == [urgent]
    bulk = conn.execute(
        "SELECT id FROM angela_queue.task_insert_many(ARRAY['default'], ARRAY['a.b'],"
        " ARRAY['{}'::jsonb], ARRAY[10::smallint], NULL, ARRAY[now() - interval '1 hour'],"
        " NULL, NULL, NULL)"
    ).fetchone()[0]
    assert floor(conn) == sort_key(conn, bulk)  # the bulk path too
    assert below_floor(conn) == 0


def test_every_way_back_to_due_and_pending_lowers_the_floor(dsn, conn):
    """Retry without delay, promotion of a due retry, reclaim of a dead worker's task,
    release of an unknown claim and a rerank all put old sort_keys back in the index."""
    old = add(conn, minutes_ago=30)
    for _ in range(3):
        add(conn)
    wid = conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, kinds, concurrency, status)"
        " VALUES ('h', 1, '{default}', '{a.b}', 1, 'active') RETURNING id"
    ).fetchone()[0]

    def claimed_old_then_raised():
        got = claim(dsn, 1, worker_id=wid)
        assert [t.id for t in got] == [old]
        raise_floors(conn)
        assert floor(conn) > sort_key(conn, old)
        return got

    # retry with no delay: pending and due in the same statement
    finish(dsn, claimed_old_then_raised(), retry_in_s=0, worker_id=wid)
    assert floor(conn) == sort_key(conn, old) and below_floor(conn) == 0
    # retry with a delay, then promoted by a claim once due
    finish(dsn, claimed_old_then_raised(), retry_in_s=0.05, worker_id=wid)
    assert below_floor(conn) == 0 and floor(conn) > sort_key(conn, old)
    time.sleep(0.1)
    claim(dsn, 0, worker_id=wid)  # the claim's promotion step
    assert floor(conn) == sort_key(conn, old) and below_floor(conn) == 0
    # reclaimed from a dead worker
    claimed_old_then_raised()
    conn.execute("UPDATE angela_queue.workers SET status = 'dead' WHERE id = %s", (wid,))
    assert [r.task_id for r in TaskStore(conn).task_reclaim_orphaned(10)] == [old]
    assert floor(conn) == sort_key(conn, old) and below_floor(conn) == 0
    conn.execute("UPDATE angela_queue.workers SET status = 'active' WHERE id = %s", (wid,))
    # released after a lost claim reply
    claimed_old_then_raised()
    conn.execute(QUERIES["task_release_unknown"], {"worker_id": wid, "known_ids": []})
    assert floor(conn) == sort_key(conn, old) and below_floor(conn) == 0
    # a queue's aging rate changes: every pending sort_key is computed again
    raise_floors(conn)
    conn.execute(
        "UPDATE angela_queue.queues SET aging_rate = aging_rate / 2 WHERE name = 'default'"
    )
    assert below_floor(conn) == 0
    assert [t.id for t in claim(dsn, 1)] == [old]


def test_a_raise_waits_for_no_producer_and_skips_a_queue_with_one_in_flight(dsn, conn):
    first = add(conn)
    with psycopg.connect(dsn) as producer:  # a transaction left open after an insert
        producer.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('a.b', 10)")
        began = time.monotonic()
        assert raise_floors(conn) == 0
        assert time.monotonic() - began < 1
        assert floor(conn) is None
    assert raise_floors(conn) == 1
    assert floor(conn) < sort_key(conn, first)  # the producer's priority-10 task


def test_a_producer_held_back_by_a_raise_lowers_the_floor_the_raise_set(dsn, conn):
    """The producer's row is written, but its trigger waits for the raise's lock; once the
    raise commits, the trigger sees the raised floor and lowers it to the new row."""
    add(conn, priority=1)
    with psycopg.connect(dsn) as raiser:
        raise_floors(raiser)  # holds the queue's exclusive lock until it commits
        inserted: list[int] = []

        def produce() -> None:
            with psycopg.connect(dsn, autocommit=True) as p:
                inserted.append(add(p, priority=10))

        t = threading.Thread(target=produce)
        t.start()
        time.sleep(0.3)
        assert inserted == []  # waiting for the lock
        raiser.commit()
        t.join(5)
    assert floor(conn) == sort_key(conn, inserted[0])
    assert below_floor(conn) == 0


def test_a_repeatable_read_producer_behind_a_raise_must_retry(dsn, conn):
    add(conn, priority=1)
    raise_floors(conn)
    with psycopg.connect(dsn) as rr:
        rr.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        rr.execute("SELECT 1")  # the snapshot is taken
        finish(dsn, claim(dsn, 1))
        add(conn, priority=1)
        raise_floors(conn)  # after the snapshot: the floor the producer sees is stale
        with pytest.raises(psycopg.errors.SerializationFailure):
            rr.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('a.b', 10)")
        rr.rollback()
        urgent = scalar(
            rr, "INSERT INTO angela_queue.tasks (kind, priority) VALUES ('a.b', 10) RETURNING id"
        )
        rr.commit()
    assert floor(conn) == sort_key(conn, urgent) and below_floor(conn) == 0


def test_a_repeatable_read_producer_notifies_even_when_no_worker_waits(dsn, conn):
    """Its snapshot may predate a worker's arming; a lost wake-up would cost a poll."""
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN angela_queue")
        with psycopg.connect(dsn) as rr:
            rr.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            rr.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")
            rr.commit()
        assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == ["default"]
        conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")  # read committed
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []


def test_a_claim_starts_at_the_floor_past_entries_a_long_transaction_keeps(dsn, conn):
    """With a snapshot held open, claimed tasks leave dead index entries that nothing can
    remove; with its floor the claim reads a handful of pages instead of all of theirs."""
    with psycopg.connect(dsn) as holder:
        holder.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        holder.execute("SELECT count(*) FROM angela_queue.tasks")  # the snapshot is held
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, 3000)"
        )
        while got := claim(dsn, 500):
            finish(dsn, got)
        conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('a.b')")

        def claim_index_buffers() -> int:
            """Pages the claim's scan of tasks_claim_idx read (the index's and the heap's)."""
            with psycopg.connect(dsn) as c:
                plan = scalar(
                    c,
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES["task_claim"],
                    claim_params(0, ["default"], ["a.b"], 1, None),
                )
                c.rollback()
            nodes = [plan[0]["Plan"]]
            while nodes:
                node = nodes.pop()
                if node.get("Index Name") == "tasks_claim_idx":
                    return int(node["Shared Hit Blocks"]) + int(node["Shared Read Blocks"])
                nodes.extend(node.get("Plans", []))
            raise AssertionError("the claim does not scan tasks_claim_idx")

        without = claim_index_buffers()
        raise_floors(conn)
        with_floor = claim_index_buffers()
    assert without > 50, without  # every heap page of the 3,000 dead rows, and the index
    assert with_floor < 10, with_floor


def _producer(dsn: str, seed: int, n: int) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as c:
        for _ in range(n):
            c.execute(
                "INSERT INTO angela_queue.tasks (kind, priority, enqueued_at, max_attempts)"
                " VALUES (%s, %s, now() - make_interval(mins => %s), 1000)",
                (rng.choice(["a.b", "c.d"]), rng.randint(1, 10), rng.randint(0, 60)),
            )


def _claimer(dsn: str, seed: int, worker_id: int, stop_at: float) -> None:
    rng = random.Random(seed)

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            store = AsyncTaskStore(c)
            while time.monotonic() < stop_at:
                tasks = await store.task_claim(worker_id, ["default"], ["a.b", "c.d"], 5)
                done = [Outcome(t.id, t.attempts, True) for t in tasks if rng.random() < 0.7]
                again = [
                    Outcome(t.id, t.attempts, False, error="x", retry_in_s=rng.choice([0, 0.05]))
                    for t in tasks
                    if t.id not in {o.task_id for o in done}
                ]
                await store.task_complete_many(worker_id, done)
                await store.task_fail_many(worker_id, again)

    asyncio.run(go())


def test_the_invariant_holds_in_every_snapshot_under_concurrent_producers_and_claims(dsn, conn):
    """Processes insert at random priorities and ages, claim, complete, retry at once or
    after a delay, while floors are raised in a loop and the invariant is read throughout."""
    wid = conn.execute(
        "INSERT INTO angela_queue.workers (hostname, pid, queues, kinds, concurrency, status)"
        " VALUES ('h', 1, '{default}', '{a.b,c.d}', 1, 'active') RETURNING id"
    ).fetchone()[0]
    ctx = multiprocessing.get_context("spawn")
    stop_at = time.monotonic() + 6
    procs = [ctx.Process(target=_producer, args=(dsn, i, 400)) for i in range(2)]
    procs += [ctx.Process(target=_claimer, args=(dsn, 10 + i, wid, stop_at)) for i in range(2)]
    for p in procs:
        p.start()
    raises = violations = 0
    while any(p.is_alive() for p in procs):
        raises += raise_floors(conn, kinds=("a.b", "c.d"))
        violations += below_floor(conn)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert raises > 10
    assert violations == 0
    time.sleep(0.1)  # the last delayed retries fall due
    while got := claim(dsn, 500, kinds=("a.b", "c.d"), worker_id=wid):
        finish(dsn, got, worker_id=wid)
    left = conn.execute(
        "SELECT count(*) FROM angela_queue.tasks WHERE status NOT IN ('succeeded')"
    ).fetchone()[0]
    assert left == 0  # no task was left below a floor, out of every claim's reach


def test_a_floor_is_raised_at_most_once_per_interval(dsn, conn):
    """Each raise leaves a row version a long transaction keeps: heartbeats of many workers
    must not write a floor many times a second."""
    ids = [add(conn) for _ in range(3)]
    store = TaskStore(conn)
    assert store.claim_floor_raise(["default"], ["a.b"], min_interval_s=60) == 1  # the first
    finish(dsn, claim(dsn, 1))
    assert store.claim_floor_raise(["default"], ["a.b"], min_interval_s=60) == 0
    assert floor(conn) == sort_key(conn, ids[0])  # stale, still correct: nothing lies below
    assert store.claim_floor_raise(["default"], ["a.b"], min_interval_s=0) == 1
    assert floor(conn) == sort_key(conn, ids[1])
