"""Async handlers' timeouts, enforced by the worker's deadline sweep (Worker._expire)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from angela_queue import App, Settings, Task
from angela_queue.execution import TaskRunner
from angela_queue.worker import EXPIRY_SWEEP_S, Worker

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def make_task(task_id: int, kind: str, timeout_s: int = 1, attempts: int = 1) -> Task:
    return Task(
        task_id, "default", kind, {}, 5, 0, "medium", attempts, 3, NOW, NOW, NOW, NOW, "",
        None, timeout_s, 5.0, 1,
    )  # fmt: skip


def app_with_handlers() -> App:
    app = App(Settings(dsn="postgresql://nobody@127.0.0.1:1/none"))

    @app.task("t.sleep")
    async def sleep(task: Task) -> None:
        await asyncio.sleep(30)

    @app.task("t.quick")
    async def quick(task: Task) -> str:
        await asyncio.sleep(0.01)
        return "ok"

    return app


async def run_tasks(tasks: list[Task], cancel_after_s: float | None = None) -> Worker:
    worker = Worker(app_with_handlers(), concurrency=10)
    worker.worker_id = 1
    runner = TaskRunner(worker.settings, 1, ThreadPoolExecutor(1), None, None)
    expirer = asyncio.create_task(worker._expire())
    try:
        for task in tasks:
            worker._start(runner, task)
        if cancel_after_s is not None:
            await asyncio.sleep(cancel_after_s)
            for running in list(worker._running.values()):
                running.cancel()  # what a shutdown past its grace does
        await asyncio.wait(list(worker._running.values()), timeout=10)
    finally:
        expirer.cancel()
    return worker


def test_an_async_handler_past_its_timeout_fails_with_a_timeout_and_keeps_its_retries():
    started = time.monotonic()
    worker = asyncio.run(run_tasks([make_task(1, "t.sleep", timeout_s=1), make_task(2, "t.quick")]))
    took = time.monotonic() - started
    by_id = {o.task_id: o for o in worker._outcomes}
    assert by_id[1].succeeded is False
    assert by_id[1].error == "TimeoutError: handler exceeded timeout_s=1"
    assert by_id[1].retry_in_s is not None  # attempt 1 of 3: retried
    assert by_id[2].succeeded is True and by_id[2].result == "ok"
    assert 1.0 <= took < 1.0 + EXPIRY_SWEEP_S + 0.5
    assert worker._deadlines == {} and worker._expired == set() and worker._running == {}


def test_a_shutdown_cancel_releases_the_task_instead_of_failing_it():
    worker = asyncio.run(run_tasks([make_task(1, "t.sleep", timeout_s=60)], cancel_after_s=0.2))
    (outcome,) = worker._outcomes
    assert outcome.succeeded is False and outcome.retry_in_s == 0.0
    assert outcome.error is not None and outcome.error.startswith("Released")
    assert worker._deadlines == {}
