"""task_insert_many (migration 0010) prices a batch exactly as the row trigger prices a task,
and nobody but the schema's owner can switch the trigger off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.conninfo import make_conninfo

from angela_queue import errors
from angela_queue.store import TaskStore, insert_row
from angela_queue.types import EnqueueRequest

COLUMNS = (
    "queue, kind, payload, priority, boost, tier, status, enqueued_at, run_at, aging_from,"
    " sort_key, ready, deadline_at, attempts, max_attempts, timeout_s, batch_key, dedupe_key,"
    " worker_id, started_at, first_started_at, finished_at, result, last_error"
)


def varied_requests() -> list[EnqueueRequest]:
    past = datetime.now(UTC) - timedelta(minutes=7)
    future = datetime.now(UTC) + timedelta(minutes=3)
    return [
        EnqueueRequest("a.b"),
        EnqueueRequest("a.b", {"emotional": True}, priority=7),
        EnqueueRequest("a.b", {"author": "david", "text": "URGENT: call me?"}, priority=4),
        EnqueueRequest("a.b", {"author": "eve", "text": "urgent?"}, priority=9),
        EnqueueRequest("a.b", {"tags": ["x", "emotional"]}, priority=1, queue="fast"),
        EnqueueRequest("a.c", {"n": 1}, priority=10, queue="fast", enqueued_at=past),
        EnqueueRequest("a.c", {"n": 2}, priority=6, queue="fast", run_at=future),
        EnqueueRequest("a.d", {"deep": {"a": [1, 2, {"b": None}]}}, priority=2, batch_key="k"),
        EnqueueRequest("a.d", max_attempts=1, timeout_s=5, run_at=past, enqueued_at=past),
        EnqueueRequest("a.e", {"author": "david", "text": "why?"}, priority=8),
    ]


def rows(conn: psycopg.Connection[Any], ids: list[int]) -> list[tuple[Any, ...]]:
    found = []
    for i in ids:
        row = conn.execute(
            f"SELECT {COLUMNS} FROM angela_queue.tasks WHERE id = %s", (i,)
        ).fetchone()
        assert row is not None
        found.append(row)
    return found


def test_a_batch_is_priced_exactly_like_the_same_tasks_inserted_one_by_one(dsn):
    with psycopg.connect(dsn) as conn:  # one transaction: now() is the same for both ways
        conn.execute(
            "INSERT INTO angela_queue.queues (name, aging_rate, target_waits)"
            ' VALUES (\'fast\', 0.5, \'{"high": "30 seconds", "low": "2 hours"}\')'
        )
        # The operator's target waits of two tiers; the other two keep the defaults.
        conn.execute(
            "UPDATE angela_queue.tiers SET target_wait = CASE tier WHEN 'critical'"
            " THEN interval '45 seconds' ELSE interval '7 minutes' END"
            " WHERE tier IN ('critical', 'medium')"
        )
        store = TaskStore(conn)
        reqs = varied_requests()
        placed = store.task_insert_many(map(insert_row, reqs))
        one_by_one = [store.task_insert(r) for r in reqs]
        assert sorted(placed) == list(range(len(reqs)))
        batch_ids = [placed[k][0] for k in range(len(reqs))]
        assert batch_ids == sorted(batch_ids)  # ids follow the order of the batch
        assert {status for _, status in placed.values()} == {"pending"}
        batch_rows = rows(conn, batch_ids)
        single_rows = rows(conn, [i for i in one_by_one if i is not None])
        assert batch_rows == single_rows
        # The examples exercise every rule and every tier, so the comparison means something.
        tiers = {r[5] for r in batch_rows}
        boosts = {r[4] for r in batch_rows}
        assert tiers == {"critical", "high", "medium", "low"}
        assert boosts == {0, 1, 2, 4}  # 4: urgent and a question from the author
        conn.rollback()


def test_a_missing_payload_is_an_empty_object_to_the_rules_too(conn):
    """By SQL, a NULL payload in the array is stored as {}; a rule matching {} boosts it."""
    conn.execute(
        "INSERT INTO angela_queue.boost_rules (name, predicate, boost)"
        " VALUES ('no-topic', '!(exists($.topic))', 2)"
    )
    (task_id,) = conn.execute(
        "SELECT id FROM angela_queue.task_insert_many(ARRAY['default'], ARRAY['a.b'],"
        " ARRAY[NULL::jsonb], NULL, NULL, NULL, NULL, NULL, NULL)"
    ).fetchone()
    got = conn.execute(
        "SELECT payload, boost FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchall()
    single = conn.execute(
        "INSERT INTO angela_queue.tasks (kind) VALUES ('a.b') RETURNING payload, boost"
    ).fetchall()
    assert got == single == [({}, 2)]


def test_a_batch_into_a_bounded_queue_still_goes_through_its_bound(dsn, conn):
    conn.execute(
        "INSERT INTO angela_queue.queues (name, max_size, overflow_policy, drop_below_priority)"
        " VALUES ('small', 2, 'drop_low', 5)"
    )
    with psycopg.connect(dsn) as c:
        store = TaskStore(c)
        store.session_set_overflow("skip")
        placed = store.task_insert_many(
            insert_row(r)
            for r in [
                EnqueueRequest("a.b", queue="small", priority=6),
                EnqueueRequest("a.b", priority=1),  # unbounded default queue
                EnqueueRequest("a.b", queue="small", priority=6),
                EnqueueRequest("a.b", queue="small", priority=2),  # full, low: dropped
                EnqueueRequest("a.b", queue="small", priority=8),  # full, high: skipped
            ]
        )
        c.commit()
    assert [placed[k][1] for k in (0, 1, 2, 3)] == ["pending", "pending", "pending", "dropped"]
    assert 4 not in placed
    ids = [placed[k][0] for k in (0, 1, 2, 3)]
    assert ids == sorted(ids)


def test_a_batch_reports_the_trigger_s_errors(dsn):
    with psycopg.connect(dsn) as c, pytest.raises(errors.UnknownQueue):
        TaskStore(c).task_insert_many(
            map(insert_row, [EnqueueRequest("a.b"), EnqueueRequest("a.b", queue="nope")])
        )
    with psycopg.connect(dsn) as c:
        c.execute("SET angela_queue.max_payload_bytes = 100")
        with pytest.raises(errors.PayloadTooLarge):
            TaskStore(c).task_insert_many([insert_row(EnqueueRequest("a.b", {"x": "y" * 200}))])
    with psycopg.connect(dsn) as c, pytest.raises(errors.InvalidTask):
        TaskStore(c).task_insert_many([insert_row(EnqueueRequest("a.b", priority=11))])


def test_a_producer_cannot_switch_the_row_trigger_off(dsn, conn):
    as_producer = make_conninfo(dsn, options="-c role=angela_queue_producer")
    with psycopg.connect(as_producer) as producer:
        producer.execute("SELECT set_config('angela_queue.trusted_insert', 'on', true)")
        row = producer.execute(
            "INSERT INTO angela_queue.tasks (kind, priority) VALUES ('a.b', 9) RETURNING id"
        ).fetchone()
        assert row is not None
        task_id = row[0]
        producer.commit()
    tier, deadline_set = conn.execute(
        "SELECT tier, deadline_at = aging_from + interval '1 second'"
        " FROM angela_queue.tasks WHERE id = %s",
        (task_id,),
    ).fetchone()
    assert (tier, deadline_set) == ("critical", True)  # priced by the trigger, not defaults


def test_the_owner_s_switch_is_local_to_the_function(dsn, conn):
    """After task_insert_many, later inserts of the same transaction are priced again."""
    with psycopg.connect(dsn) as c:
        store = TaskStore(c)
        store.task_insert_many([insert_row(EnqueueRequest("a.b"))])
        task_id = store.task_insert(EnqueueRequest("a.b", priority=9))
        c.commit()
    assert conn.execute(
        "SELECT tier FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone() == ("critical",)


def test_only_producers_may_call_it(dsn):
    as_public = make_conninfo(dsn, options="-c role=angela_queue_monitor")
    with psycopg.connect(as_public) as c, pytest.raises(pg_errors.InsufficientPrivilege):
        c.execute(
            "SELECT * FROM angela_queue.task_insert_many('{}', '{}', '{}', '{}', '{}', '{}',"
            " '{}', '{}', '{}')"
        )


def test_positions_hold_across_the_statements_of_a_large_batch(dsn, conn):
    """Results come back per statement of INSERT_CHUNK tasks; each maps to its position in
    the whole batch, skipped tasks of a full bounded queue included."""
    from angela_queue.store import INSERT_CHUNK

    conn.execute(
        "INSERT INTO angela_queue.queues (name, max_size, overflow_policy, drop_below_priority)"
        " VALUES ('small', 1, 'drop_low', 5)"
    )
    reqs = [EnqueueRequest("a.b", {"i": i}) for i in range(2 * INSERT_CHUNK + 10)]
    kept, skipped = INSERT_CHUNK - 1, INSERT_CHUNK + 3  # both of queue 'small', bound 1
    reqs[kept] = EnqueueRequest("a.b", {"i": kept}, queue="small", priority=8)
    reqs[skipped] = EnqueueRequest("a.b", {"i": skipped}, queue="small", priority=8)
    with psycopg.connect(dsn) as c:
        store = TaskStore(c)
        store.session_set_overflow("skip")
        placed = store.task_insert_many(map(insert_row, reqs))
        c.commit()
    assert skipped not in placed and len(placed) == len(reqs) - 1
    got = dict(conn.execute("SELECT id, (payload->>'i')::int FROM angela_queue.tasks").fetchall())
    assert all(got[task_id] == k for k, (task_id, _) in placed.items())
    assert placed[kept][1] == "pending"
