"""Handlers for scripts/bench_batches.py: the same routine work, one task a call or batched.

Each call pays a fixed cost (``CALL_MS``, like a round trip to a model or an API) plus a
little per task (``PER_TASK_MS``): exactly the work batching amortises.
"""

from __future__ import annotations

import asyncio

from angela_queue import App, Task

CALL_MS = 20.0
PER_TASK_MS = 2.0

app = App()


@app.task("bench.routine")
async def routine(task: Task) -> None:
    await asyncio.sleep((CALL_MS + PER_TASK_MS) / 1000)


@app.task("bench.routine_batch", batch=True, batch_size=5, batch_wait_s=0.5)
async def routine_batch(tasks: list[Task]) -> None:
    await asyncio.sleep((CALL_MS + PER_TASK_MS * len(tasks)) / 1000)
