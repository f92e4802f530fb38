"""Watchdog: how a worker that cannot stop cleanly still stops (DESIGN.md §5).

A sync handler cannot be interrupted, and an async one can block the event loop. When
that lasts, the worker marks itself ``stuck``, tries a graceful stop, and then leaves with
``os._exit`` and a non-zero code, so that a supervisor or systemd starts a fresh process.
The decisions are pure functions; the actions below them are small and few.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from angela_queue.heartbeat import WorkerCounters
    from angela_queue.reaper import Reaper
    from angela_queue.store import TaskStore

log = logging.getLogger("angela_queue.watchdog")

EXIT_OK = 0
# A reaper declared this worker dead (it was paused or cut off for longer than the
# heartbeat timeout): its tasks run elsewhere now. Restart it.
EXIT_DECLARED_DEAD = 3
# A handler would not return (or blocked the event loop) well past its timeout: the process
# gave up on it. Restart it.
EXIT_STUCK = 4
# A queue this worker serves was deleted while it ran. A restart would refuse to start
# (unknown queue): fix the worker's queues, or create the queue again.
EXIT_QUEUE_GONE = 5

# How often the event loop proves it is alive to the heartbeat thread.
LOOP_TICK_S = 0.5
# After a non-zero stop is requested, the graceful part may take the shutdown grace plus
# this much before the process leaves anyway.
HARD_EXIT_MARGIN_S = 10.0


def loop_verdict(silent_s: float, heartbeat_timeout_s: float, longest_timeout_s: float) -> str:
    """Judge the event loop from how long it has not ticked.

    ``ok`` while it ticks within a heartbeat timeout; ``stuck`` after that; ``give_up`` once
    it has been silent for the longest running task's timeout plus a heartbeat timeout, which
    is when any reaper would take those tasks back anyway (task_reclaim_overdue).
    """
    if silent_s <= heartbeat_timeout_s:
        return "ok"
    if silent_s > max(longest_timeout_s, heartbeat_timeout_s) + heartbeat_timeout_s:
        return "give_up"
    return "stuck"


def exit_code_for(codes: set[int]) -> int:
    """The exit code when several reasons to stop were given: the most severe wins."""
    return max(codes, default=EXIT_OK)


def hard_exit_after(seconds: float, code: int, reason: str) -> threading.Timer:
    """Leave with ``os._exit(code)`` after ``seconds`` unless the process is gone by then."""

    def leave() -> None:
        log.error("graceful stop did not finish in %.0f s (%s): exiting %d", seconds, reason, code)
        hard_exit(code)

    timer = threading.Timer(seconds, leave)
    timer.name = "angela-queue-hard-exit"
    timer.daemon = True
    timer.start()
    return timer


def hard_exit(code: int) -> None:
    """Exit now, without joining threads that will never return."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def tick_forever(counters: WorkerCounters) -> None:
    """Prove to the heartbeat thread that the event loop is not blocked."""
    while True:
        counters.tick()
        await asyncio.sleep(LOOP_TICK_S)


async def wait_lingering(
    task_id: int,
    timeout_s: int,
    lingering: asyncio.Future[Any],
    counters: WorkerCounters,
    poke: Callable[[], object],
) -> bool:
    """A sync handler outlived its timeout. Its failure is recorded already (the task
    retries or fails); the worker shows ``stuck`` and the slot stays taken for one more
    ``timeout_s``. Returns False when the thread is still running then: it cannot be
    stopped, so the caller stops the worker."""
    log.error(
        "task %s: sync handler still running past timeout_s=%s; the worker is stuck until "
        "it returns (at most %s s more)",
        task_id,
        timeout_s,
        timeout_s,
    )
    with counters.lock:
        counters.stuck.add(task_id)
    poke()
    try:
        await asyncio.wait_for(asyncio.shield(lingering), timeout=timeout_s)
    except TimeoutError:
        return False
    except Exception:  # its outcome is recorded already; only the slot waited
        pass
    with counters.lock:
        counters.stuck.discard(task_id)
    poke()
    return True


def give_up_wedged(store: TaskStore, worker_id: int, reaper: Reaper, silent_s: float) -> None:
    """Heartbeat thread: the event loop is blocked past every task's timeout. Hand this
    worker's tasks back now, rather than waiting for another reaper, and leave."""
    log.error(
        "worker %s: the event loop has been blocked for %.0f s (a handler that never "
        "yields?); handing its tasks back and exiting %d",
        worker_id,
        silent_s,
        EXIT_STUCK,
    )
    try:
        store.worker_mark_dead(worker_id)
        reaper.run_once(store)
    finally:
        hard_exit(EXIT_STUCK)


def set_on_signals(event: threading.Event, *signals: signal.Signals) -> None:
    """Set ``event`` when one of ``signals`` arrives.

    Not by calling ``event.set()`` in the handler: a handler runs in the main thread
    between two bytecodes, possibly while that thread holds the event's internal lock
    inside ``event.wait()``, and ``set()`` would then wait forever for a lock its own
    thread holds (a process that ignores SIGTERM now and then). A short thread sets it.
    """

    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=event.set, name="angela-queue-signal", daemon=True).start()

    for sig in signals:
        signal.signal(sig, handler)
