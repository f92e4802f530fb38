"""Claiming: effective-priority order with aging, FIFO ties, SKIP LOCKED, index not sort."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from psycopg import sql

from angela_queue import errors
from angela_queue.sql import QUERIES
from angela_queue.store import AsyncTaskStore, Outcome, claim_params


def claim(dsn: str, limit: int, *, queues=("default",), kinds=("a.b",), worker_id=1):
    async def go():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            return await AsyncTaskStore(c).task_claim(worker_id, queues, kinds, limit)

    return asyncio.run(go())


def add(conn, priority=5, minutes_ago=0.0, kind="a.b", queue="default") -> int:
    return conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, priority, enqueued_at)"
        " VALUES (%s, %s, %s, now() - make_interval(secs => %s)) RETURNING id",
        (kind, queue, priority, minutes_ago * 60),
    ).fetchone()[0]


def test_aged_low_priority_task_runs_before_a_fresh_high_one(dsn, conn):
    fresh_nine = add(conn, priority=9)
    old_one = add(conn, priority=1, minutes_ago=40)  # 1 + 0.3 × 40 = 13 > 9
    got = claim(dsn, 2)
    assert [t.id for t in got] == [old_one, fresh_nine]
    assert abs(got[0].effective_priority - 13.0) < 0.05
    assert abs(got[1].effective_priority - 9.0) < 0.05


def test_claim_follows_effective_priority(dsn, conn):
    ids = {
        "p5_fresh": add(conn, 5),
        "p8_fresh": add(conn, 8),
        "p3_20min": add(conn, 3, 20),  # 3 + 6 = 9
        "p6_5min": add(conn, 6, 5),  # 6 + 1.5 = 7.5
        "p10": add(conn, 10),
    }
    got = [t.id for t in claim(dsn, 5)]
    assert got == [ids["p10"], ids["p3_20min"], ids["p8_fresh"], ids["p6_5min"], ids["p5_fresh"]]


def test_equal_priority_is_first_in_first_out(dsn, conn):
    ids = [add(conn, 5) for _ in range(10)]
    assert [t.id for t in claim(dsn, 10)] == ids


def test_boost_counts_in_the_order(dsn, conn):
    # The seeded rule "emotional" adds 2.
    plain = add(conn, 6)
    boosted = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, priority, payload)"
        " VALUES ('a.b', 5, '{\"emotional\": true}') RETURNING id"
    ).fetchone()[0]
    got = claim(dsn, 2)
    assert [t.id for t in got] == [boosted, plain]
    assert (got[0].boost, got[0].tier) == (2, "high")


def test_queues_with_different_aging_rates_merge_by_effective_priority(dsn, conn):
    conn.execute("INSERT INTO angela_queue.queues (name, aging_rate) VALUES ('fast', 1.0)")
    slow = add(conn, 5, 10, queue="default")  # 5 + 0.3 × 10 = 8
    fast = add(conn, 5, 10, queue="fast")  # 5 + 1.0 × 10 = 15
    top = add(conn, 9, 0, queue="default")  # 9
    got = claim(dsn, 3, queues=("default", "fast"))
    assert [t.id for t in got] == [fast, top, slow]


def test_claim_marks_rows_running_and_counts_the_attempt(dsn, conn):
    task_id = add(conn)
    (task,) = claim(dsn, 5, worker_id=42)
    assert task.id == task_id and task.attempts == 1 and task.worker_id == 42
    status, started = conn.execute(
        "SELECT status, started_at IS NOT NULL FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()
    assert (status, started) == ("running", True)
    assert claim(dsn, 5) == []


def test_claim_takes_only_served_kinds_and_queues_and_respects_pause(dsn, conn):
    add(conn, kind="other.kind")
    conn.execute("INSERT INTO angela_queue.queues (name, paused) VALUES ('held', true)")
    add(conn, queue="held")
    assert claim(dsn, 5, queues=("default", "held")) == []


def test_claim_skips_rows_locked_by_another_claim(dsn, conn):
    for _ in range(10):
        add(conn)

    async def go():
        a = await psycopg.AsyncConnection.connect(dsn)
        b = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            first = await AsyncTaskStore(a).task_claim(1, ["default"], ["a.b"], 4)  # open tx
            second = await AsyncTaskStore(b).task_claim(2, ["default"], ["a.b"], 10)
            await a.commit()
            return first, second
        finally:
            await a.close()
            await b.close()

    first, second = asyncio.run(go())
    assert len(first) == 4 and len(second) == 6
    assert not {t.id for t in first} & {t.id for t in second}


def test_scheduled_task_is_claimed_only_after_promotion_when_due(dsn, conn):
    soon = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, run_at) VALUES"
        " ('a.b', now() + interval '300 milliseconds') RETURNING id"
    ).fetchone()[0]
    assert claim(dsn, 5) == []

    async def promote():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            return await AsyncTaskStore(c).task_promote_due()

    assert asyncio.run(promote()) == []
    asyncio.run(asyncio.sleep(0.4))
    assert asyncio.run(promote()) == ["default"]
    assert [t.id for t in claim(dsn, 5)] == [soon]


def test_late_completion_after_a_reclaim_is_a_no_op(dsn, conn):
    task_id = add(conn)
    (task,) = claim(dsn, 1, worker_id=1)
    # The task is presumed lost and re-run by worker 2 (attempt 2).
    conn.execute("UPDATE angela_queue.tasks SET status = 'pending' WHERE id = %s", (task_id,))
    (rerun,) = claim(dsn, 1, worker_id=2)
    assert rerun.attempts == 2

    async def complete(worker_id, attempts):
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            return await AsyncTaskStore(c).task_complete_many(
                worker_id, [Outcome(task_id, attempts, True, result={"by": worker_id})]
            )

    assert asyncio.run(complete(1, task.attempts)) == set()
    assert asyncio.run(complete(2, rerun.attempts)) == {task_id}
    assert conn.execute(
        "SELECT status, result FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone() == ("succeeded", {"by": 2})


def test_claim_plan_walks_the_index_and_never_sorts_the_pending_set(dsn, conn):
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES ('other')")
    conn.execute("""
        INSERT INTO angela_queue.tasks (kind, queue, priority, enqueued_at)
        SELECT (ARRAY['a.b', 'c.d', 'e.f'])[1 + i % 3], (ARRAY['default', 'other'])[1 + i % 2],
               1 + i % 10, now() - make_interval(secs => i % 3600)
          FROM generate_series(1, 150000) i""")
    conn.execute(
        "UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() WHERE id % 3 = 0"
    )
    pending_by_tier = dict(
        conn.execute(
            "SELECT tier, count(*) FROM angela_queue.tasks WHERE status = 'pending' GROUP BY 1"
        ).fetchall()
    )
    assert sum(pending_by_tier.values()) == 100000 and len(pending_by_tier) == 4
    conn.execute("ANALYZE angela_queue.tasks")
    params = claim_params(1, ["default", "other"], ["a.b", "c.d"], 10, None)
    # Plain EXPLAIN plans the UPDATE without running it.
    plan = conn.execute(
        b"EXPLAIN (FORMAT JSON) " + QUERIES["task_claim"].encode(), params
    ).fetchone()[0]
    root = plan[0]["Plan"] if isinstance(plan, list) else json.loads(plan)[0]["Plan"]
    scans = list(walk(root, []))
    task_scans = [
        (node, path)
        for node, path in scans
        if node.get("Relation Name") == "tasks" and "Scan" in node["Node Type"]
    ]
    assert task_scans, "the plan reads no tasks?"
    for node, path in task_scans:
        assert node["Node Type"] in ("Index Scan", "Index Only Scan"), node["Node Type"]
        # tasks_scheduled_idx: the claim's promotion of scheduled tasks that fell due.
        assert node["Index Name"] in ("tasks_claim_idx", "tasks_pkey", "tasks_scheduled_idx"), node[
            "Index Name"
        ]
        if node["Index Name"] == "tasks_claim_idx":
            # Between the last Sort above this scan and the scan, a Limit caps the rows:
            # the sort only ever merges a few candidates, never the pending set.
            kinds = [p["Node Type"] for p in path]
            last_sort = max(
                (i for i, k in enumerate(kinds) if k in ("Sort", "Incremental Sort")), default=-1
            )
            assert "Limit" in kinds[last_sort + 1 :], kinds


def walk(node: dict[str, Any], path: list[dict[str, Any]]):
    yield node, path
    for child in node.get("Plans", []):
        yield from walk(child, [*path, node])


def test_the_claim_promotes_due_scheduled_tasks_for_the_next_claim(dsn, conn):
    soon = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, run_at) VALUES"
        " ('a.b', now() + interval '200 milliseconds') RETURNING id"
    ).fetchone()[0]
    assert claim(dsn, 5) == []
    asyncio.run(asyncio.sleep(0.3))
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN angela_queue")
        assert claim(dsn, 5) == []  # promoted now, claimable from the next claim on …
        notes = list(listener.notifies(timeout=2, stop_after=1))
    assert [n.payload for n in notes] == ["default"]  # … which the NOTIFY brings at once
    assert [t.id for t in claim(dsn, 5)] == [soon]


def test_the_worker_connection_claims_with_a_generic_plan_that_scans_no_table(dsn, conn):
    """The worker's loop connection keeps prepared statements on their generic plan
    (worker._connect); the claim's generic plan must still read tasks by index only."""
    from angela_queue.worker import _connect

    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, 5000)")
    conn.execute("ANALYZE angela_queue.tasks")

    async def go() -> tuple[int, int, int]:
        c = await _connect(dsn)
        try:
            c.prepare_threshold = 0  # prepared from the first call
            await c.set_autocommit(False)
            store = AsyncTaskStore(c)
            claimed = 0
            for _ in range(3):
                claimed += len(await store.task_claim(1, ["default"], ["a.b"], 10))
            cur = await c.execute(
                "SELECT seq_scan FROM pg_stat_xact_user_tables"
                " WHERE schemaname = 'angela_queue' AND relname = 'tasks'"
            )
            row = await cur.fetchone()
            assert row is not None
            seq_scans = int(row[0])
            cur = await c.execute(
                "SELECT generic_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%%WITH promoted AS%%'"
            )
            row = await cur.fetchone()
            assert row is not None
            generic = int(row[0])
            # A generic plan's cost assumes a tenth of the table: with a large backlog it
            # would pass jit_above_cost, and JIT compiling costs 100× the claim itself.
            cur = await c.execute("SELECT current_setting('jit')")
            row = await cur.fetchone()
            assert row == ("off",)
            await c.rollback()
            return claimed, seq_scans, generic
        finally:
            await c.close()

    claimed, seq_scans, generic_plans = asyncio.run(go())
    assert claimed == 30
    assert generic_plans == 3
    assert seq_scans == 0


