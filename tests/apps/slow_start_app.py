"""sample_app's handlers in a module that takes 3 s to import: a worker slow to start."""

from __future__ import annotations

import time

from tests.apps.sample_app import app

time.sleep(3.0)

__all__ = ["app"]
