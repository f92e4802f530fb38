"""Pure parts of monitoring: health, histogram buckets, throughput buckets, JSON logs."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from angela_queue import monitoring
from angela_queue.cli.common import JsonFormatter
from angela_queue.dashboard import is_loopback


@pytest.mark.parametrize(
    ("status", "age", "health"),
    [
        ("active", 1.0, "ok"),
        ("idle", 11.0, "late"),
        ("active", 31.0, "silent"),
        ("stuck", 1.0, "stuck"),
        ("stopping", 1.0, "stopping"),
        ("dead", 1.0, "dead"),
    ],
)
def test_worker_health(status, age, health):
    assert monitoring.worker_health(status, age, 5.0, 30.0) == health


def test_cumulate_makes_cumulative_le_buckets():
    rows = [
        {"metric": "wait", "queue": "q", "tier": "low", "bucket": 0, "n": 2, "total": 0.2},
        {"metric": "wait", "queue": "q", "tier": "low", "bucket": 2, "n": 3, "total": 30.0},
        {"metric": "wait", "queue": "q", "tier": "low", "bucket": 3, "n": 1, "total": 500.0},
    ]
    h = monitoring.cumulate(rows, {"wait": (1.0, 5.0, 60.0)})[("wait", "q", "low")]
    assert h.buckets == [(1.0, 2), (5.0, 2), (60.0, 5)]
    assert h.count == 6 and h.total == pytest.approx(530.2)


def test_fill_buckets_covers_the_window_with_zeros():
    now = datetime(2026, 1, 1, 12, 0, 40, tzinfo=UTC)
    at = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    points = monitoring.fill_buckets({at: {"done": 4, "failed": 1}}, 15, 60, now)
    assert [p["at"][11:19] for p in points] == [
        "11:59:30",
        "11:59:45",
        "12:00:00",
        "12:00:15",
        "12:00:30",
    ]
    assert points[-1] == {"at": at.isoformat(), "done": 4, "failed": 1, "dropped": 0}
    assert all(p["done"] == 0 for p in points[:-1])
    assert datetime.fromisoformat(points[0]["at"]) == at - timedelta(seconds=60)


def test_json_log_lines_carry_the_event_fields():
    record = logging.LogRecord("angela_queue.worker", logging.WARNING, "", 0, "task %s", (7,), None)
    record.event = "task_failed"
    record.task_id = 7
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert "\n" not in line
    assert data["event"] == "task_failed" and data["task_id"] == 7
    assert data["message"] == "task 7" and data["level"] == "WARNING"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
