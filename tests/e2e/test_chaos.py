"""A small run of scripts/chaos.py's kill scenario: SIGKILL a worker every second."""

from __future__ import annotations

import pytest

from scripts.chaos import run_kill

pytestmark = pytest.mark.slow

HEARTBEAT_S = 0.2
HEARTBEAT_TIMEOUT_S = 1.0


def test_killing_a_worker_every_second_loses_no_task(dsn, tmp_path):
    report = run_kill(
        dsn,
        tasks=500,
        workers=4,
        kill_every_s=1.0,
        task_ms=(100, 1000),
        heartbeat_s=HEARTBEAT_S,
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        time_limit_s=90,
        seed=5,
        log_dir=tmp_path,
        say=lambda _: None,
    )
    figures = "\n".join(report.lines())
    assert report.ok, figures
    assert report.lost == 0 and report.failed == 0, figures
    assert len(report.kills) >= 8, figures
    assert report.latencies, figures
    # Heartbeat timeout + one reaper interval, plus polling and a loaded two-core machine.
    assert max(report.latencies) <= HEARTBEAT_TIMEOUT_S + HEARTBEAT_S + 1.5, figures
    # Duplicates come only from kills: at most the tasks running on the killed workers.
    assert report.extra_runs <= sum(len(k.task_ids) for k in report.kills), figures
