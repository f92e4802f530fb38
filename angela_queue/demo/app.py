"""Handlers for the worker processes of the demo: an assistant's "learning" activities.

The project grew out of a conversational assistant whose background workers analyse each
conversation, learn patterns, extract insights and consolidate memories. Here each activity
sleeps for a while in place of its model calls and returns a small JSON result, so that
the demo shows the queue's behaviour (priority, boosts, aging, throughput) and not an NLP
pipeline. Workers load ``angela_queue.demo.app:app``; the demo builds its own producer App with
``build_app(dsn)``, so that both sides share the handlers' defaults (queue, timeout).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from angela_queue import App, Task

QUEUE = "learning"

# Simulated work per kind, in seconds (low, high). The averages (~0.46 s) let 2 workers × 3
# slots drain about 13 tasks/s, which is what the seed plan asked for (10–15 tasks/s).
WORK_S: dict[str, tuple[float, float]] = {
    "conversation.analyze": (0.5, 0.8),
    "pattern.learn": (0.4, 0.6),
    "insight.extract": (0.3, 0.5),
    "memory.consolidate": (0.2, 0.4),
}
KINDS = tuple(WORK_S)

_MOODS = ("calm", "curious", "anxious", "joyful", "frustrated", "tired")
_TOPICS = ("work", "family", "health", "travel", "music", "deadlines", "sleep", "books")


def _work_s(kind: str) -> float:
    low, high = WORK_S[kind]
    return random.uniform(low, high)


def build_app(dsn: str | None = None) -> App:
    """An App with the four learning handlers, all defaulting to the ``learning`` queue.

    A factory rather than only a module-level App, so that the demo's producer (which has
    its own DSN) and the workers (which read ``ANGELA_QUEUE_DSN``) share one definition.
    """
    app = App(dsn=dsn)

    @app.task("conversation.analyze", queue=QUEUE, timeout_s=30)
    async def analyze(task: Task) -> dict[str, Any]:
        """Async: the model call is I/O, so it waits on the worker's event loop."""
        await asyncio.sleep(_work_s(task.kind))
        text = str(task.payload.get("text", ""))
        rng = random.Random(task.id)
        return {
            "conversation": task.payload.get("conversation_id"),
            "mood": "anxious" if task.payload.get("emotional") else rng.choice(_MOODS),
            "topics": rng.sample(_TOPICS, 2),
            "question": text.rstrip().endswith("?"),
        }

    @app.task("pattern.learn", queue=QUEUE, timeout_s=30)
    async def learn(task: Task) -> dict[str, Any]:
        await asyncio.sleep(_work_s(task.kind))
        return {"conversation": task.payload.get("conversation_id"), "patterns": task.id % 4}

    @app.task("insight.extract", queue=QUEUE, timeout_s=30)
    async def extract(task: Task) -> dict[str, Any]:
        await asyncio.sleep(_work_s(task.kind))
        return {"conversation": task.payload.get("conversation_id"), "insights": 1 + task.id % 2}

    @app.task("memory.consolidate", queue=QUEUE, timeout_s=30)
    def consolidate(task: Task) -> dict[str, Any]:
        """Sync on purpose: blocking code runs in the worker's thread pool, one per slot."""
        time.sleep(_work_s(task.kind))
        return {"conversation": task.payload.get("conversation_id"), "merged": 2 + task.id % 3}

    return app


app = build_app()
