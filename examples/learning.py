"""The learning workers of an assistant: four task kinds, one of them batched.

After each conversation an assistant analyses it, learns patterns, extracts insights and
consolidates memories. Each handler sleeps in place of its model call, so that what you
watch is the queue (priorities, boosts, batches, scaling), not an NLP pipeline. Run it:

    angela-queue queue set learning
    angela-queue worker --app learning:app --queue learning

This file is examples/learning.py and, byte for byte, the demo's angela_queue/demo/app.py
(tests/unit/test_examples.py keeps them equal): copy it to start a handler module.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from angela_queue import App, Task

app = App()  # the database: ANGELA_QUEUE_DSN, else the embedded PostgreSQL
QUEUE = "learning"  # the handlers' default queue for tasks enqueued through this app

# Seconds of simulated model time per task (low, high); a batch adds 0.05 s per task.
WORK_S = {
    "conversation.analyze": (0.5, 0.8),
    "pattern.learn": (0.4, 0.6),
    "insight.extract": (0.3, 0.5),
    "memory.consolidate": (0.2, 0.4),
}


def work_s(kind: str) -> float:
    return random.uniform(*WORK_S[kind])


@app.task("conversation.analyze", queue=QUEUE, timeout_s=30)
async def analyze(task: Task) -> dict[str, Any]:
    """Async: a model call waits on the network, so it waits on the worker's event loop."""
    await asyncio.sleep(work_s(task.kind))
    text = str(task.payload.get("text", ""))
    mood = "anxious" if task.payload.get("emotional") else "calm"
    return {
        "conversation": task.payload.get("conversation_id"),
        "mood": mood,
        "question": "?" in text,
    }


@app.task("pattern.learn", queue=QUEUE, timeout_s=30)
async def learn(task: Task) -> dict[str, Any]:
    await asyncio.sleep(work_s(task.kind))
    return {"conversation": task.payload.get("conversation_id"), "patterns": task.id % 4}


@app.task("insight.extract", queue=QUEUE, timeout_s=30)
def extract(task: Task) -> dict[str, Any]:
    """Sync: blocking code runs in the worker's thread pool, one thread per slot."""
    time.sleep(work_s(task.kind))
    return {"conversation": task.payload.get("conversation_id"), "insights": 1 + task.id % 2}


@app.task("memory.consolidate", queue=QUEUE, timeout_s=30, batch=True, batch_size=5)
def consolidate(tasks: list[Task]) -> dict[int, dict[str, Any]]:
    """A batch: up to 5 routine (low-tier) tasks of one batch_key in one model call.

    A batch of low-tier tasks waits up to batch_wait_s (2 s) to fill; a task of a higher
    tier runs at once. The result is per task id; every task of the batch records its batch.
    """
    time.sleep(work_s("memory.consolidate") + 0.05 * len(tasks))
    batch = {"batch": tasks[0].id, "batch_size": len(tasks)}
    return {t.id: {"conversation": t.payload.get("conversation_id"), **batch} for t in tasks}
