"""Payload decoding that no stored row can turn into a worker crash.

PostgreSQL stores a jsonb payload nested thousands of levels deep, which Python's JSON
decoder refuses (RecursionError) while loading the claim's rows. The worker's connections
decode with ``tolerant_loads``: such a payload becomes an ``UndecodablePayload``, and the
task fails at once with the reason instead of taking the worker down with it.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import set_json_loads

UNDECODABLE_REASON = (
    "UndecodablePayload: the payload is nested too deeply for Python's JSON decoder"
)


class UndecodablePayload(dict[str, Any]):
    """An empty mapping standing for a payload Python cannot decode; ``reason`` says why."""

    def __init__(self, reason: str = UNDECODABLE_REASON) -> None:
        super().__init__()
        self.reason = reason


# The decoder's own scanner (C): json.loads adds an encoding guess and two regex matches
# around it, which is more than half its cost for a small payload.
# (typeshed types make_scanner as the class it is; its argument is a decoder.)
_scan_once: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]
)


def tolerant_loads(data: str | bytes) -> Any:
    """``json.loads``, except that a too deeply nested document is an UndecodablePayload.

    PostgreSQL's json output is UTF-8 without leading whitespace, which the scanner reads
    directly; anything else goes through ``json.loads``."""
    try:
        text = data if isinstance(data, str) else str(data, "utf-8")
        try:
            value, end = _scan_once(text, 0)
        except StopIteration:
            return json.loads(text)  # not a document the scanner starts on: json's error
        return value if end == len(text) else json.loads(text)
    except RecursionError:
        return UndecodablePayload()


def decode_tolerantly(conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any]) -> None:
    """Make ``conn`` load json and jsonb with ``tolerant_loads``."""
    set_json_loads(tolerant_loads, conn)
