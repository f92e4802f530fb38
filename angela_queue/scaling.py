"""How many workers a host should run: a pure function of what the supervisor observed.

Kept free of I/O so that every threshold edge is unit-tested on its own (DESIGN.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingPolicy:
    """The numbers a profile carries, after settings and flags override them."""

    base_workers: int
    min_workers: int
    max_workers: int
    scale_up_threshold: int
    scale_down_threshold: int
    max_spawn_per_check: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError("need 1 <= min_workers <= max_workers")
        if self.scale_down_threshold > self.scale_up_threshold:
            raise ValueError("scale_down_threshold must not exceed scale_up_threshold")
        if self.max_spawn_per_check < 1:
            raise ValueError("max_spawn_per_check must be at least 1")


@dataclass(frozen=True)
class Decision:
    """The target worker count and why, as one log line says it."""

    current: int
    target: int
    reason: str

    @property
    def action(self) -> str:
        if self.target > self.current:
            return f"start {self.target - self.current}"
        if self.target < self.current:
            return f"stop {self.current - self.target}"
        return "hold"


def desired_workers(
    current: int, pending: int, policy: ScalingPolicy, *, tier_at_risk: str | None = None
) -> Decision:
    """Decide the worker count for this check.

    ``current`` counts live workers not already asked to stop; ``pending`` is the due backlog
    of the queues served; ``tier_at_risk`` names a tier whose oldest task has used more than
    half its target wait. With no workers the host starts from ``base_workers``; otherwise
    it moves one step: up when the backlog exceeds the up threshold or a tier is at risk,
    down when it is below the down threshold. The result stays within [min, max], and a
    single check never starts more than ``max_spawn_per_check`` workers (no fork storm).
    """
    lo, hi = policy.min_workers, policy.max_workers
    if current == 0:
        target, reason = policy.base_workers, "no workers: start from base"
    elif pending > policy.scale_up_threshold:
        target, reason = current + 1, f"pending {pending} > {policy.scale_up_threshold}"
    elif tier_at_risk is not None:
        target, reason = current + 1, f"{tier_at_risk} tier used over half its target wait"
    elif pending < policy.scale_down_threshold:
        target, reason = current - 1, f"pending {pending} < {policy.scale_down_threshold}"
    else:
        target, reason = current, "backlog within thresholds"
    if target < lo:
        target, reason = lo, f"{reason}; kept at min {lo}"
    elif target > hi:
        target, reason = hi, f"{reason}; capped at max {hi}"
    if target - current > policy.max_spawn_per_check:
        target = current + policy.max_spawn_per_check
        reason = f"{reason}; at most {policy.max_spawn_per_check} started per check"
    return Decision(current=current, target=target, reason=reason)
