"""desired_workers at every threshold edge (DESIGN.md §6: up when pending > 10, down < 2)."""

from __future__ import annotations

import pytest

from angela_queue.scaling import ScalingPolicy, desired_workers
from angela_queue.settings import PROFILES

STANDARD = ScalingPolicy(
    base_workers=4,
    min_workers=2,
    max_workers=6,
    scale_up_threshold=10,
    scale_down_threshold=2,
    max_spawn_per_check=4,
)


@pytest.mark.parametrize(
    ("current", "pending", "target"),
    [
        (3, 11, 4),  # just above the up threshold: one more
        (3, 10, 3),  # at the threshold: hold
        (3, 2, 3),  # at the down threshold: hold
        (3, 1, 2),  # just below: one fewer
        (3, 0, 2),
        (2, 0, 2),  # never below min
        (6, 500, 6),  # never above max
        (5, 11, 6),
        (1, 5, 2),  # below min (e.g. a worker died): back to min
        (7, 5, 6),  # above max (e.g. max lowered): back to max
    ],
)
def test_one_step_within_bounds(current, pending, target):
    assert desired_workers(current, pending, STANDARD).target == target


def test_cold_start_begins_at_base_whatever_the_backlog():
    for pending in (0, 1, 11, 10_000):
        decision = desired_workers(0, pending, STANDARD)
        assert decision.target == 4 and decision.action == "start 4"


def test_tier_at_risk_scales_up_even_with_a_small_backlog():
    decision = desired_workers(3, 1, STANDARD, tier_at_risk="high")
    assert decision.target == 4 and "high tier" in decision.reason
    assert desired_workers(6, 1, STANDARD, tier_at_risk="high").target == 6


def test_spawns_per_check_are_capped():
    policy = ScalingPolicy(
        base_workers=8,
        min_workers=8,
        max_workers=8,
        scale_up_threshold=10,
        scale_down_threshold=2,
        max_spawn_per_check=3,
    )
    decision = desired_workers(0, 100, policy)
    assert decision.target == 3 and "at most 3 started per check" in decision.reason
    assert desired_workers(3, 100, policy).target == 6


@pytest.mark.parametrize("name", ["low", "standard", "high"])
def test_profiles_start_at_their_base(name):
    p = PROFILES[name]
    policy = ScalingPolicy(p["base_workers"], p["min_workers"], p["max_workers"], 10, 2, 8)
    assert desired_workers(0, 0, policy).target == p["base_workers"]
    assert desired_workers(p["max_workers"], 999, policy).target == p["max_workers"]
    assert desired_workers(p["min_workers"], 0, policy).target == p["min_workers"]


def test_decision_reads_as_one_line():
    d = desired_workers(3, 50, STANDARD)
    assert (d.action, d.reason) == ("start 1", "pending 50 > 10")
    assert desired_workers(3, 0, STANDARD).action == "stop 1"
    assert desired_workers(3, 5, STANDARD).action == "hold"


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match="min_workers"):
        ScalingPolicy(4, 5, 4, 10, 2, 1)
