"""An idle worker's wake-up, in process against the real database: the NOTIFY, the claim,
the handler's start, and the re-arm after it (Worker._loop)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from angela_queue import App, Settings, Task
from angela_queue.store import AsyncTaskStore
from angela_queue.worker import Worker


def test_a_woken_worker_starts_the_task_before_it_sends_its_next_query(dsn, monkeypatch):
    """The handler takes its first step before the loop re-arms the queue, so the re-arm's
    round trip is not part of the task's enqueue → start latency."""
    events: list[str] = []
    app = App(Settings(dsn=dsn))

    @app.task("wake.probe")
    async def probe(task: Task) -> None:
        events.append(f"start {task.payload['n']}")

    arm = AsyncTaskStore.queue_arm

    async def recorded_arm(self: AsyncTaskStore, queue: str) -> Any:
        events.append("arm")
        return await arm(self, queue)

    monkeypatch.setattr(AsyncTaskStore, "queue_arm", recorded_arm)

    async def scenario() -> None:
        worker = Worker(app, concurrency=4, listen=True)
        running = asyncio.create_task(worker.run())
        try:
            for n in range(3):
                await _until(lambda: worker._armed and not worker._running, running)
                await asyncio.sleep(0.2)  # idle, armed, asleep
                events.append(f"insert {n}")
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(
                        "INSERT INTO angela_queue.tasks (kind, payload) VALUES"
                        " ('wake.probe', jsonb_build_object('n', %s::int))",
                        (n,),
                    )
                await _until(lambda n=n: f"start {n}" in events, running)
        finally:
            worker.request_stop("test over")
            await asyncio.wait_for(running, 30)

    asyncio.run(scenario())
    for n in range(3):
        at = events.index(f"insert {n}")
        # Woken by the NOTIFY: one claim, then the handler, then the re-arm.
        assert events[at : at + 3] == [f"insert {n}", f"start {n}", "arm"], events


async def _until(predicate: Any, running: asyncio.Task[None], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if running.done():
            running.result()  # the worker's own error, if it failed
            raise AssertionError("the worker stopped")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
