"""The runtime SQL, loaded once from queries.sql into a name → statement mapping."""

from __future__ import annotations

import re
from importlib import resources
from types import MappingProxyType
from typing import LiteralString

_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, LiteralString]:
    """Split ``-- name:`` blocks; duplicate names are an error at import time."""
    parts = _NAME.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name {name!r} in queries.sql")
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


QUERIES = MappingProxyType(
    parse(resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8"))
)
