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
from angela_queue.producer import insert_many, insert_one, insert_one_async
from angela_queue.registry import Handler, Registry, is_async_callable
from angela_queue.settings import Settings
from angela_queue.types import Enqueued, EnqueueRequest

F = TypeVar("F", bound=Callable[..., Any])
_REQUEST_FIELDS = {f.name for f in fields(EnqueueRequest)}
_INTEGER_OPTIONS = ("priority", "max_attempts", "timeout_s")


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
        handler = self.registry._handlers.get(kind)
        defaults: dict[str, Any] = {
            "queue": (handler and handler.queue) or "default",
            "max_attempts": (handler and handler.max_attempts) or self.settings.max_attempts,
            "timeout_s": (handler and handler.timeout_s) or self.settings.timeout_s,
        }
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
        priority: int = 5,
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
        priority: int = 5,
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
        dedupe = any(_dedupe_key(i) is not None for i in given)
        # Without dedupe keys, each chunk of requests is built while the server inserts the
        # one before (see TaskStore.task_insert_many); an invalid one undoes the whole batch.
        reqs = [self._as_request(i) for i in given] if dedupe else map(self._as_request, given)
        if conn is None:
            with self._sync_pool().connection() as own, own.transaction():
                return insert_many(own, reqs, len(given), dedupe)
        if conn.info.transaction_status == pq.TransactionStatus.IDLE and not conn.autocommit:
            # Runs in the transaction the caller commits: no request may fail half-way.
            return insert_many(conn, list(reqs), len(given), dedupe)
        with conn.transaction():
            return insert_many(conn, reqs, len(given), dedupe)

    def _as_request(self, item: EnqueueRequest | Mapping[str, Any]) -> EnqueueRequest:
        if isinstance(item, EnqueueRequest):
            return item
        data = dict(item)
        if "kind" not in data:
            raise errors.InvalidTask("each task needs a 'kind'")
        kind = data.pop("kind")
        return self.request(kind, data.pop("payload", None), **data)


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