def test_failures_with_integer_and_float_retry_delays_are_written_together(dsn, conn):
    """A handler's Retry(in_s=5) is an int, a backoff a float: psycopg refuses a list that
    mixes them, and the whole flush of failures used to fail with it."""
    ids = [add(conn) for _ in range(3)]
    tasks = claim(dsn, 3)

    async def go() -> set[int]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            return await AsyncTaskStore(c).task_fail_many(
                1,
                [
                    Outcome(tasks[0].id, 1, False, error="x", retry_in_s=5),
                    Outcome(tasks[1].id, 1, False, error="x", retry_in_s=2.4),
                    Outcome(tasks[2].id, 1, False, error="x", retry_in_s=None),
                ],
            )

    assert asyncio.run(go()) == set(ids)
    rows = conn.execute(
        "SELECT status, round(extract(epoch FROM run_at - now())) FROM angela_queue.tasks"
        " ORDER BY id"
    ).fetchall()
    assert [r[0] for r in rows] == ["pending", "pending", "failed"]
    assert [float(r[1]) for r in rows[:2]] == [5.0, 2.0]


def record_and_claim(dsn: str, outcomes: list[Outcome], limit: int, worker_id: int = 1):
    async def go():
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            return await AsyncTaskStore(c).task_record_and_claim(
                worker_id, outcomes, ["default"], ["a.b"], limit
            )

    return asyncio.run(go())


