"""The insert side of the client: one task (waiting for room in a bounded queue) or many.

A bounded queue that is full refuses a task (SQLSTATE AQ002, ``QueueFull``) unless it is
dropped. ``enqueue`` then waits for room up to ``enqueue_wait_s``: it backs off, and a
worker finishing a task of that queue wakes it at once (NOTIFY angela_queue_space), unless
``dsn`` is None (``listen`` off, behind a transaction pooler): then it only polls. The
insert is retried in a savepoint, so a caller's transaction is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import pq

from angela_queue import errors
from angela_queue.store import AsyncTaskStore, InsertRow, TaskStore
from angela_queue.types import Enqueued, EnqueueRequest

SPACE_CHANNEL = "angela_queue_space"
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 0.5


def insert_one(
    conn: psycopg.Connection[Any], req: EnqueueRequest, dsn: str | None, wait_s: float
) -> int:
    """Insert ``req`` on ``conn``, waiting up to ``wait_s`` for room in a full queue."""
    deadline = time.monotonic() + wait_s
    backoff = FIRST_BACKOFF_S
    listener: psycopg.Connection[Any] | None = None
    try:
        while True:
            try:
                with _undoable(conn):
                    return _insert(TaskStore(conn), req)
            except errors.QueueFull:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                if dsn is None:
                    time.sleep(min(backoff, remaining))
                elif listener is None:
                    listener = psycopg.connect(dsn, autocommit=True)
                    listener.execute(f"LISTEN {SPACE_CHANNEL}")
                    continue  # room may have come before we listened: try at once
                else:
                    for note in listener.notifies(timeout=min(backoff, remaining)):
                        if note.payload == req.queue:
                            break
                backoff = min(backoff * 2, MAX_BACKOFF_S)
    finally:
        if listener is not None:
            listener.close()


async def insert_one_async(
    conn: psycopg.AsyncConnection[Any], req: EnqueueRequest, dsn: str | None, wait_s: float
) -> int:
    """``insert_one`` for async code."""
    deadline = time.monotonic() + wait_s
    backoff = FIRST_BACKOFF_S
    listener: psycopg.AsyncConnection[Any] | None = None
    try:
        while True:
            try:
                async with _undoable_async(conn):
                    return await _insert_async(AsyncTaskStore(conn), req)
            except errors.QueueFull:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                if dsn is None:
                    await asyncio.sleep(min(backoff, remaining))
                elif listener is None:
                    listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
                    await listener.execute(f"LISTEN {SPACE_CHANNEL}")
                    continue
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            _space_note(listener, req.queue), min(backoff, remaining)
                        )
                backoff = min(backoff * 2, MAX_BACKOFF_S)
    finally:
        if listener is not None:
            await listener.close()


def insert_many(
    conn: psycopg.Connection[Any], rows: Iterable[InsertRow], count: int
) -> list[Enqueued]:
    """Insert the ``count`` tasks of ``rows`` (none with a dedupe key) in one transaction on
    ``conn``; report what happened to each. ``rows`` may be lazy, built as the chunks of the
    bulk insert are sent.

    Full bounded queues skip instead of failing (the session's overflow mode), so one
    full queue never loses the rest of the batch; invalid tasks still reject it whole.
    """
    store = TaskStore(conn)
    store.session_set_overflow("skip")  # undone with the transaction when anything fails
    placed = store.task_insert_many(rows)
    store.session_set_overflow("")  # the caller's own later inserts fail loudly again
    return [_outcome(placed.get(k)) for k in range(count)]


def insert_each(conn: psycopg.Connection[Any], reqs: Sequence[EnqueueRequest]) -> list[Enqueued]:
    """``insert_many`` row by row, for requests with dedupe keys: a duplicate is skipped
    alone, and its report carries the live task's id."""
    store = TaskStore(conn)
    store.session_set_overflow("skip")
    ids = [_insert_or_none(store, r) for r in reqs]
    statuses = store.task_status_many([i for i in ids if i is not None])
    store.session_set_overflow("")
    return [_outcome((i, statuses[i]) if i in statuses else None) for i in ids]


def _outcome(placed: tuple[int, str] | None) -> Enqueued:
    if placed is None:
        return Enqueued(None, "rejected")
    task_id, status = placed
    return Enqueued(task_id, "dropped" if status == "dropped" else "queued")


def _insert(store: TaskStore, req: EnqueueRequest) -> int:
    task_id = _insert_or_none(store, req)
    if task_id is None:
        raise errors.DatabaseError(f"could not enqueue with dedupe_key {req.dedupe_key!r}")
    return task_id


def _insert_or_none(store: TaskStore, req: EnqueueRequest) -> int | None:
    """The new task's id, or the live duplicate's; None when a bounded queue skipped it."""
    for _ in range(3):
        task_id = store.task_insert(req)
        if task_id is not None:
            return task_id
        if req.dedupe_key is None:
            return None  # skipped by a full bounded queue (bulk overflow mode)
        existing = store.task_get_live_by_dedupe_key(req.dedupe_key)
        if existing is not None:
            return existing
    return None


async def _insert_async(store: AsyncTaskStore, req: EnqueueRequest) -> int:
    for _ in range(3):
        task_id = await store.task_insert(req)
        if task_id is not None:
            return task_id
        assert req.dedupe_key is not None
        existing = await store.task_get_live_by_dedupe_key(req.dedupe_key)
        if existing is not None:
            return existing
    raise errors.DatabaseError(f"could not enqueue with dedupe_key {req.dedupe_key!r}")


@contextlib.contextmanager
def _undoable(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Make a failed insert undoable without touching the caller's earlier work."""
    if conn.autocommit:
        yield
    elif conn.info.transaction_status == pq.TransactionStatus.IDLE:
        try:  # the insert opens the transaction: undoing it undoes only the insert
            yield
        except errors.QueueFull:
            conn.rollback()
            raise
    else:
        with conn.transaction():  # a savepoint inside the caller's transaction
            yield


@contextlib.asynccontextmanager
async def _undoable_async(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    if conn.autocommit:
        yield
    elif conn.info.transaction_status == pq.TransactionStatus.IDLE:
        try:
            yield
        except errors.QueueFull:
            await conn.rollback()
            raise
    else:
        async with conn.transaction():
            yield


async def _space_note(listener: psycopg.AsyncConnection[Any], queue: str) -> None:
    async for note in listener.notifies():
        if note.payload == queue:
            return
