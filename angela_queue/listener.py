"""Listener: wakes the worker when tasks arrive, from a LISTEN connection of its own.

It reconnects with backoff when the connection drops, and wakes the worker once on every
(re)connect to catch up on whatever was inserted while it was not listening.

With push (migration 0017) the same session also receives the worker's pushed tasks on the
worker's own channel, and holds the lock that tells producers this worker can still hear
them: the session's end, however it ends, releases it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from angela_queue.push import channel
from angela_queue.store import AsyncTaskStore

log = logging.getLogger("angela_queue.listener")

BACKOFF_MAX_S = 5.0
LOCK_TRIES = 5  # a producer checking the lock holds it for a moment: try again a few times


@dataclass(frozen=True)
class PushHooks:
    """Where pushes go: ``pushed`` gets each notification's payload; ``ready`` is called
    with True once the session can receive pushes, False when it lost them."""

    worker_id: int
    pushed: Callable[[str], object]
    ready: Callable[[bool], object]


async def listen(
    dsn: str, queues: Sequence[str], wake: Callable[[], object], push: PushHooks | None = None
) -> None:
    """Call ``wake()`` for each notification about one of ``queues``; runs until cancelled."""
    backoff = 0.1
    own = channel(push.worker_id) if push is not None else None
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                store = AsyncTaskStore(conn)
                if push is not None and await _hold_lock(store, push.worker_id):
                    # One statement for both channels: the session shows as "LISTEN
                    # angela_queue; …" in pg_stat_activity, whatever it listens to.
                    await store.queue_listen(sql.SQL("LISTEN {}").format(sql.Identifier(own or "")))
                    push.ready(True)
                else:
                    await store.queue_listen()
                backoff = 0.1
                wake()
                async for note in conn.notifies():
                    if note.channel == own and push is not None:
                        push.pushed(note.payload)
                    elif note.payload in queues:
                        wake()
        except psycopg.Error as exc:
            if push is not None:
                push.ready(False)
            log.warning(
                "listener connection lost (%s); reconnecting",
                str(exc).strip().splitlines()[0] if str(exc).strip() else "?",
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)


async def _hold_lock(store: AsyncTaskStore, worker_id: int) -> bool:
    for attempt in range(LOCK_TRIES):
        if await store.worker_hold_listener_lock(worker_id):
            return True
        await asyncio.sleep(0.05 * (attempt + 1))
    log.warning("worker %s: its listener lock is held elsewhere; no pushes", worker_id)
    return False