def test_outcomes_and_the_next_claim_are_written_in_one_call(dsn, conn):
    done, failed, reclaimed = add(conn), add(conn), add(conn)
    claim(dsn, 3, worker_id=1)
    # Worker 1 lost `reclaimed` meanwhile: its late outcome must be ignored.
    conn.execute("UPDATE angela_queue.tasks SET worker_id = 2 WHERE id = %s", (reclaimed,))
    low, high = add(conn, priority=2), add(conn, priority=9)
    kept, claimed, _ = record_and_claim(
        dsn,
        [
            Outcome(done, 1, True, result={"ok": 1}),
            Outcome(failed, 1, False, error="boom", retry_in_s=None),
            Outcome(reclaimed, 1, True),
        ],
        limit=5,
    )
    assert kept == {done, failed}
    assert [t.id for t in claimed] == [high, low]  # effective-priority order
    rows = dict(conn.execute("SELECT id, status FROM angela_queue.tasks ORDER BY id").fetchall())
    assert rows == {
        done: "succeeded",
        failed: "failed",
        reclaimed: "running",
        low: "running",
        high: "running",
    }


def test_outcomes_are_not_written_when_the_claim_beside_them_fails(dsn, conn):
    """One transaction: a failed claim leaves the outcomes unwritten (the worker keeps them
    and writes them with its next try), never half of it."""
    running = add(conn)
    claim(dsn, 1)
    add(conn)
    conn.execute("""
        CREATE FUNCTION public.refuse_claims() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'no claims today'; END $$""")
    conn.execute("""
        CREATE TRIGGER refuse_claims BEFORE UPDATE ON angela_queue.tasks FOR EACH ROW
        WHEN (OLD.status = 'pending' AND NEW.status = 'running')
        EXECUTE FUNCTION public.refuse_claims()""")
    with pytest.raises(errors.DatabaseError, match="no claims today"):
        record_and_claim(dsn, [Outcome(running, 1, True)], limit=5)
    assert conn.execute(
        "SELECT status FROM angela_queue.tasks WHERE id = %s", (running,)
    ).fetchone() == ("running",)
    conn.execute("DROP TRIGGER refuse_claims ON angela_queue.tasks")
    kept, claimed, _ = record_and_claim(dsn, [Outcome(running, 1, True)], limit=5)
    assert kept == {running} and len(claimed) == 1


