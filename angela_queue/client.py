"""The App: handler registration and the producer side (sync and async enqueue)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from angela_queue import embedded, errors
from angela_queue.producer import insert_each, insert_many, insert_one, insert_one_async
from angela_queue.registry import Handler, Registry, is_async_callable
from angela_queue.settings import Settings
from angela_queue.store import InsertRow, insert_row
from angela_queue.types import DEFAULT_PRIORITY, Enqueued, EnqueueRequest

F = TypeVar("F", bound=Callable[..., Any])
_REQUEST_FIELDS = {f.name for f in fields(EnqueueRequest)}
_INTEGER_OPTIONS = ("priority", "max_attempts", "timeout_s")
_KIND_AND_PAYLOAD = frozenset(("kind", "payload"))


class App:
    """An angela-queue application: its settings, its handlers, and a way to enqueue.

    Connections are opened lazily, so importing a module that builds an App costs nothing.
    """

    def __init__(self, settings: Settings | None = None, *, dsn: str | None = None) -> None:
        base = settings or Settings.load()
        self.settings = base if dsn is None else dataclasses.replace(base, dsn=dsn)
        self.registry = Registry()
        self._dsn: str | None = self.settings.dsn
        self._pool: ConnectionPool | None = None
        self._async_pool: AsyncConnectionPool | None = None
        self._lock = threading.Lock()

    # -- handlers ---------------------------------------------------------------------------

    def task(
        self,
        kind: str,
        *,
        transactional: bool = False,
        timeout_s: int | None = None,
        max_attempts: int | None = None,
        queue: str | None = None,
        batch: bool = False,
        batch_size: int = 5,
        batch_wait_s: float = 2.0,
    ) -> Callable[[F], F]:
        """Register a sync or async handler for ``kind``; it receives a ``Task``.

        ``transactional=True`` gives the handler ``task.conn``: its writes there commit
        together with the task's completion, or not at all. ``timeout_s``, ``max_attempts``
        and ``queue`` become the defaults of tasks of this kind enqueued through this App.

        ``batch=True`` makes it a batch handler: it receives a ``list[Task]`` of one
        ``batch_key``. Low-tier tasks are claimed together, up to ``batch_size``, waiting up
        to ``batch_wait_s`` for the batch to fill; higher tiers never wait. The handler may
        raise ``BatchPartialFailure`` to fail some tasks of the batch and not the others.
        """

        def register(func: F) -> F:
            self.registry.add(
                Handler(
                    kind=kind,
                    func=func,
                    is_async=is_async_callable(func),
                    transactional=transactional,
                    timeout_s=timeout_s,
                    max_attempts=max_attempts,
                    queue=queue,
                    batch=batch,
                    batch_size=batch_size,
                    batch_wait_s=batch_wait_s,
                )
            )
            return func

        return register

    # -- connections ------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The database to use: the configured DSN, else the embedded server (started now)."""
        if self._dsn is None:
            self._dsn = embedded.start(self.settings.pgdata)
        return self._dsn

    def use_dsn(self, dsn: str) -> None:
        """Point this App at another database (before it has opened connections)."""
        if self._pool is not None or self._async_pool is not None:
            raise errors.ConfigurationError("use_dsn() after connections were opened")
        self.settings = dataclasses.replace(self.settings, dsn=dsn)
        self._dsn = dsn

    def connect(self) -> psycopg.Connection[Any]:
        """A new synchronous connection (the caller closes it)."""
        return connect(self.dsn, **self.settings.connection_kwargs())

    def _space_dsn(self) -> str | None:
        """Where a producer waiting for room LISTENs; None (poll only) with ``listen`` off."""
        return self.dsn if self.settings.listen else None

    def _sync_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn,
                    min_size=1,
                    max_size=self.settings.pool_size,
                    kwargs={"autocommit": True, **self.settings.connection_kwargs()},
                    open=True,
                )
            return self._pool

    async def _get_async_pool(self) -> AsyncConnectionPool:
        if self._async_pool is None:
            pool = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self.settings.pool_size,
                kwargs={"autocommit": True, **self.settings.connection_kwargs()},
                open=False,
            )
            await pool.open()
            self._async_pool = pool
        return self._async_pool

    def close(self) -> None:
        """Close the synchronous pool (the async one closes with ``aclose``)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def aclose(self) -> None:
        if self._async_pool is not None:
            await self._async_pool.close()
            self._async_pool = None
        self.close()

    # -- enqueue ----------------------------------------------------------------------------

    def request(
        self, kind: str, payload: Mapping[str, Any] | None = None, **options: Any
    ) -> EnqueueRequest:
        """Build a request, filling this App's defaults for the kind (pure)."""
        unknown = set(options) - _REQUEST_FIELDS
        if unknown:
            raise TypeError(f"unknown enqueue option(s): {', '.join(sorted(unknown))}")
        if payload is not None and not isinstance(payload, Mapping):
            raise errors.InvalidTask("payload must be a JSON object (a mapping)")
        queue, max_attempts, timeout_s = self._kind_defaults(kind)
        defaults = {"queue": queue, "max_attempts": max_attempts, "timeout_s": timeout_s}
        values = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        for name in _INTEGER_OPTIONS:
            value = values.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                # The database would round 5.5 or cast '7' silently: refuse it here.
                raise errors.InvalidTask(f"{name} must be an integer, not {value!r}")
        return EnqueueRequest(kind=kind, payload=dict(payload or {}), **values)

    def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        priority: int = DEFAULT_PRIORITY,
        queue: str | None = None,
        run_at: datetime | None = None,
        dedupe_key: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
        **options: Any,
    ) -> int:
        """Enqueue one task; returns its id.

        With ``conn``, the insert joins the caller's transaction (it commits or rolls back
        with it). With ``dedupe_key``, a live task with that key is not duplicated: its id
        is returned instead. Into a full bounded queue, a task below the queue's drop
        threshold is stored as ``dropped`` (its id is returned); any other waits up to
        ``enqueue_wait_s`` for room, then raises ``QueueFull``.
        """
        req = self.request(
            kind,
            payload,
            priority=priority,
            queue=queue,
            run_at=run_at,
            dedupe_key=dedupe_key,
            **options,
        )
        wait_s, space_dsn = self.settings.enqueue_wait_s, self._space_dsn()
        if conn is not None:
            return insert_one(conn, req, space_dsn, wait_s)
        with self._sync_pool().connection() as own:
            return insert_one(own, req, space_dsn, wait_s)

    async def enqueue_async(
        self,
        kind: str,
        payload: Mapping[str, Any] | None = None,
        *,
        priority: int = DEFAULT_PRIORITY,
        queue: str | None = None,
        run_at: datetime | None = None,
        dedupe_key: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **options: Any,
    ) -> int:
        """``enqueue`` for async code; ``conn`` is an async connection."""
        req = self.request(
            kind,
            payload,
            priority=priority,
            queue=queue,
            run_at=run_at,
            dedupe_key=dedupe_key,
            **options,
        )
        wait_s, space_dsn = self.settings.enqueue_wait_s, self._space_dsn()
        if conn is not None:
            return await insert_one_async(conn, req, space_dsn, wait_s)
        pool = await self._get_async_pool()
        async with pool.connection() as own:
            return await insert_one_async(own, req, space_dsn, wait_s)

    def enqueue_many(
        self,
        items: Iterable[EnqueueRequest | Mapping[str, Any]],
        *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[Enqueued]:
        """Enqueue many tasks in one statement and transaction; reports each task, in order.

        Items are ``EnqueueRequest`` or mappings with the same keys (``kind`` required).
        Each result has the task's ``id`` and a ``status``: ``queued``, ``dropped`` (a full
        bounded queue kept it as dropped) or ``rejected`` (a full bounded queue refused it;
        no id). An invalid task rejects the whole batch. Tasks with a ``dedupe_key`` take a
        row-by-row path (a duplicate is skipped row by row). Bulk enqueue never waits for room.
        """
        given = list(items)
        if not given:
            return []
        if any(_dedupe_key(i) is not None for i in given):
            reqs = [self._as_request(i) for i in given]
            return self._in_transaction(conn, lambda c: insert_each(c, reqs))
        # Each chunk of rows is built while the server inserts the one before (see
        # TaskStore.task_insert_many); an invalid one undoes the whole batch.
        rows: Iterable[InsertRow] = map(self._as_row, given)
        if conn is not None and _opens_callers_transaction(conn):
            rows = list(rows)  # the caller's transaction: no row may fail half-way through
        return self._in_transaction(conn, lambda c: insert_many(c, rows, len(given)))

    def _in_transaction(
        self,
        conn: psycopg.Connection[Any] | None,
        insert: Callable[[psycopg.Connection[Any]], list[Enqueued]],
    ) -> list[Enqueued]:
        """Run ``insert`` in one transaction: the pool's, the caller's open one, or a new
        one on ``conn`` (which the caller commits when it is not autocommit)."""
        if conn is None:
            with self._sync_pool().connection() as own, own.transaction():
                return insert(own)
        if _opens_callers_transaction(conn):
            return insert(conn)  # runs in the transaction the caller commits
        with conn.transaction():
            return insert(conn)

    def _as_request(self, item: EnqueueRequest | Mapping[str, Any]) -> EnqueueRequest:
        if isinstance(item, EnqueueRequest):
            return item
        data = dict(item)
        if "kind" not in data:
            raise errors.InvalidTask("each task needs a 'kind'")
        kind = data.pop("kind")
        return self.request(kind, data.pop("payload", None), **data)

    def _as_row(self, item: EnqueueRequest | Mapping[str, Any]) -> InsertRow:
        """``insert_row(self._as_request(item))``, without building the request for the
        usual dict of a kind and a payload: that is half of a bulk enqueue's client time."""
        if type(item) is dict and "kind" in item and item.keys() <= _KIND_AND_PAYLOAD:
            payload = item.get("payload")
            if payload is None or type(payload) is dict:
                kind = item["kind"]
                queue, max_attempts, timeout_s = self._kind_defaults(kind)
                return (
                    queue,
                    kind,
                    payload or {},
                    DEFAULT_PRIORITY,
                    None,
                    None,
                    max_attempts,
                    timeout_s,
                    None,
                )
        return insert_row(self._as_request(item))

    def _kind_defaults(self, kind: str) -> tuple[str, int, int]:
        """The queue, max_attempts and timeout_s of a kind's tasks: its handler's, else the
        settings'."""
        handler = self.registry._handlers.get(kind)
        settings = self.settings
        if handler is None:
            return "default", settings.max_attempts, settings.timeout_s
        return (
            handler.queue or "default",
            handler.max_attempts or settings.max_attempts,
            handler.timeout_s or settings.timeout_s,
        )


def _opens_callers_transaction(conn: psycopg.Connection[Any]) -> bool:
    """Whether a statement on ``conn`` starts a transaction that the caller commits."""
    return conn.info.transaction_status == pq.TransactionStatus.IDLE and not conn.autocommit


def _dedupe_key(item: EnqueueRequest | Mapping[str, Any]) -> Any:
    return item.dedupe_key if isinstance(item, EnqueueRequest) else item.get("dedupe_key")


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Connect, turning failures into one clear error that never shows a password."""
    from angela_queue.settings import redact_dsn

    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreachable"
        raise errors.DatabaseError(f"cannot connect to {redact_dsn(dsn)}: {reason}") from None
