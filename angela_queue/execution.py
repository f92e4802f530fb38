"""Runs one task's handler with its timeout and turns what happened into an Outcome."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import traceback
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from angela_queue import retry
from angela_queue.errors import Retry
from angela_queue.registry import Handler
from angela_queue.settings import Settings
from angela_queue.store import AsyncTaskStore, Outcome, TaskStore
from angela_queue.types import Task

log = logging.getLogger("angela_queue.execution")
MAX_ERROR_CHARS = 8000


class LostTask(Exception):
    """The task was reclaimed while its transactional handler ran: roll back its writes."""


class TaskRunner:
    """Runs handlers: async ones on the loop, sync ones in a thread pool."""

    def __init__(
        self,
        settings: Settings,
        worker_id: int,
        threads: Executor,
        async_pool: AsyncConnectionPool | None,
        sync_pool: ConnectionPool | None,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.threads = threads
        self.async_pool = async_pool
        self.sync_pool = sync_pool
        # Threads of sync handlers that outlived their timeout, by task id: their outcome is
        # recorded, but their slot stays taken until they return.
        self.lingering: dict[int, asyncio.Future[Any]] = {}

    async def run(self, handler: Handler, task: Task) -> Outcome | None:
        """Run ``task``; returns the Outcome to record, or None when it is already recorded
        (transactional handlers complete on their own connection)."""
        try:
            if handler.transactional:
                await self._run_transactional(handler, task)
                return None
            result = await self._call(handler, task)
            return Outcome(task.id, task.attempts, True, result=jsonable(result))
        except LostTask:
            log.warning("task %s was reclaimed while running; its writes were rolled back", task.id)
            return None
        except Retry as asked:
            return self.failure(task, f"Retry: {asked.reason}", asked.delay_s)
        except TimeoutError:
            return self.failure(task, f"TimeoutError: handler exceeded timeout_s={task.timeout_s}")
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            return self.failure(task, text[-MAX_ERROR_CHARS:])

    def released(self, task: Task, reason: str) -> Outcome:
        """Back to pending at once, even on its last attempt: a shutdown never fails a task."""
        return Outcome(task.id, task.attempts, False, error=reason, retry_at=datetime.now(UTC))

    def failure(self, task: Task, error: str, delay_s: float | None = None) -> Outcome:
        retry_at = retry.next_attempt_at(
            task.attempts,
            task.max_attempts,
            datetime.now(UTC),
            self.settings.retry_base_s,
            self.settings.retry_max_s,
            delay_s=delay_s,
        )
        return Outcome(task.id, task.attempts, False, error=error, retry_at=retry_at)

    async def _call(self, handler: Handler, task: Task) -> Any:
        if handler.is_async:
            return await asyncio.wait_for(handler.func(task), timeout=task.timeout_s)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.threads, handler.func, task)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=task.timeout_s)
        except TimeoutError:
            # A thread cannot be interrupted: the outcome is recorded now, and the slot stays
            # taken until the thread returns (its late result is fenced off).
            future.add_done_callback(_ignore_result)
            self.lingering[task.id] = future
            raise

    async def _run_transactional(self, handler: Handler, task: Task) -> None:
        if handler.is_async:
            assert self.async_pool is not None
            async with self.async_pool.connection() as conn, conn.transaction():
                result = await asyncio.wait_for(
                    handler.func(dataclasses.replace(task, conn=conn)), timeout=task.timeout_s
                )
                done = await AsyncTaskStore(conn).task_complete_many(
                    self.worker_id, [Outcome(task.id, task.attempts, True, jsonable(result))]
                )
                if task.id not in done:
                    raise LostTask
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.threads, self._sync_transactional, handler, task)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=task.timeout_s)
        except TimeoutError:
            future.add_done_callback(_ignore_result)
            self.lingering[task.id] = future
            raise

    def _sync_transactional(self, handler: Handler, task: Task) -> None:
        assert self.sync_pool is not None
        with self.sync_pool.connection() as conn, conn.transaction():
            result = handler.func(dataclasses.replace(task, conn=conn))
            done = TaskStore(conn).task_complete_many(
                self.worker_id, [Outcome(task.id, task.attempts, True, jsonable(result))]
            )
            if task.id not in done:
                raise LostTask


def jsonable(value: Any) -> Any:
    """A handler's return value as storable JSON (non-JSON values are kept as their repr)."""
    if value is None:
        return None
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return {"repr": repr(value)[:MAX_ERROR_CHARS]}
    return value


def _ignore_result(future: Any) -> None:
    if not future.cancelled():
        future.exception()
