"""A real headless Chromium watches the dashboard while a real worker processes tasks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.apps.sample_app import CREATE_RUNS
from tests.e2e.helpers import start_worker, stop, wait_for
from tests.e2e.test_monitoring import free_port, get, serve

CHROMIUM = Path(os.environ.get("ANGELA_QUEUE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)",
    ),
]


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def dashboard_url(dsn: str) -> Iterator[str]:
    port = free_port()
    proc = serve(dsn, "dashboard", "--port", str(port))
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(lambda: get(f"{url}healthz")[0] == 200)
        yield url
    finally:
        code, output = stop(proc)
        assert code == 0 and "Traceback" not in output, output


def insert(dsn: str, kind: str, n: int = 1, max_attempts: int = 5) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, priority, max_attempts)"
            " SELECT %s, 8, %s FROM generate_series(1, %s)",
            (kind, max_attempts, n),
        )


def text(page: Any, testid: str) -> str:
    return str(page.get_by_test_id(testid).inner_text())


def test_dashboard_follows_the_queue_and_retries_a_failed_task(dsn, browser, dashboard_url):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CREATE_RUNS)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(dashboard_url)
    page.get_by_test_id("connection").filter(has_text="live").wait_for()
    assert text(page, "tile-done") == "0" and text(page, "tile-pending") == "0"

    insert(dsn, "test.noop", 5)  # no worker yet: the page shows them pending
    wait_for(lambda: text(page, "tile-pending") == "5", timeout=10)
    assert text(page, "pending-default-high") == "5"

    worker = start_worker(dsn, "--concurrency", "2")
    try:
        wait_for(lambda: text(page, "tile-done") == "5", timeout=30)
        assert text(page, "tile-pending") == "0"
        assert "5 done in the window" in text(page, "throughput-done")
        page.get_by_test_id("workers").get_by_text("ok").first.wait_for()

        insert(dsn, "test.fail", max_attempts=1)
        failure = page.locator("[data-testid^=failure-]").first
        failure.wait_for(timeout=30_000)
        assert "ValueError: boom on attempt 1" in failure.inner_text()
        assert text(page, "tile-failed") == "1"
    finally:
        code, _ = stop(worker)  # stopped, so the retried task stays visibly pending
    assert code == 0

    task_id = int(str(failure.get_attribute("data-testid")).removeprefix("failure-"))
    page.get_by_test_id(f"retry-{task_id}").click()
    page.get_by_test_id("message").filter(has_text="1 back to pending").wait_for()
    wait_for(lambda: text(page, "tile-pending") == "1", timeout=10)
    page.get_by_test_id(f"failure-{task_id}").wait_for(state="detached")
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT status FROM angela_queue.tasks WHERE id = %s", (task_id,))
        assert row.fetchone() == ("pending",)
    if os.environ.get("ANGELA_QUEUE_SCREENSHOT"):
        page.screenshot(path=os.environ["ANGELA_QUEUE_SCREENSHOT"], full_page=True)


def test_dashboard_requeues_dropped_tasks(dsn, browser, dashboard_url):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE angela_queue.queues SET max_size = 2 WHERE name = 'default'")
        conn.execute(
            "INSERT INTO angela_queue.tasks (kind, priority)"
            " SELECT 'test.noop', 2 FROM generate_series(1, 4)"
        )
    page = browser.new_page()
    page.goto(dashboard_url)
    page.get_by_test_id("dropped-default").filter(has_text="2 dropped").wait_for()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE angela_queue.queues SET max_size = 3 WHERE name = 'default'")
    page.get_by_test_id("requeue-default").click()
    page.get_by_test_id("message").filter(has_text="1 back to pending").wait_for()
    page.get_by_test_id("dropped-default").filter(has_text="1 dropped").wait_for()
    assert text(page, "tile-pending") == "3"
