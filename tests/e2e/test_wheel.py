"""`angela-queue migrate` works from an installed wheel, outside this repository."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from angela_queue import migrate
from tests.e2e.helpers import ROOT

pytestmark = pytest.mark.slow


def test_wheel_ships_the_migrations_and_migrates_from_elsewhere(tmp_path: Path, empty_dsn):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("angela_queue-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "angela_queue/_alembic/env.py" in names
    assert any(n.startswith("angela_queue/_alembic/versions/0001_") for n in names)
    # The dashboard works offline: its page, script and styles ship in the package.
    for asset in ("index.html", "app.js", "style.css"):
        assert f"angela_queue/dashboard/static/{asset}" in names

    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--quiet",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "ANGELA_QUEUE_DSN": empty_dsn}
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import angela_queue.migrate as m; print(m.__file__); print(m.alembic_dir())",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    module_file, migrations = where.stdout.split()
    assert module_file.startswith(str(target)) and migrations.startswith(str(target))
    result = subprocess.run(
        [sys.executable, "-m", "angela_queue.cli", "migrate"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"revision {migrate.head_revision()}" in result.stdout
