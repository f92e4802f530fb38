"""The demo's live panel (what a terminal shows) renders tiers with progress bars, boosts,
the workers' slots, batches and the supervisor's decisions."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from angela_queue.demo import view


def test_the_live_panel_shows_tiers_boosts_slots_batches_and_decisions():
    now = datetime.now(UTC)
    setup = view.Setup("host", now, now, "standard", 3, 2, 6)
    snap = view.Snapshot(
        counts={"critical": (0, 1, 30, 0), "low": (40, 3, 10, 0)},
        recent=[view.Started(7, "conversation.analyze", 7, 6, "critical", 11, 0.02, 10.0, "live")],
        workers=[view.Worker(1, 11, "active", False, 3, 2, 9, 2)],
        numbers={11: 1},
        batches=2,
        batched_tasks=9,
        decisions=[view.Decision(1, 0.5, 176, 4, 5, "start 1", "pending 176 > 10")],
    )
    console = Console(record=True, width=120)
    console.print(view.render(snap, 224, 12.5, 3.0, setup))
    text = console.export_text()
    for expected in (
        "critical",
        "━",  # progress bars
        "40/224 done",
        "w1 ■■□",  # two of three slots busy
        "standard profile, 2–6",
        "batches: 2 run, 9 consolidations, 4.5 per batch",
        "supervisor: 176 pending, 4 workers → 5: start 1",
        "+6",  # the boost of the last task started
    ):
        assert expected in text, (expected, text)
