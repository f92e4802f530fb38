"""The Python producer API on real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from angela_queue import App, EnqueueRequest, Settings, errors


@pytest.fixture
def app(dsn):
    application = App(Settings(dsn=dsn))

    @application.task("conversation.analyze", max_attempts=7, timeout_s=90)
    def analyze(task):
        return None

    yield application
    application.close()


def row(conn, task_id, columns="status, priority, payload, queue"):
    return conn.execute(
        f"SELECT {columns} FROM angela_queue.tasks WHERE id = %s", (task_id,)
    ).fetchone()


def test_enqueue_stores_the_task_with_handler_defaults(app, conn):
    task_id = app.enqueue("conversation.analyze", {"text": "hi"}, priority=8)
    assert row(conn, task_id, "status, priority, payload, max_attempts, timeout_s, tier") == (
        "pending",
        8,
        {"text": "hi"},
        7,
        90,
        "high",
    )


def test_transactional_enqueue_commits_and_rolls_back_with_the_caller(app, dsn, conn):
    with psycopg.connect(dsn) as caller:
        kept = app.enqueue("conversation.analyze", conn=caller)
        caller.commit()
        dropped = app.enqueue("conversation.analyze", conn=caller)
        caller.rollback()
    assert row(conn, kept) is not None
    assert row(conn, dropped) is None


def test_enqueue_async_and_async_transactional(app, dsn, conn):
    async def go():
        first = await app.enqueue_async("conversation.analyze", {"n": 1})
        async with await psycopg.AsyncConnection.connect(dsn) as caller:
            second = await app.enqueue_async("conversation.analyze", {"n": 2}, conn=caller)
            await caller.rollback()
        await app.aclose()
        return first, second

    first, second = asyncio.run(go())
    assert row(conn, first)[2] == {"n": 1}
    assert row(conn, second) is None


def test_enqueue_many_returns_ids_in_order(app, conn):
    items = [
        {"kind": "conversation.analyze", "payload": {"i": i}, "priority": 1 + i % 10}
        for i in range(1000)
    ]
    ids = [e.id for e in app.enqueue_many(items)]
    assert len(ids) == 1000 and len(set(ids)) == 1000
    got = dict(conn.execute("SELECT id, payload->>'i' FROM angela_queue.tasks").fetchall())
    assert [int(got[i]) for i in ids] == list(range(1000))


def test_enqueue_many_is_all_or_nothing(app, conn):
    with pytest.raises(errors.InvalidTask, match="priority"):
        app.enqueue_many(
            [
                EnqueueRequest("conversation.analyze"),
                EnqueueRequest("conversation.analyze", priority=42),
            ]
        )
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0] == 0


def test_enqueue_many_names_the_unknown_queue_not_the_first_task_s(app, conn):
    """The error of a batch names the queue that is missing, wherever it is in the batch."""
    with pytest.raises(errors.UnknownQueue, match="'missing'"):
        app.enqueue_many([{"kind": "conversation.analyze"}, {"kind": "a.b", "queue": "missing"}])
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0] == 0


def test_enqueue_many_with_dedupe_keys(app, conn):
    first = app.enqueue("conversation.analyze", dedupe_key="conv-1")
    ids = [
        e.id
        for e in app.enqueue_many(
            [
                {"kind": "conversation.analyze", "dedupe_key": "conv-1"},
                {"kind": "conversation.analyze", "dedupe_key": "conv-2"},
            ]
        )
    ]
    assert ids[0] == first and ids[1] != first
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0] == 2


def test_dedupe_key_returns_the_live_task(app, conn):
    first = app.enqueue("conversation.analyze", dedupe_key="conv-42")
    assert app.enqueue("conversation.analyze", dedupe_key="conv-42") == first
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded' WHERE id = %s", (first,))
    assert app.enqueue("conversation.analyze", dedupe_key="conv-42") != first


def test_run_at_schedules_the_task(app, conn):
    later = datetime.now(UTC) + timedelta(hours=2)
    task_id = app.enqueue("conversation.analyze", run_at=later)
    ready, run_at = row(conn, task_id, "ready, run_at")
    assert ready is False and run_at == later


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"priority": 0}, errors.InvalidTask, "priority must be between 1 and 10"),
        ({"queue": "missing"}, errors.UnknownQueue, "unknown queue 'missing'"),
        ({"max_attempts": 0}, errors.InvalidTask, "max_attempts"),
    ],
)
def test_bad_input_raises_typed_errors(app, kwargs, error, match):
    with pytest.raises(error, match=match):
        app.enqueue("conversation.analyze", **kwargs)


def test_bad_kind_and_payload_raise_invalid_task(app):
    with pytest.raises(errors.InvalidTask, match="lowercase dotted"):
        app.enqueue("Not A Kind")
    with pytest.raises(errors.InvalidTask, match="JSON object"):
        app.enqueue("conversation.analyze", ["not", "an", "object"])


def test_unknown_enqueue_option_is_a_type_error(app):
    with pytest.raises(TypeError, match="prority"):
        app.enqueue("conversation.analyze", prority=3)


def test_unreachable_database_is_one_line_without_password():
    app = App(Settings(dsn="postgresql://u:s3cret@127.0.0.1:1/nothing?connect_timeout=2"))
    with pytest.raises(errors.DatabaseError) as exc:
        app.connect()
    assert "s3cret" not in str(exc.value)
    assert "\n" not in str(exc.value)


def test_enqueue_many_over_several_statements_is_still_all_or_nothing(app, conn):
    """A batch larger than INSERT_CHUNK goes out as a pipeline of statements in one
    transaction: an invalid task in its last statement undoes the ones before it."""
    from angela_queue.store import INSERT_CHUNK

    items = [EnqueueRequest("conversation.analyze", {"i": i}) for i in range(2 * INSERT_CHUNK)]
    items.append(EnqueueRequest("conversation.analyze", priority=42))
    with pytest.raises(errors.InvalidTask, match="priority"):
        app.enqueue_many(items)
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0] == 0


def test_an_invalid_request_late_in_a_large_batch_stores_nothing(app, dsn, conn):
    """Requests are built chunk by chunk while earlier chunks are inserted; one that fails
    to build undoes them, and in a caller's own transaction nothing is written at all."""
    from angela_queue.store import INSERT_CHUNK

    items = [{"kind": "conversation.analyze", "payload": {"i": i}} for i in range(2 * INSERT_CHUNK)]
    items.append({"payload": {"no": "kind"}})
    with pytest.raises(errors.InvalidTask, match="kind"):
        app.enqueue_many(items)
    with psycopg.connect(dsn) as own:
        with pytest.raises(errors.InvalidTask, match="kind"):
            app.enqueue_many(items, conn=own)
        assert own.execute("SELECT count(*) FROM angela_queue.tasks").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0] == 0
