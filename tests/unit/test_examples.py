"""examples/ cannot drift: the demo runs the example handler module, and the README shows
every example file verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# <!-- example: examples/FILE --> right before a fenced block that shows FILE.
EMBED = re.compile(r"<!-- example: (examples/[\w.]+) -->\n```\w*\n(.*?)```", re.S)


def test_the_demo_runs_the_example_handler_module_byte_for_byte():
    demo = (ROOT / "angela_queue" / "demo" / "app.py").read_text()
    assert demo == (ROOT / "examples" / "learning.py").read_text()


def test_the_readme_shows_every_example_file_verbatim():
    readme = (ROOT / "README.md").read_text()
    shown = {path: body for path, body in EMBED.findall(readme)}
    files = {f"examples/{p.name}" for p in (ROOT / "examples").iterdir() if p.is_file()}
    assert set(shown) == files
    for path, body in shown.items():
        assert body == (ROOT / path).read_text(), path
