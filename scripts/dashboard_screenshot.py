"""Regenerate docs/dashboard.png: the dashboard on a seeded demo history, shot by Chromium.

The history (the last 15 minutes of finished tasks, live backlogs, three workers, a few
failures and drops) is written straight into a throwaway database, so the picture is the
same on every run. Needs Debian's chromium (`apt-get install chromium`) and playwright.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg

from scripts.bench import ServerOptions, fresh_database, server

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "dashboard.png"
PORT = 18765

SEED = [
    "INSERT INTO angela_queue.queues (name, max_size) VALUES ('learning', 20)",
    # 15 minutes of history: a busy default queue with a few failures.
    """INSERT INTO angela_queue.tasks (queue, kind, priority, enqueued_at)
       SELECT 'default', (ARRAY['conversation.analyze', 'insight.extract',
                                'pattern.learn'])[1 + i % 3],
              1 + (i * 7) % 10, now() - make_interval(secs => 900 - i * 0.9 - 1)
         FROM generate_series(1, 950) i""",
    """UPDATE angela_queue.tasks SET status = CASE WHEN id % 157 = 0 THEN 'failed'
                                               ELSE 'succeeded' END,
              attempts = CASE WHEN id % 157 = 0 THEN 5 WHEN id % 13 = 0 THEN 2 ELSE 1 END,
              first_started_at = enqueued_at + make_interval(secs => (id % 9) * 0.4),
              started_at = enqueued_at + make_interval(secs => (id % 9) * 0.4),
              finished_at = enqueued_at + make_interval(secs => (id % 9) * 0.4 + 0.05
                                                        + (id % 5) * 0.3 * (1 + sin(id / 60.0))),
              last_error = CASE WHEN id % 157 = 0 THEN E'Traceback (most recent call last):\\n'
                  '  File "learning.py", line 31, in analyze\\n'
                  '    raise TimeoutError("model endpoint did not answer in 20 s")\\n'
                  'TimeoutError: model endpoint did not answer in 20 s' END
        WHERE status = 'pending'""",
    # Live: a backlog in every tier, the oldest low-tier tasks past their target.
    """INSERT INTO angela_queue.tasks (queue, kind, priority, enqueued_at)
       SELECT 'default', 'conversation.analyze', p, now() - make_interval(secs => age)
         FROM (VALUES (9, 0.4), (8, 12), (8, 30), (6, 95), (5, 140), (5, 200),
                      (3, 1500), (2, 1900), (1, 2100)) v(p, age)""",
    # A full bounded queue: 20 live, the low-priority overflow dropped.
    """INSERT INTO angela_queue.tasks (queue, kind, priority, payload)
       SELECT 'learning', 'memory.consolidate', CASE WHEN i <= 20 THEN 6 ELSE 2 END,
              jsonb_build_object('conversation', 1000 + i)
         FROM generate_series(1, 26) i""",
    """INSERT INTO angela_queue.workers (hostname, pid, queues, kinds, concurrency, status,
                                        heartbeat_at, tasks_completed, tasks_failed,
                                        avg_processing_ms, last_active_at, started_at)
       VALUES ('learner-1', 41210, '{default,learning}', '{}', 8, 'active', now() - interval '2 s',
               512, 9, 684.2, now(), now() - interval '20 minutes'),
              ('learner-2', 41388, '{default}', '{}', 8, 'active', now() - interval '4 s',
               437, 14, 702.9, now(), now() - interval '20 minutes'),
              ('learner-3', 40102, '{default}', '{}', 8, 'idle', now() - interval '14 s',
               230, 2, 655.0, now() - interval '15 s', now() - interval '35 minutes')""",
    """WITH picked AS (SELECT id FROM angela_queue.tasks
                        WHERE status = 'pending' AND queue = 'learning' ORDER BY id LIMIT 3)
       UPDATE angela_queue.tasks t SET status = 'running', attempts = 1, worker_id = 1,
              started_at = now(), first_started_at = now()
         FROM picked WHERE t.id = picked.id""",
    "UPDATE angela_queue.workers SET current_task_id = (SELECT min(id) FROM angela_queue.tasks"
    " WHERE status = 'running') WHERE hostname = 'learner-1'",
]


def main() -> int:
    from playwright.sync_api import sync_playwright

    cfg = ServerOptions(None, fast_durability=True)
    with server(cfg) as srv, fresh_database(srv.dsn, "shot") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for statement in SEED:
                conn.execute(statement.encode())
        proc = subprocess.Popen(
            [sys.executable, "-m", "angela_queue.cli", "dashboard", "--port", str(PORT)],
            cwd=ROOT,
            env={**os.environ, "ANGELA_QUEUE_DSN": dsn},
        )
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
                )
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"http://127.0.0.1:{PORT}/")
                page.get_by_test_id("connection").filter(has_text="live").wait_for()
                page.wait_for_timeout(500)
                page.screenshot(path=str(OUT), full_page=True)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
