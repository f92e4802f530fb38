"""Handlers of the fuzz tests (tests/integration/test_fuzz.py): they take any payload."""

from __future__ import annotations

from typing import Any

from angela_queue import App, Task

app = App()


@app.task("fuzz.ok")
def ok(task: Task) -> dict[str, Any]:
    return {"keys": sorted(task.payload)[:3], "size": len(task.payload)}


@app.task("fuzz.fail")
def fail(task: Task) -> None:
    raise ValueError(f"fuzz.fail on attempt {task.attempts}: {str(task.payload)[:100]}")


@app.task("fuzz.async_ok")
async def async_ok(task: Task) -> None:
    return None


@app.task("fuzz.tx", transactional=True)
def tx(task: Task) -> None:
    assert task.conn is not None
    task.conn.execute("SELECT %s::jsonb", (str(len(task.payload)),))
