"""Batches (DESIGN.md §4): which claimed tasks run together, and filling a batch.

A batch is tasks of one queue, kind and ``batch_key`` for a ``batch=True`` handler. Its
mates are low-tier tasks only. A batch whose tasks are all low-tier waits up to
``batch_wait_s`` for mates (woken by NOTIFY); any higher tier runs at once, with whatever
mates are there right now — urgent work never waits for a batch to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from angela_queue.registry import Handler, Registry
from angela_queue.types import Task, Tier

log = logging.getLogger("angela_queue.batching")

BATCH_POLL_S = 0.2  # a safety net under NOTIFY while a batch waits for mates

ClaimMates = Callable[[str, str, str, int], Awaitable[list[Task]]]


def group_for_batches(
    tasks: Sequence[Task], registry: Registry
) -> tuple[list[Task], list[list[Task]]]:
    """Split claimed tasks into single tasks and batches, in claim order (pure).

    Tasks of a batch kind with the same queue and batch_key form one batch, cut at the
    handler's batch_size.
    """
    singles: list[Task] = []
    groups: dict[tuple[str, str, str], list[list[Task]]] = {}
    for task in tasks:
        handler = registry.get(task.kind)
        if not handler.batch:
            singles.append(task)
            continue
        chunks = groups.setdefault((task.queue, task.kind, task.batch_key), [[]])
        if len(chunks[-1]) >= handler.batch_size:
            chunks.append([])
        chunks[-1].append(task)
    return singles, [chunk for chunks in groups.values() for chunk in chunks]


def waits_for_mates(batch: Sequence[Task]) -> bool:
    """Only an all-low-tier batch waits; any higher tier runs at once."""
    return all(t.tier == Tier.LOW for t in batch)


async def fill_batch(
    batch: list[Task],
    handler: Handler,
    claim_mates: ClaimMates,
    wake: asyncio.Event,
    on_claimed: Callable[[Task], None],
) -> None:
    """Add mates to ``batch`` in place: those there now, then (low tier) those that arrive
    within batch_wait_s. A database error ends the filling; the batch runs as it is."""
    first = batch[0]
    deadline = time.monotonic() + (handler.batch_wait_s if waits_for_mates(batch) else 0.0)
    while len(batch) < handler.batch_size:
        try:
            mates = await claim_mates(
                first.queue, first.kind, first.batch_key, handler.batch_size - len(batch)
            )
        except Exception as exc:
            log.warning(
                "batch of %s: could not claim mates (%s); running %d task(s)",
                first.kind,
                str(exc).strip().splitlines()[0],
                len(batch),
            )
            return
        for mate in mates:
            batch.append(mate)
            on_claimed(mate)
        remaining = deadline - time.monotonic()
        if len(batch) >= handler.batch_size or remaining <= 0:
            return
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), min(remaining, BATCH_POLL_S))
