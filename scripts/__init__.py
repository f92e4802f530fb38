"""Scripts (benchmark, demo): a package so that workers can import ``scripts.bench_app``."""

from __future__ import annotations
