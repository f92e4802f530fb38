"""Short runs of scripts/chaos.py's scenarios, on real worker processes and signals."""

from __future__ import annotations

import pytest

from scripts.chaos_app import TX
from scripts.chaos_faults import run_reapers, run_zombie
from scripts.chaos_kill import run_kill

pytestmark = pytest.mark.slow

HEARTBEAT_S = 0.2
HEARTBEAT_TIMEOUT_S = 1.0


def _kill(dsn, tmp_path, *, tasks, tx_share, seed):
    return run_kill(
        dsn,
        tasks=tasks,
        workers=4,
        kill_every_s=1.0,
        task_ms=(100, 1000),
        heartbeat_s=HEARTBEAT_S,
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        tx_share=tx_share,
        time_limit_s=90,
        seed=seed,
        log_dir=tmp_path,
        say=lambda _: None,
    )


def test_killing_a_worker_every_second_loses_no_task_and_no_effect_runs_twice(dsn, conn, tmp_path):
    """Workers are SIGKILLed mid-task every second. Half the tasks write one row on
    task.conn inside their completion transaction: runs are duplicated, effects never are.
    (One run for both promises: the scenario costs ~25 s, and `chaos.py --quick` in CI
    runs it again on another server.)"""
    report = _kill(dsn, tmp_path, tasks=500, tx_share=0.5, seed=5)
    figures = "\n".join(report.lines())
    assert report.ok, figures
    assert report.lost == 0 and report.failed == 0, figures
    assert len(report.kills) >= 8, figures
    assert report.latencies, figures
    # Heartbeat timeout + one reaper interval, plus polling and a loaded two-core machine:
    # idle, the max is 1.3 s (also beside two CPU hogs), but CI running another test
    # process beside this one once stalled the reapers to 2.83 s (session 6).
    assert max(report.latencies) <= HEARTBEAT_TIMEOUT_S + HEARTBEAT_S + 2.5, figures
    # A run is repeated only when it was cut short: its process was SIGKILLed, or exited by
    # itself after a reaper declared it dead (a heartbeat late past the 1 s timeout, as
    # happened under CI load in session 9: 3 such exits, 90 extra runs for 87 killed tasks).
    assert report.extra_runs > 0, figures
    assert report.unexplained_reruns == 0, figures
    assert report.stale_writes == 0, figures
    assert 150 <= report.tx_tasks <= 350, figures
    assert report.duplicate_effects == 0 and report.missing_effects == 0, figures
    # The kills did cut transactional handlers short after their start was recorded:
    # without the transaction those runs would have left effects behind.
    (tx_reruns,) = conn.execute(
        "SELECT count(*) FROM (SELECT r.task_id FROM chaos_runs r"
        "  JOIN angela_queue.tasks t ON t.id = r.task_id AND t.kind = %s"
        " GROUP BY r.task_id HAVING count(*) > 1) d",
        (TX,),
    ).fetchone()
    assert tx_reruns > 0, figures


def test_a_paused_worker_cannot_overwrite_the_rerun(dsn, tmp_path):
    result = run_zombie(dsn, tmp_path)
    assert result.ok, "\n".join(result.report())


def test_racing_reapers_reclaim_each_expired_lease_once(dsn, tmp_path):
    result = run_reapers(dsn, tmp_path, quick=True)
    assert result.ok, "\n".join(result.report())
    assert result.figures["reclaimed"] == result.figures["leases"] == 900
