"""Listener: wakes the worker when tasks arrive, from a LISTEN connection of its own.

It reconnects with backoff when the connection drops, and wakes the worker once on every
(re)connect to catch up on whatever was inserted while it was not listening.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import psycopg

from angela_queue.store import AsyncTaskStore

log = logging.getLogger("angela_queue.listener")

BACKOFF_MAX_S = 5.0


async def listen(dsn: str, queues: Sequence[str], wake: Callable[[], object]) -> None:
    """Call ``wake()`` for each notification about one of ``queues``; runs until cancelled."""
    backoff = 0.1
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await AsyncTaskStore(conn).queue_listen()
                backoff = 0.1
                wake()
                async for note in conn.notifies():
                    if note.payload in queues:
                        wake()
        except psycopg.Error as exc:
            log.warning(
                "listener connection lost (%s); reconnecting",
                str(exc).strip().splitlines()[0] if str(exc).strip() else "?",
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
