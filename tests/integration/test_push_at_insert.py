"""Push at the insert (migration 0018): a one-statement producer takes an idle worker's offer
as it inserts, and leaves to the commit's fill (migration 0017) whatever it may not take."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from angela_queue import App, Settings
from angela_queue.push import parse_push
from angela_queue.sql import QUERIES as Q
from angela_queue.store import TaskStore, insert_params
from angela_queue.types import EnqueueRequest
from tests.integration.test_push import add_worker, listener, offer, offers, pushes, task


def insert_pushing(conn: psycopg.Connection[Any], kind: str = "a.b", **fields: Any) -> int:
    """The client's one-statement insert: with the setting when ``conn`` autocommits."""
    task_id = TaskStore(conn).task_insert(EnqueueRequest(kind, **fields))
    assert task_id is not None
    return task_id


def flag_armed(conn: psycopg.Connection[Any], queue: str = "default") -> bool:
    """Whether the queue's flag still asks producers for a NOTIFY: an insert that pushed at
    the insert leaves it; one that went through the commit's fill cleared it."""
    row = conn.execute(
        "SELECT waiting FROM angela_queue.queue_waiters WHERE queue = %s", (queue,)
    ).fetchone()
    return bool(row and row[0])


def test_a_one_statement_insert_takes_the_offer_and_writes_the_task_running(dsn, conn):
    me = add_worker(conn)
    with listener(dsn, me) as ears:
        assert offer(conn, me, offer_id=7) == "offered"
        tid = insert_pushing(conn, payload={"n": 1}, priority=7)
        (note,) = pushes(ears)
    push = parse_push(note, me)
    assert (push.offer_id, push.task_id) == (7, tid)
    assert task(conn, tid) == ("running", me, 1, True, True)
    assert offers(conn) == []
    assert flag_armed(conn)  # no commit-time fill, no NOTIFY to the queue
    row = conn.execute(
        "SELECT queue, kind, payload, priority, boost, tier, attempts, max_attempts,"
        " enqueued_at, run_at, deadline_at, started_at, batch_key, dedupe_key, timeout_s,"
        " started_at = first_started_at, sort_key"
        " FROM angela_queue.tasks WHERE id = %s",
        (tid,),
    ).fetchone()
    assert push.task is not None
    t = push.task
    assert (
        t.queue, t.kind, t.payload, t.priority, t.boost, t.tier, t.attempts, t.max_attempts,
        t.enqueued_at, t.run_at, t.deadline_at, t.started_at, t.batch_key, t.dedupe_key,
        t.timeout_s, True,
    ) == row[:16]  # fmt: skip
    # Its effective priority as a claim would compute it: the base 7 plus a moment's aging.
    assert 7 <= t.effective_priority < 7.01


def test_the_setting_lasts_one_statement_and_other_inserts_fill_at_the_commit(dsn, conn):
    me = add_worker(conn)
    with listener(dsn, me) as ears, psycopg.connect(dsn) as producer:
        assert offer(conn, me) == "offered"
        insert_pushing(producer)  # not autocommit: no setting, an ordinary insert
        assert pushes(ears) == []  # nothing before the commit
        producer.commit()
        (note,) = pushes(ears)
    assert task(conn, parse_push(note, me).task_id)[:2] == ("running", me)
    assert not flag_armed(conn)
    # On an autocommit connection the setting is on for its own statement only.
    insert_pushing(conn)
    setting = conn.execute("SELECT current_setting('angela_queue.push_at_insert', true)")
    assert setting.fetchone() in ((None,), ("",))


@pytest.mark.parametrize(
    ("case", "fields", "change"),
    [
        ("a dedupe key", {"dedupe_key": "k1"}, None),
        ("another task due", {"priority": 2}, "reclaimed"),
    ],
)
def test_what_the_insert_may_not_take_the_commit_fills(dsn, conn, case, fields, change):
    """A deduplicated insert may be skipped after its trigger ran; a task due before this one
    may be better. Both go in pending, and the commit's fill pushes the best due task."""
    me = add_worker(conn)
    other = add_worker(conn)
    due = None
    if change == "reclaimed":
        # Claimed by another worker before the offer, then put back (as a reaper does).
        due = insert_pushing(conn, priority=5)
        conn.execute(
            "UPDATE angela_queue.tasks SET status = 'running', worker_id = %s, attempts = 1"
            " WHERE id = %s",
            (other, due),
        )
    with listener(dsn, me) as ears:
        assert offer(conn, me) == "offered"
        if due is not None:
            conn.execute(
                "UPDATE angela_queue.tasks SET status = 'pending', worker_id = NULL WHERE id = %s",
                (due,),
            )
        tid = insert_pushing(conn, **fields)
        (note,) = pushes(ears)
    pushed = parse_push(note, me).task_id
    assert pushed == (due if due is not None else tid), case
    assert task(conn, pushed)[:2] == ("running", me)
    if due is not None:
        assert task(conn, tid)[0] == "pending"
    assert not flag_armed(conn)  # the fill's path


