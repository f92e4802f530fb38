"""Worker: register → loop (promote due, claim up to free slots, run, record) → graceful stop.

One asyncio loop per process owns one connection for claims and outcomes; a second one
LISTENs for new work; the heartbeat thread has a third, which it also uses for this
worker's share of reaping. Outcomes are written in batches right before the next claim, so
a busy worker pays about two statements per batch of tasks, and an idle one nothing but a
capped count at each poll.

Exit codes: 0 after a graceful stop; ``EXIT_DECLARED_DEAD`` when a reaper declared the
worker dead (it was paused or cut off); ``EXIT_STUCK`` when a handler would not return.
The last two ask a supervisor (or systemd) for a fresh process. ``EXIT_QUEUE_GONE`` when a
queue it served was deleted: a fresh process would refuse to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from angela_queue import errors
from angela_queue.batching import fill_batch, group_for_batches
from angela_queue.cleaner import Cleaner, CleanerConfig
from angela_queue.client import App
from angela_queue.execution import TaskRunner
from angela_queue.heartbeat import Heartbeater, WorkerCounters
from angela_queue.listener import PushHooks
from angela_queue.listener import listen as listen_for_work
from angela_queue.payload import decode_tolerantly
from angela_queue.push import AWAITED_LATE_S, Offers, parse_push
from angela_queue.reaper import Reaper, ReaperConfig
from angela_queue.registry import Handler
from angela_queue.settings import Settings
from angela_queue.sql import QUERIES as Q
from angela_queue.store import AsyncTaskStore, Outcome, Recorded, TaskStore
from angela_queue.types import Task
from angela_queue.watchdog import (
    EXIT_DECLARED_DEAD,
    EXIT_OK,
    EXIT_QUEUE_GONE,
    EXIT_STUCK,
    HARD_EXIT_MARGIN_S,
    exit_code_for,
    give_up_wedged,
    hard_exit,
    hard_exit_after,
    tick_forever,
    wait_lingering,
)

log = logging.getLogger("angela_queue.worker")

TASK_THREAD_PREFIX = "angela-queue-task"
EXPIRY_SWEEP_S = 0.1
BUSY_PENDING = 20
DUE_MISSES_MAX = 2  # see Worker._due_misses
NORMAL_PENDING = 5


def poll_interval(pending: int, busy_s: float, normal_s: float, idle_s: float) -> float:
    """Adaptive poll (DESIGN.md §4): 0.1 s above 20 pending, 0.5 s above 5, else 1 s."""
    if pending > BUSY_PENDING:
        return busy_s
    if pending > NORMAL_PENDING:
        return normal_s
    return idle_s


class Worker:
    """One worker process's engine. ``run()`` returns after a graceful stop."""

    def __init__(
        self,
        app: App,
        *,
        queues: tuple[str, ...] | None = None,
        concurrency: int | None = None,
        listen: bool | None = None,
    ) -> None:
        if len(app.registry) == 0:
            raise errors.ConfigurationError("the app has no task handlers registered")
        s = app.settings
        self.app = app
        self.settings = s
        self.queues = tuple(queues or s.queues)
        self.concurrency = concurrency or s.concurrency
        self.listen = s.listen if listen is None else listen
        # Push (migration 0017): offers made, filled and awaited; None without push.
        self._offers: Offers | None = Offers() if self.listen and s.push else None
        self._push_ready = False  # the listener holds its lock and hears pushes
        self._adopt = False  # a push may have been lost: adopt unknown running tasks
        # queue_offer said 'due' and the claim that followed found nothing (a due task
        # another transaction holds locked): offer again only after a claim or a NOTIFY.
        self._due_misses = 0
        self._runner: TaskRunner | None = None
        self.kinds = app.registry.kinds()
        self.worker_id: int | None = None
        self.counters = WorkerCounters()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._batch_wake = asyncio.Event()  # NOTIFY for batches waiting for mates
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._running: dict[int, asyncio.Task[None]] = {}
        # Async handlers' timeouts: deadline (monotonic) by task id, swept by _expire. One
        # asyncio timer per task cost more than a no-op task's whole run.
        self._deadlines: dict[int, float] = {}
        self._expired: set[int] = set()
        self._have_deadlines = asyncio.Event()
        self._outcomes: list[Outcome] = []
        self._exit_codes: set[int] = set()
        self._heart: Heartbeater | None = None
        self._reconnected = False
        self._armed = False  # True: its queues are flagged "a worker waits" (see _loop)

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def exit_code(self) -> int:
        """What the process should exit with once ``run()`` returned."""
        return exit_code_for(self._exit_codes)

    def request_stop(self, reason: str = "stop requested", exit_code: int = EXIT_OK) -> None:
        """Stop claiming and finish running tasks (call on the loop; threads use
        ``loop.call_soon_threadsafe``). A non-zero ``exit_code`` also arms a hard exit, so
        that the process leaves even if the graceful part cannot finish."""
        if not self._stopping.is_set():
            log.info(
                "worker %s stopping: %s",
                self.worker_id,
                reason,
                extra={"event": "worker_stopping", "worker_id": self.worker_id, "reason": reason},
            )
        if exit_code != EXIT_OK and exit_code not in self._exit_codes:
            hard_exit_after(self.settings.shutdown_grace_s + HARD_EXIT_MARGIN_S, exit_code, reason)
        self._exit_codes.add(exit_code)
        self.counters.stopping = True
        self._stopping.set()
        self._wake.set()
        if self._heart is not None:
            self._heart.poke()

    async def run(self) -> None:
        dsn = self.app.dsn
        conn = await _connect(dsn, self.settings)
        store = AsyncTaskStore(conn)
        for queue in self.queues:
            if await store.queue_get(queue) is None:
                await conn.close()
                raise errors.UnknownQueue(queue)
        self.worker_id = await store.worker_register(
            socket.gethostname(), os.getpid(), self.queues, self.kinds, self.concurrency
        )
        log.info(
            "worker %s started: pid %s, queues %s, kinds %s, concurrency %s, listen %s",
            self.worker_id,
            os.getpid(),
            ",".join(self.queues),
            ",".join(self.kinds),
            self.concurrency,
            self.listen,
            extra={
                "event": "worker_started",
                "worker_id": self.worker_id,
                "pid": os.getpid(),
                "queues": list(self.queues),
                "kinds": list(self.kinds),
                "concurrency": self.concurrency,
            },
        )
        loop = asyncio.get_running_loop()
        heart = self._heart = Heartbeater(
            dsn,
            self.worker_id,
            self.counters,
            self.settings.heartbeat_s,
            lambda why: loop.call_soon_threadsafe(self.request_stop, why),
            heartbeat_timeout_s=self.settings.heartbeat_timeout_s,
            on_declared_dead=lambda: loop.call_soon_threadsafe(
                self.request_stop,
                "declared dead by a reaper: its tasks run elsewhere now",
                EXIT_DECLARED_DEAD,
            ),
            on_wedged=self._give_up_wedged,
            reaper=Reaper(ReaperConfig.from_settings(self.settings)),
            cleaner=Cleaner(CleanerConfig(retention_s=self.settings.retention_s)),
            floors=(self.queues, self.kinds),
            connect_kwargs=self.settings.connection_kwargs(),
        )
        ticker = asyncio.create_task(tick_forever(self.counters))
        expirer = asyncio.create_task(self._expire())
        heart.start()
        threads = ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix=TASK_THREAD_PREFIX
        )
        async_pool, sync_pool = self._transactional_pools(dsn)
        if async_pool is not None:
            await async_pool.open()
        runner = self._runner = TaskRunner(
            self.settings, self.worker_id, threads, async_pool, sync_pool
        )
        hooks = (
            PushHooks(self.worker_id, self._pushed, self._push_listening)
            if self._offers is not None
            else None
        )
        listener = (
            asyncio.create_task(listen_for_work(dsn, self.queues, self._notified, hooks))
            if self.listen
            else None
        )
        try:
            conn = await self._loop(conn, runner)
            await self._give_back_pushes(conn)
            await self._drain(conn)
        finally:
            for side in (listener, ticker, expirer):
                if side is not None:
                    side.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await side
            heart.stop()
            with contextlib.suppress(psycopg.Error, errors.AngelaQueueError):
                await AsyncTaskStore(conn).worker_mark_dead(self.worker_id)
            await conn.close()
            if async_pool is not None:
                await async_pool.close()
            if sync_pool is not None:
                sync_pool.close()
            threads.shutdown(wait=False, cancel_futures=True)
        log.info(
            "worker %s stopped",
            self.worker_id,
            extra={"event": "worker_stopped", "worker_id": self.worker_id},
        )

    def _transactional_pools(
        self, dsn: str
    ) -> tuple[AsyncConnectionPool | None, ConnectionPool | None]:
        handlers = [h for h in self.app.registry if h.transactional]
        size = max(1, self.concurrency)
        kwargs = self.settings.connection_kwargs()
        async_pool = sync_pool = None
        # check: a connection cut while it sat in the pool (a server restart) is replaced
        # before a handler gets it, instead of failing that task's attempt.
        if any(h.is_async for h in handlers):
            async_pool = AsyncConnectionPool(
                dsn,
                min_size=1,
                max_size=size,
                kwargs=kwargs,
                open=False,
                check=AsyncConnectionPool.check_connection,
            )
        if any(not h.is_async for h in handlers):
            sync_pool = ConnectionPool(
                dsn,
                min_size=1,
                max_size=size,
                kwargs=kwargs,
                open=True,
                check=ConnectionPool.check_connection,
            )
        return async_pool, sync_pool

    # -- the loop ---------------------------------------------------------------------------

    async def _loop(
        self, conn: psycopg.AsyncConnection[Any], runner: TaskRunner
    ) -> psycopg.AsyncConnection[Any]:
        backoff = 0.1
        offers = self._offers
        while not self._stopping.is_set():
            try:
                store = AsyncTaskStore(conn)
                self._conn = conn
                if offers is not None and (self._reconnected or self._adopt or offers.late()):
                    await self._adopt_unknown(store, runner)
                elif self._reconnected:
                    await self._release_unknown(store)
                free = self._free_slots()
                # A notification came while an offer stands: its slot may be needed for work
                # no push brings (a retry, a reclaim, a promotion), so the claim withdraws it.
                withdraw = offers is not None and offers.standing is not None and not self._armed
                # Outcomes so far and the next claim share a round trip and a commit. The
                # claim also promotes scheduled tasks that fell due.
                recorded = await self._record_and_claim(store, max(free, 0), withdraw)
                slot_back = offers is not None and withdraw and offers.withdrawn(recorded.offer)
                claimed = recorded.claimed
                if claimed:
                    self._due_misses = 0
                    self._start_all(runner, claimed)
                    # The handlers just started take their first step before this loop sends
                    # its next query: an idle worker's wake-up starts the task, then re-arms.
                    await asyncio.sleep(0)
                backoff = 0.1
                if len(claimed) == max(free, 0) and (free > 0 or slot_back):
                    continue  # more may be waiting: claim again at once
                offering = offers is not None and offers.standing is not None
                if free <= 0 and not offering:
                    # Every slot busy: a finished task wakes us (an awaited push keeps its
                    # slot until it comes, or is late).
                    await self._wait(AWAITED_LATE_S if offers and offers.awaited else None)
                    continue
                if not await self._offer_or_arm(store):
                    continue  # something is due after all: claim it
                # The claim took every claimable task: none left means the idle interval; a
                # partial claim means others hold the rest, so count how busy the queues are.
                pending = (
                    await store.queue_count_ready(self.queues, BUSY_PENDING + 1) if claimed else 0
                )
                woken = await self._wait(
                    poll_interval(
                        pending,
                        self.settings.poll_busy_s,
                        self.settings.poll_normal_s,
                        self.settings.poll_idle_s,
                    )
                )
                if not woken and self._free_slots() <= 0:
                    # The poll, with no slot to claim into but the offer's: promote what fell
                    # due, as a claim would; its NOTIFY then brings the claim.
                    await store.task_promote_due()
            except errors.UnknownQueue as exc:
                log.error(
                    "stopping: a queue this worker serves was deleted (%s)",
                    exc.queue,
                    extra={"event": "queue_gone", "worker_id": self.worker_id},
                )
                self.request_stop(f"queue {exc.queue!r} was deleted", EXIT_QUEUE_GONE)
            except (psycopg.OperationalError, errors.DatabaseError) as exc:
                log.warning(
                    "database connection lost (%s); reconnecting in %.1f s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else "?",
                    backoff,
                    extra={"event": "db_connection_lost", "worker_id": self.worker_id},
                )
                await self._sleep_unless_stopping(backoff)
                backoff = min(backoff * 2, 5.0)
                with contextlib.suppress(Exception):
                    await conn.close()
                with contextlib.suppress(psycopg.OperationalError, errors.DatabaseError):
                    conn = await _connect(self.app.dsn, self.settings)
                self._reconnected = True
                self._armed = False  # a restarted server has lost the (unlogged) flags
        return conn

    def _free_slots(self) -> int:
        """Slots neither running a task nor held for a push (may be negative)."""
        reserved = self._offers.reserved() if self._offers is not None else 0
        return self.concurrency - len(self._running) - reserved

    async def _offer_or_arm(self, store: AsyncTaskStore) -> bool:
        """About to sleep: leave an offer (push), or ask producers for a NOTIFY. False when
        the worker should claim instead of sleeping."""
        offers = self._offers
        free = self._free_slots()
        if (
            offers is not None
            and self._push_ready
            and offers.standing is None
            and free > 0
            and self._due_misses < DUE_MISSES_MAX
        ):
            offer_id = offers.next_offer_id()
            state = await store.queue_offer(self.worker_id or 0, offer_id, self.queues, self.kinds)
            if state == "offered":
                offers.offered(offer_id)
                self._armed = True
                self._due_misses = 0
                return True
            if state == "due":
                self._armed = True  # queue_offer armed every queue before it looked
                self._due_misses += 1
                return False
            # 'busy' (a producer held one of several queues' locks) or 'stopping': arm one
            # queue at a time, as without push.
        if self.listen and not self._armed:
            # Ask producers for a NOTIFY, then claim once more (what was inserted before the
            # flags were set did not notify; migration 0012).
            for queue in self.queues:
                await store.queue_arm(queue)
            self._armed = True
            return False
        return True

    def _start_all(self, runner: TaskRunner, tasks: list[Task]) -> None:
        singles, batches = group_for_batches(tasks, self.app.registry)
        for task in singles:
            self._start(runner, task)
        for batch in batches:
            self._start_batch(runner, batch)

    def _known_ids(self) -> list[int]:
        """Every task this worker runs or has results of (batch mates included)."""
        known = set(self._running) | set(self.counters.running)
        return sorted(known | {o.task_id for o in self._outcomes})

    async def _release_unknown(self, store: AsyncTaskStore) -> None:
        """After a reconnect: a claim may have committed while its reply was lost."""
        released = await store.task_release_unknown(self.worker_id or 0, self._known_ids())
        self._reconnected = False
        if released:
            log.warning(
                "released %d task(s) claimed for this worker but never started: %s",
                len(released),
                ", ".join(map(str, released)),
            )

    async def _adopt_unknown(self, store: AsyncTaskStore, runner: TaskRunner) -> None:
        """Push: withdraw the offer and run what is running under this worker unknown to it
        (a push whose notification was lost, a claim whose reply was lost)."""
        assert self._offers is not None
        tasks = await store.task_adopt_unknown(self.worker_id or 0, self._known_ids())
        self._reconnected = self._adopt = False
        self._offers.adopted([t.id for t in tasks])
        if tasks:
            log.warning(
                "adopted %d task(s) pushed or claimed for this worker without word: %s",
                len(tasks),
                ", ".join(str(t.id) for t in tasks),
                extra={"event": "tasks_adopted", "worker_id": self.worker_id},
            )
            self._start_all(runner, tasks)

    def _pushed(self, payload: str) -> None:
        """The listener heard a push: a producer's commit filled this worker's offer with a
        task, claimed for it. Start it now, unless it is a late copy of an adopted one."""
        offers, runner = self._offers, self._runner
        if offers is None or runner is None or self._stopping.is_set():
            return  # stopping: _give_back_pushes releases it
        push = parse_push(payload, self.worker_id or 0)
        if not offers.received(push, push.task_id in self.counters.running):
            return
        if push.task is None:
            self._adopt = True  # too large for NOTIFY: read it from the table
            self._wake.set()
            return
        self._start_all(runner, [push.task])

    def _push_listening(self, ready: bool) -> None:
        """The listener can hear pushes (True) or lost them (False). Pushes sent to a lost
        session are lost too: a reserved slot is settled by adoption."""
        self._push_ready = ready
        if self._offers is not None and self._offers.reserved():
            self._adopt = True
            self._wake.set()

    async def _give_back_pushes(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Stopping: withdraw the offer, then release what was pushed but not started."""
        if self._offers is None or not self._offers.reserved():
            return
        with contextlib.suppress(psycopg.Error, errors.AngelaQueueError):
            store = AsyncTaskStore(conn)
            await store.offer_withdraw(self.worker_id or 0)
            self._offers.adopted([])
            await self._release_unknown(store)

    def _give_up_wedged(self, store: TaskStore, silent_s: float) -> None:
        reaper = Reaper(ReaperConfig.from_settings(self.settings))
        give_up_wedged(store, self.worker_id or 0, reaper, silent_s)

    async def _wait(self, timeout: float | None) -> bool:
        """Sleep until woken or ``timeout``; True when woken."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._wake.clear()
        return True

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _start(self, runner: TaskRunner, task: Task) -> None:
        self.counters.started(task.id, task.timeout_s)
        handler = self.app.registry.get(task.kind)
        swept = handler.is_async and not handler.transactional
        if swept:
            self._deadlines[task.id] = time.monotonic() + task.timeout_s
            self._have_deadlines.set()
        self._running[task.id] = asyncio.create_task(
            self._execute(runner, handler, task, swept), name=f"task-{task.id}"
        )

    async def _execute(self, runner: TaskRunner, handler: Handler, task: Task, swept: bool) -> None:
        outcome: Outcome | Literal[False] | None = False  # False: the handler never returned
        try:
            outcome = await runner.run(handler, task, timed=not swept)
        except asyncio.CancelledError:
            # _expire cancelled it, and nothing else did: a timeout, not a shutdown.
            if task.id in self._expired and asyncio.current_task().uncancel() == 0:  # type: ignore[union-attr]
                outcome = runner.timed_out(task)
            else:
                outcome = runner.released(task, "Released: the worker shut down before it finished")
                raise
        finally:
            if swept:
                self._deadlines.pop(task.id, None)
                self._expired.discard(task.id)
            if outcome is False:
                outcome = runner.failure(task, "worker error: the handler never returned")
            self._record(task, outcome)
            await self._free_slot(runner, task)

    async def _expire(self) -> None:
        """Cancel async handlers past their task's timeout_s, checked every EXPIRY_SWEEP_S
        (so a timeout fires up to that much late); asleep while none runs."""
        while True:
            if not self._deadlines:
                self._have_deadlines.clear()
                await self._have_deadlines.wait()
            await asyncio.sleep(EXPIRY_SWEEP_S)
            now = time.monotonic()
            late = [key for key, deadline in self._deadlines.items() if deadline <= now]
            for key in late:
                del self._deadlines[key]
                running = self._running.get(key)
                if running is not None:
                    self._expired.add(key)
                    running.cancel()

    async def _free_slot(self, runner: TaskRunner, task: Task) -> None:
        """Give back the slot of ``task`` (a batch's first task for a batch), once a sync
        handler that outlived its timeout has returned."""
        lingering = runner.lingering.pop(task.id, None)
        try:
            if lingering is not None and not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                await self._wait_lingering(task, lingering)
        finally:
            self._running.pop(task.id, None)
            self._wake.set()

    def _notified(self) -> None:
        """A NOTIFY came (its producer cleared the queue's flag), or the listener
        reconnected (notifications may have been missed): re-arm before sleeping again."""
        self._armed = False
        self._due_misses = 0
        self._wake.set()
        self._batch_wake.set()

    def _start_batch(self, runner: TaskRunner, batch: list[Task]) -> None:
        for task in batch:
            self.counters.started(task.id, task.timeout_s)
        self._running[batch[0].id] = asyncio.create_task(
            self._execute_batch(runner, batch), name=f"batch-{batch[0].id}"
        )

    async def _execute_batch(self, runner: TaskRunner, batch: list[Task]) -> None:
        """Fill the batch (batching.fill_batch), run it, record one outcome per task."""
        handler = self.app.registry.get(batch[0].kind)
        outcomes: list[Outcome] | None = None
        try:
            await fill_batch(
                batch,
                handler,
                self._claim_mates,
                self._batch_wake,
                lambda t: self.counters.started(t.id, t.timeout_s),
            )
            outcomes = await runner.run_batch(handler, batch)
        except asyncio.CancelledError:
            reason = "Released: the worker shut down before the batch finished"
            outcomes = [runner.released(t, reason) for t in batch]
            raise
        finally:
            if outcomes is None:
                outcomes = [runner.failure(t, "worker error: the batch never ran") for t in batch]
            for task, outcome in zip(batch, outcomes, strict=True):
                self._record(task, outcome)
            self.counters.batch_ran(len(batch))
            await self._free_slot(runner, batch[0])

    async def _claim_mates(self, queue: str, kind: str, batch_key: str, limit: int) -> list[Task]:
        if self._conn is None:
            return []
        return await AsyncTaskStore(self._conn).task_claim_batch(
            self.worker_id or 0, queue, kind, batch_key, limit
        )

    async def _wait_lingering(self, task: Task, lingering: asyncio.Future[Any]) -> None:
        poke = self._heart.poke if self._heart is not None else (lambda: None)
        if not await wait_lingering(task.id, task.timeout_s, lingering, self.counters, poke):
            self.request_stop(
                f"stuck: the handler of task {task.id} is still running "
                f"{2 * task.timeout_s} s after it started",
                EXIT_STUCK,
            )

    def _record(self, task: Task, outcome: Outcome | None) -> None:
        succeeded = outcome is None or outcome.succeeded
        ms = self.counters.finished(task.id, succeeded)
        if outcome is None:
            return
        self._outcomes.append(outcome)
        self._wake.set()  # the outcome is written at the next turn of the loop
        if not succeeded:
            error = ((outcome.error or "").strip().splitlines() or [""])[-1]
            log.warning(
                "task %s (%s) attempt %s/%s failed in %.0f ms%s: %s",
                task.id,
                task.kind,
                task.attempts,
                task.max_attempts,
                ms,
                "; will retry" if outcome.retry_in_s is not None else "; giving up",
                error,
                extra={
                    "event": "task_failed",
                    "worker_id": self.worker_id,
                    "task_id": task.id,
                    "kind": task.kind,
                    "queue": task.queue,
                    "attempt": task.attempts,
                    "max_attempts": task.max_attempts,
                    "duration_ms": round(ms, 1),
                    "will_retry": outcome.retry_in_s is not None,
                    "error": error,
                },
            )

    async def _flush(self, store: AsyncTaskStore) -> None:
        """Write buffered outcomes (the graceful stop's last write): no claim beside them."""
        await self._record_and_claim(store, 0)

    async def _record_and_claim(
        self, store: AsyncTaskStore, limit: int, withdraw_offer: bool = False
    ) -> Recorded:
        """Write buffered outcomes and claim up to ``limit`` tasks, in one transaction,
        after withdrawing the standing offer if asked (see task_record_and_claim)."""
        if not self._outcomes and limit <= 0 and not withdraw_offer:
            return Recorded(set(), [])
        batch, self._outcomes = self._outcomes, []
        try:
            kept, claimed, offer = await store.task_record_and_claim(
                self.worker_id or 0,
                batch,
                self.queues,
                self.kinds,
                limit,
                withdraw_offer=withdraw_offer,
            )
        except BaseException:
            self._outcomes = batch + self._outcomes  # written on the next try
            raise
        for lost in {o.task_id for o in batch} - kept:
            log.warning(
                "late result of task %s ignored: it was reclaimed meanwhile",
                lost,
                extra={
                    "event": "late_result_ignored",
                    "worker_id": self.worker_id,
                    "task_id": lost,
                },
            )
        return Recorded(kept, claimed, offer)

    async def _drain(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Graceful stop: let running tasks finish within the grace period, then record."""
        if self._running:
            log.info(
                "waiting up to %.0f s for %d running task(s)",
                self.settings.shutdown_grace_s,
                len(self._running),
            )
            _, late = await asyncio.wait(
                list(self._running.values()), timeout=self.settings.shutdown_grace_s
            )
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        for attempt in range(5):
            try:
                await self._flush(AsyncTaskStore(conn))
                return
            except (psycopg.OperationalError, errors.DatabaseError):
                await asyncio.sleep(0.2 * (attempt + 1))
                with contextlib.suppress(psycopg.OperationalError, errors.DatabaseError):
                    conn = await _connect(self.app.dsn, self.settings)
        log.error(
            "could not record %d outcome(s); the reaper will reclaim them", len(self._outcomes)
        )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (a dependency on Linux and macOS): the event loop's own
    cost per task is a large part of a no-op task's; None means asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return None
    return uvloop.new_event_loop


async def _connect(dsn: str, settings: Settings | None = None) -> psycopg.AsyncConnection[Any]:
    """The loop's connection. Its statements are prepared and always run with their
    generic plan: planning the claim costs more than running it, and every statement here
    has a plan that does not depend on its parameters (see task_claim in queries.sql).
    With ``prepare`` off (behind a transaction pooler) neither: no session state at all."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, **(settings.connection_kwargs() if settings else {})
        )
    except psycopg.OperationalError as exc:
        from angela_queue.settings import redact_dsn

        raise errors.DatabaseError(f"cannot connect to {redact_dsn(dsn)}") from exc
    decode_tolerantly(conn)  # a too deeply nested payload fails its task, not the worker
    if conn.prepare_threshold is not None:
        await conn.execute(Q["session_generic_plans"])
    return conn


def run_worker(
    app: App,
    *,
    queues: tuple[str, ...] | None = None,
    concurrency: int | None = None,
    listen: bool | None = None,
) -> int:
    """Run a worker until SIGTERM/SIGINT, then stop gracefully (the CLI's entry point).

    Returns the exit code (see the module docstring)."""
    worker = Worker(app, queues=queues, concurrency=concurrency, listen=listen)
    # What is alive now (modules, the app) lives as long as the process: out of the cyclic
    # collector's sight, a full collection takes ~0.4 ms instead of 20-30 ms, a pause that
    # otherwise lands on whichever task is starting (docs/discussions.md, "Session 5").
    gc.freeze()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop, f"signal {sig.name}")
        await worker.run()

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())
    if any(t.name.startswith(TASK_THREAD_PREFIX) and t.is_alive() for t in threading.enumerate()):
        # A sync handler that cannot be interrupted is still running; its task was released.
        # Exiting now, rather than joining it, keeps the shutdown bounded.
        hard_exit(worker.exit_code)
    return worker.exit_code
