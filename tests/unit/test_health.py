"""Pure pieces of worker health: reaper schedule, loop verdicts, heartbeat status."""

from __future__ import annotations

import random

from angela_queue.heartbeat import WorkerCounters
from angela_queue.reaper import ReaperConfig, ReapResult, Schedule
from angela_queue.store import Reclaimed
from angela_queue.watchdog import (
    EXIT_DECLARED_DEAD,
    EXIT_OK,
    EXIT_STUCK,
    exit_code_for,
    loop_verdict,
)


def test_schedule_waits_for_a_healthy_heartbeat_timeout_before_the_first_pass():
    schedule = Schedule(ReaperConfig(heartbeat_timeout_s=30, interval_s=5), random.Random(1))
    assert not schedule.due(now=100)  # never healthy yet
    schedule.healthy(now=100)
    assert not schedule.due(now=129)  # other workers may not have beaten since the outage
    assert schedule.due(now=131)
    assert not schedule.due(now=132)  # next pass at most one interval later
    assert schedule.due(now=136)


def test_schedule_starts_over_after_the_connection_broke():
    schedule = Schedule(ReaperConfig(heartbeat_timeout_s=10, interval_s=1))
    schedule.healthy(now=0)
    assert schedule.due(now=11)
    schedule.broken()
    schedule.healthy(now=20)
    assert not schedule.due(now=25)
    assert schedule.due(now=31)


def test_schedule_jitter_stays_within_its_bounds_and_spreads():
    schedule = Schedule(ReaperConfig(interval_s=5, jitter=0.2), random.Random(7))
    delays = [schedule.delay() for _ in range(500)]
    # Never later than the interval: the worker's reaper runs right after a beat.
    assert min(delays) >= 4.0 and max(delays) <= 5.0
    assert max(delays) - min(delays) > 0.8


def test_loop_verdict_goes_stuck_then_gives_up_when_any_reaper_would_reclaim():
    assert loop_verdict(1.0, heartbeat_timeout_s=30, longest_timeout_s=60) == "ok"
    assert loop_verdict(31.0, heartbeat_timeout_s=30, longest_timeout_s=60) == "stuck"
    assert loop_verdict(89.0, heartbeat_timeout_s=30, longest_timeout_s=60) == "stuck"
    assert loop_verdict(91.0, heartbeat_timeout_s=30, longest_timeout_s=60) == "give_up"
    # With no task running, a blocked loop is given up after two heartbeat timeouts.
    assert loop_verdict(61.0, heartbeat_timeout_s=30, longest_timeout_s=0) == "give_up"


def test_the_most_severe_exit_code_wins():
    assert exit_code_for(set()) == EXIT_OK
    assert exit_code_for({EXIT_OK, EXIT_DECLARED_DEAD}) == EXIT_DECLARED_DEAD
    assert exit_code_for({EXIT_DECLARED_DEAD, EXIT_STUCK}) == EXIT_STUCK


def test_heartbeat_status_tells_stuck_before_stopping_before_active():
    counters = WorkerCounters()
    assert counters.take()["status"] == "idle"
    counters.started(7, timeout_s=60)
    counters.started(8, timeout_s=5)
    params = counters.take()
    assert (params["status"], params["current_task_id"]) == ("active", 7)
    assert counters.longest_timeout_s() == 60
    counters.stopping = True
    assert counters.take()["status"] == "stopping"
    counters.stuck.add(8)
    assert (counters.take()["status"], counters.take()["current_task_id"]) == ("stuck", 8)


def test_reap_result_summary_is_one_line():
    result = ReapResult(
        dead_workers=(3, 5),
        reclaimed=(
            Reclaimed(10, "pending", "default", 3),
            Reclaimed(11, "failed", "default", 3),
            Reclaimed(12, "pending", "default", 9),
        ),
        overdue=(12,),
    )
    assert result.retried == [10, 12] and result.failed == [11]
    assert result.summary() == (
        "2 worker(s) marked dead (3, 5); 3 task(s) reclaimed: 2 back to pending, "
        "1 failed (attempts used up), 1 of them from wedged workers"
    )
    assert "\n" not in result.summary()