@pytest.mark.parametrize(
    "case", ["listener gone", "dead", "asked to stop", "paused", "scheduled", "other kind"]
)
def test_an_insert_takes_no_offer_the_commit_would_not_fill(dsn, conn, case):
    me = add_worker(conn)
    conn.execute("UPDATE angela_queue.queues SET paused = %s", (case == "paused",))
    with listener(dsn, me, lock=case != "listener gone") as ears:
        assert offer(conn, me) == "offered"
        if case == "dead":
            conn.execute("UPDATE angela_queue.workers SET status = 'dead' WHERE id = %s", (me,))
        if case == "asked to stop":
            conn.execute(
                "UPDATE angela_queue.workers SET stop_requested = true WHERE id = %s", (me,)
            )
        fields: dict[str, Any] = {}
        if case == "scheduled":
            fields["run_at"] = datetime(2100, 1, 1, tzinfo=UTC)
        tid = insert_pushing(conn, "other.kind" if case == "other kind" else "a.b", **fields)
        assert pushes(ears) == []
    assert task(conn, tid)[0] == "pending"
    gone = case in ("listener gone", "dead", "asked to stop")
    assert offers(conn) == ([] if gone else [(me, 1)])


def test_a_full_bounded_queue_drops_the_task_and_keeps_the_offer(dsn, conn):
    me = add_worker(conn)
    conn.execute(
        "UPDATE angela_queue.queues SET max_size = 1, drop_below_priority = 3"
        " WHERE name = 'default'"
    )
    filler = insert_pushing(conn, kind="other.kind")  # fills the queue; not the worker's kind
    with listener(dsn, me) as ears:
        assert offer(conn, me) == "offered"
        dropped = insert_pushing(conn, priority=1)
        assert pushes(ears) == []
    assert task(conn, dropped)[0] == "dropped"
    assert task(conn, filler)[0] == "pending"
    assert offers(conn) == [(me, 1)]


@pytest.mark.parametrize(
    ("options", "pushed"),
    [
        ("-c role=angela_queue_producer", True),
        ("-c default_transaction_isolation=serializable", False),
    ],
    ids=["least-privilege producer", "serializable by default"],
)
def test_a_producer_session_pushes_at_its_insert_unless_its_isolation_is_stricter(
    dsn, conn, options, pushed
):
    """The trigger runs as the schema's owner, so a producer that cannot read the offers
    takes one; above READ COMMITTED nothing is pushed, as with the commit's fill."""
    me = add_worker(conn)
    with (
        listener(dsn, me) as ears,
        psycopg.connect(make_conninfo(dsn, options=options), autocommit=True) as producer,
    ):
        assert offer(conn, me) == "offered"
        tid = insert_pushing(producer)
        notes = pushes(ears)
    assert [parse_push(n, me).task_id for n in notes] == ([tid] if pushed else [])
    assert task(conn, tid)[:2] == (("running", me) if pushed else ("pending", None))
    assert offers(conn) == ([] if pushed else [(me, 1)])
    assert flag_armed(conn) == pushed  # the other insert took the ordinary path


def test_the_client_pushes_at_the_insert_only_on_its_own_connection(dsn, conn):
    """enqueue() on the App's pool (autocommit) pushes at the insert; inside the caller's
    transaction it inserts as before, and the commit fills the offer."""
    me = add_worker(conn)
    app = App(Settings(dsn=dsn))
    try:
        with listener(dsn, me) as ears:
            assert offer(conn, me, offer_id=1) == "offered"
            own = app.enqueue("a.b")
            assert [parse_push(n, me).task_id for n in pushes(ears)] == [own]
            assert flag_armed(conn)
            assert offer(conn, me, offer_id=2) == "offered"
            with psycopg.connect(dsn) as caller:
                theirs = app.enqueue("a.b", conn=caller)
                caller.commit()
            assert [parse_push(n, me).task_id for n in pushes(ears)] == [theirs]
            assert not flag_armed(conn)
    finally:
        app.close()
    assert task(conn, own)[:2] == task(conn, theirs)[:2] == ("running", me)


def test_offering_and_pushing_read_one_index_entry_per_kind_whatever_else_is_pending(dsn, conn):
    """Whether anything else is due for the worker is an index probe per (queue, kind) from
    its claim floor (migration 0021): 5,000 pending tasks of a kind the worker does not run
    are not read, neither when it offers nor when an insert takes its offer. (The check
    used to hash every due entry of the queue: ~0.3 ms a push at 1,200 dead entries.)"""
    me = add_worker(conn)
    conn.execute(
        "INSERT INTO angela_queue.tasks (kind, payload)"
        " SELECT 'other.kind', jsonb_build_object('n', n) FROM generate_series(1, 5000) n"
    )

    def entries_read(c: psycopg.Connection[Any]) -> int:
        row = c.execute(
            "SELECT pg_stat_get_xact_tuples_returned('angela_queue.tasks_claim_idx'::regclass)"
        ).fetchone()
        assert row is not None
        return int(row[0])

    with listener(dsn, me) as ears, psycopg.connect(dsn) as producer:
        assert entries_read(producer) == 0
        assert offer(producer, me) == "offered"
        offering = entries_read(producer)
        producer.commit()
        row = producer.execute(Q["task_insert"], insert_params(EnqueueRequest("a.b"), True))
        (tid,) = row.fetchone() or (None,)
        pushing = entries_read(producer)
        producer.commit()
        assert [parse_push(n, me).task_id for n in pushes(ears)] == [tid]
    assert offering <= 2 and pushing <= 2, (offering, pushing)
