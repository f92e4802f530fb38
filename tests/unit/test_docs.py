"""The README documents every setting and every CLI command (so that the docs cannot rot)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from angela_queue.cli import app
from angela_queue.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    missing = []
    for f in fields(Settings):
        name = f"ANGELA_QUEUE_{f.name.upper()}"
        # Paired settings share a row: ANGELA_QUEUE_POLL_BUSY_S / _NORMAL_S / _IDLE_S.
        short = "_" + f.name.upper().split("_", 1)[-1]
        if name not in README and short not in README:
            missing.append(name)
    assert missing == []


def test_every_command_is_in_the_readme():
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    names |= {g.name or "" for g in app.registered_groups}
    assert names >= {"migrate", "worker", "enqueue", "status", "supervise", "reap", "demo"}
    for name in names:
        assert f"`{name}" in README, name
