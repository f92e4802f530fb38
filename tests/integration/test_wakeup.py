"""An idle worker's wake-up, in process against the real database: the NOTIFY, the claim,
the handler's start, and the re-arm after it (Worker._loop); with push, the start without
a claim."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from angela_queue import App, Settings, Task
from angela_queue.push import Offers
from angela_queue.store import AsyncTaskStore
from angela_queue.worker import Worker


def test_a_woken_worker_starts_the_task_before_it_sends_its_next_query(dsn, monkeypatch):
    """The handler takes its first step before the loop re-arms the queue, so the re-arm's
    round trip is not part of the task's enqueue → start latency (without push)."""
    events: list[str] = []
    app = App(Settings(dsn=dsn, push=False))

    @app.task("wake.probe")
    async def probe(task: Task) -> None:
        events.append(f"start {task.payload['n']}")

    arm = AsyncTaskStore.queue_arm

    async def recorded_arm(self: AsyncTaskStore, queue: str) -> Any:
        events.append("arm")
        return await arm(self, queue)

    monkeypatch.setattr(AsyncTaskStore, "queue_arm", recorded_arm)

    async def scenario() -> None:
        async with _worker(app, 4) as (worker, running):
            for n in range(3):
                await _until(lambda: worker._armed and not worker._running, running)
                await asyncio.sleep(0.2)  # idle, armed, asleep
                events.append(f"insert {n}")
                await _insert(dsn, "jsonb_build_object('n', %s::int)", n)
                await _until(lambda n=n: f"start {n}" in events, running)

    asyncio.run(scenario())
    for n in range(3):
        at = events.index(f"insert {n}")
        # Woken by the NOTIFY: one claim, then the handler, then the re-arm.
        assert events[at : at + 3] == [f"insert {n}", f"start {n}", "arm"], events


def test_an_idle_worker_starts_a_pushed_task_without_claiming_it(dsn, monkeypatch):
    """With push, an idle worker's offer is filled by the producer's commit: the task
    starts before any claim of the worker returns it, and the worker offers again."""
    events: list[str] = []
    app = App(Settings(dsn=dsn))

    @app.task("wake.probe")
    async def probe(task: Task) -> None:
        events.append(f"start {task.payload['n']} attempt {task.attempts}")

    claim = AsyncTaskStore.task_record_and_claim

    async def recorded_claim(self: AsyncTaskStore, *args: Any, **kwargs: Any) -> Any:
        recorded = await claim(self, *args, **kwargs)
        events.extend(f"claimed {t.payload['n']}" for t in recorded.claimed)
        return recorded

    monkeypatch.setattr(AsyncTaskStore, "task_record_and_claim", recorded_claim)

    async def scenario() -> int:
        async with _worker(app, 2) as (worker, running):
            for n in range(3):
                await _offering(worker, running)
                await _until(lambda: not worker._running, running)
                events.append(f"insert {n}")
                await _insert(dsn, "jsonb_build_object('n', %s::int)", n)
                await _until(lambda n=n: f"start {n} attempt 1" in events, running)
            await _offering(worker, running)
        return worker.worker_id or 0

    worker_id = asyncio.run(scenario())
    assert [e for e in events if e.startswith("claimed")] == []
    assert [e for e in events if e.startswith("start")] == [
        f"start {n} attempt 1" for n in range(3)
    ]
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT status, worker_id, attempts FROM angela_queue.tasks ORDER BY id"
        ).fetchall()
        left = conn.execute("SELECT count(*) FROM angela_queue.worker_offers").fetchone()
    assert rows == [("succeeded", worker_id, 1)] * 3
    assert left == (0,)  # withdrawn or taken away when the worker stopped