def test_a_claim_alone_commits_asynchronously_and_outcomes_never_do(dsn, conn):
    # The test server may run without synchronous commits: this database asks for them.
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
            sql.Identifier(conn.info.dbname)
        )
    )
    conn.execute("CREATE TABLE public.claim_commits (sync text)")
    conn.execute("""
        CREATE FUNCTION public.note_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.claim_commits VALUES (current_setting('synchronous_commit'));
            RETURN NEW;
        END $$""")
    conn.execute("""
        CREATE TRIGGER note_commit_mode BEFORE UPDATE ON angela_queue.tasks FOR EACH ROW
        WHEN (OLD.status = 'pending' AND NEW.status = 'running')
        EXECUTE FUNCTION public.note_commit_mode()""")
    add(conn)
    _, (first,), _ = record_and_claim(dsn, [], limit=5)
    add(conn)
    kept, (_,), _ = record_and_claim(dsn, [Outcome(first.id, first.attempts, True)], limit=5)
    assert kept == {first.id}
    modes = [r[0] for r in conn.execute("SELECT sync FROM public.claim_commits").fetchall()]
    assert modes == ["off", "on"]


def test_outcomes_beyond_one_statement_s_worth_are_all_recorded(dsn, conn):
    """More outcomes than OUTCOME_CHUNK go out as several statements of one transaction."""
    from angela_queue.store import OUTCOME_CHUNK

    n = 2 * OUTCOME_CHUNK + 7
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, %s)", (n,)
    )
    tasks = claim(dsn, n)
    outcomes = [
        Outcome(t.id, t.attempts, True)
        if k % 3
        else Outcome(t.id, t.attempts, False, error="x", retry_in_s=None)
        for k, t in enumerate(tasks)
    ]
    kept, claimed, _ = record_and_claim(dsn, outcomes, limit=5)
    assert kept == {t.id for t in tasks} and claimed == []
    counts = dict(
        conn.execute("SELECT status, count(*) FROM angela_queue.tasks GROUP BY 1").fetchall()
    )
    assert counts == {"succeeded": n - len(range(0, n, 3)), "failed": len(range(0, n, 3))}


def test_each_completed_row_gets_its_own_result_and_a_stale_attempt_is_fenced(dsn, conn):
    """task_complete_many finds each row's attempts and result by its id (one JSON object,
    in any order); no result is SQL NULL, not JSON null."""
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'a.b' FROM generate_series(1, 6)")
    tasks = claim(dsn, 6)
    results: list[Any] = [{"n": 0}, None, [1, "two"], "three", 4.5, None]
    outcomes = [
        Outcome(t.id, t.attempts + (1 if k == 5 else 0), True, result=results[k])
        for k, t in enumerate(tasks)
    ]
    kept, _, _ = record_and_claim(dsn, outcomes[::-1], limit=0)
    assert kept == {t.id for t in tasks[:5]}  # the last one's attempt was not the current one
    rows = conn.execute(
        "SELECT status, result, result IS NULL FROM angela_queue.tasks ORDER BY id"
    ).fetchall()
    assert [r[0] for r in rows] == ["succeeded"] * 5 + ["running"]
    assert [r[1] for r in rows[:5]] == results[:5]
    assert [r[2] for r in rows] == [False, True, False, False, False, True]
