"""Runs one task's handler with its timeout and turns what happened into an Outcome."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import traceback
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from angela_queue import retry
from angela_queue.errors import BatchPartialFailure, Retry
from angela_queue.payload import UndecodablePayload
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

    async def run(self, handler: Handler, task: Task, *, timed: bool = True) -> Outcome | None:
        """Run ``task``; returns the Outcome to record, or None when it is already recorded
        (transactional handlers complete on their own connection). ``timed=False``: the
        caller enforces timeout_s on an async handler itself (see Worker._expire)."""
        if isinstance(task.payload, UndecodablePayload):
            return self.undecodable(task)
        try:
            if handler.transactional:
                await self._run_transactional(handler, task)
                return None
            if handler.is_async and not timed:
                result = await handler.func(task)
            else:
                result = await self._call(handler, task, task.timeout_s, task.id)
            return Outcome(task.id, task.attempts, True, result=jsonable(result))
        except LostTask:
            log.warning("task %s was reclaimed while running; its writes were rolled back", task.id)
            return None
        except Retry as asked:
            return self.failure(task, f"Retry: {asked.reason}", asked.delay_s)
        except TimeoutError:
            return self.timed_out(task)
        except Exception as exc:
            return self.failure(task, _error_text(exc))

    def timed_out(self, task: Task) -> Outcome:
        return self.failure(task, f"TimeoutError: handler exceeded timeout_s={task.timeout_s}")

    async def run_batch(self, handler: Handler, batch: list[Task]) -> list[Outcome]:
        """Run a batch handler on ``batch``; one Outcome per task, in order.

        The handler may return a mapping of task id to result, and may raise
        ``BatchPartialFailure`` to fail the tasks it names while the others succeed; any
        other exception fails every task, each retrying per its own attempts.
        """
        bad = {t.id for t in batch if isinstance(t.payload, UndecodablePayload)}
        if bad:  # those fail alone; the batch runs without them
            good = [t for t in batch if t.id not in bad]
            ran = {o.task_id: o for o in await self.run_batch(handler, good)} if good else {}
            return [ran.get(t.id) or self.undecodable(t) for t in batch]
        try:
            timeout_s = max(t.timeout_s for t in batch)
            result = await self._call(handler, batch, timeout_s, batch[0].id)
            results = result if isinstance(result, Mapping) else {}
            return [Outcome(t.id, t.attempts, True, jsonable(results.get(t.id))) for t in batch]
        except BatchPartialFailure as partial:
            return [
                self.failure(t, _error_text(partial.failed[t.id]))
                if t.id in partial.failed
                else Outcome(t.id, t.attempts, True, jsonable(partial.results.get(t.id)))
                for t in batch
            ]
        except Retry as asked:
            return [self.failure(t, f"Retry: {asked.reason}", asked.delay_s) for t in batch]
        except TimeoutError:
            return [
                self.failure(t, f"TimeoutError: batch exceeded timeout_s={timeout_s}")
                for t in batch
            ]
        except Exception as exc:
            text = _error_text(exc)
            return [self.failure(t, text) for t in batch]

    def undecodable(self, task: Task) -> Outcome:
        """Failed at once: another attempt could not decode the payload either."""
        assert isinstance(task.payload, UndecodablePayload)
        return Outcome(task.id, task.attempts, False, error=task.payload.reason)

    def released(self, task: Task, reason: str) -> Outcome:
        """Back to pending at once, even on its last attempt: a shutdown never fails a task."""
        return Outcome(task.id, task.attempts, False, error=reason, retry_in_s=0.0)

    def failure(self, task: Task, error: str, delay_s: float | None = None) -> Outcome:
        retry_in_s = retry.next_attempt_in(
            task.attempts,
            task.max_attempts,
            self.settings.retry_base_s,
            self.settings.retry_max_s,
            delay_s=delay_s,
        )
        return Outcome(task.id, task.attempts, False, error=error, retry_in_s=retry_in_s)

    async def _call(self, handler: Handler, arg: Any, timeout_s: int, key: int) -> Any:
        """Call the handler on ``arg`` (a task, or a batch's list) within ``timeout_s``."""
        if handler.is_async:
            # asyncio.timeout runs the handler in this task: no extra task per call.
            async with asyncio.timeout(timeout_s):
                return await handler.func(arg)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.threads, handler.func, arg)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=timeout_s)
        except TimeoutError:
            # A thread cannot be interrupted: the outcome is recorded now, and the slot stays
            # taken until the thread returns (its late result is fenced off).
            future.add_done_callback(_ignore_result)
            self.lingering[key] = future
            raise

    async def _run_transactional(self, handler: Handler, task: Task) -> None:
        if handler.is_async:
            assert self.async_pool is not None
            async with self.async_pool.connection() as conn, conn.transaction():
                async with asyncio.timeout(task.timeout_s):
                    result = await handler.func(dataclasses.replace(task, conn=conn))
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


def _error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        return "".join(traceback.format_exception(error))[-MAX_ERROR_CHARS:]
    return str(error)[-MAX_ERROR_CHARS:]


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