def _run_one_push(dsn: str, app: App, concurrency: int) -> tuple[Worker, list[str]]:
    """Run a Worker in process, insert one task once it offers, and stop it when asked to
    (or once the task ran); returns the worker and its log lines."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect()
    logging.getLogger("angela_queue").addHandler(handler)

    async def scenario() -> Worker:
        async with _worker(app, concurrency) as (worker, running):
            await _offering(worker, running)
            await _insert(dsn)
            await _until(lambda: worker._stopping.is_set() or worker.counters.completed, running)
        return worker

    try:
        return asyncio.run(scenario()), lines
    finally:
        logging.getLogger("angela_queue").removeHandler(handler)


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_lost_push_is_adopted_and_runs_once(dsn, monkeypatch, concurrency):
    """The push's notification never comes (as when the listener's session dies with it in
    flight): the withdrawal learns that the offer was filled, and once the push is late
    the worker adopts the task, which runs once, under the attempt the push claimed."""
    app = App(Settings(dsn=dsn))
    started: list[int] = []

    @app.task("wake.probe")
    async def probe(task: Task) -> None:
        started.append(task.attempts)

    monkeypatch.setattr(Worker, "_pushed", lambda self, payload: None)  # every push lost
    worker, lines = _run_one_push(dsn, app, concurrency)
    assert started == [1]
    assert any(line.startswith("adopted 1 task(s)") for line in lines), lines
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT status, worker_id, attempts FROM angela_queue.tasks")
        assert row.fetchall() == [("succeeded", worker.worker_id, 1)]


def test_a_due_task_held_locked_elsewhere_does_not_make_the_worker_spin(dsn, monkeypatch):
    """queue_offer sees a due task that the claim skips (locked by another transaction):
    the worker tries twice, then sleeps armed until a NOTIFY or its poll."""
    app = App(Settings(dsn=dsn))
    ran: list[int] = []

    @app.task("wake.probe")
    async def probe(task: Task) -> None:
        ran.append(task.id)

    calls: list[str] = []
    offer = AsyncTaskStore.queue_offer

    async def counted(self: AsyncTaskStore, *args: Any) -> str:
        calls.append(state := await offer(self, *args))
        return state

    monkeypatch.setattr(AsyncTaskStore, "queue_offer", counted)

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as holder:
            await holder.execute(
                "INSERT INTO angela_queue.tasks (kind) VALUES ('wake.probe') RETURNING id"
            )
            await holder.commit()
            await holder.execute("SELECT id FROM angela_queue.tasks FOR UPDATE")  # held
            async with _worker(app, 2) as (_, running):
                await _until(lambda: bool(calls), running)
                await asyncio.sleep(1.5)
                assert calls.count("due") <= 2 * 2, calls  # at most twice per poll (1 s)
                await holder.rollback()  # the lock goes; the next poll claims the task
                await _until(lambda: bool(ran), running)

    asyncio.run(scenario())
    assert len(ran) == 1


def test_a_task_too_large_to_push_whole_is_read_and_run(dsn):
    """A row over NOTIFY's 8,000 bytes is pushed by id: the worker reads it and runs it."""
    app = App(Settings(dsn=dsn))
    seen: list[tuple[int, int]] = []

    @app.task("wake.probe")
    async def probe(task: Task) -> None:
        seen.append((task.attempts, len(task.payload.get("text", ""))))

    async def scenario() -> None:
        async with _worker(app, 2) as (worker, running):
            await _offering(worker, running)
            await _insert(dsn, "jsonb_build_object('text', repeat('x', 9000))")
            await _until(lambda: bool(seen), running)

    asyncio.run(scenario())
    assert seen == [(1, 9000)]
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT status, attempts FROM angela_queue.tasks").fetchone()
    assert row == ("succeeded", 1)


def test_a_push_that_comes_as_the_worker_stops_is_given_back(dsn, monkeypatch):
    app = App(Settings(dsn=dsn))
    started: list[int] = []

    @app.task("wake.probe")
    async def probe(task: Task) -> None:
        started.append(task.id)

    pushed = Worker._pushed

    def stop_first(self: Worker, payload: str) -> None:
        self.request_stop("a stop just before the push arrived")
        pushed(self, payload)

    monkeypatch.setattr(Worker, "_pushed", stop_first)
    _run_one_push(dsn, app, 2)
    assert started == []
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT status, attempts, last_error LIKE 'Released:%' FROM angela_queue.tasks"
        ).fetchall()
        offers = conn.execute("SELECT count(*) FROM angela_queue.worker_offers").fetchone()
    assert rows == [("pending", 0, True)]  # back, its attempt un-counted
    assert offers == (0,)


@contextlib.asynccontextmanager
async def _worker(app: App, concurrency: int) -> AsyncIterator[tuple[Worker, asyncio.Task[None]]]:
    """A Worker running in this process's loop, stopped (gracefully) on the way out."""
    worker = Worker(app, concurrency=concurrency, listen=True)
    running = asyncio.create_task(worker.run())
    try:
        yield worker, running
    finally:
        worker.request_stop("test over")
        await asyncio.wait_for(running, 30)


async def _insert(dsn: str, payload_sql: str = "'{}'::jsonb", *params: Any) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            f"INSERT INTO angela_queue.tasks (kind, payload) VALUES ('wake.probe', {payload_sql})",
            params,
        )


async def _offering(worker: Worker, running: asyncio.Task[None]) -> Offers:
    """Until the worker's offer stands."""
    offers = worker._offers
    assert offers is not None
    await _until(lambda: offers.standing is not None, running)
    return offers


async def _until(predicate: Any, running: asyncio.Task[None], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if running.done():
            running.result()  # the worker's own error, if it failed
            raise AssertionError("the worker stopped")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
