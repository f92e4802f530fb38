"""status --json, the metrics endpoint, the dashboard's guard and JSON logs, as users run them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import dict_row

from tests.apps.sample_app import CREATE_RUNS
from tests.e2e.helpers import ROOT, start_worker, stop, wait_for
from tests.e2e.test_cli import assert_one_line_error, cli
from tests.history import add_worker, seed_history

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(dsn: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "angela_queue.cli", *args],
        cwd=ROOT,
        env={**os.environ, "ANGELA_QUEUE_DSN": dsn, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_status_json_is_the_views(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_history(conn)
        add_worker(conn, status="idle", heartbeat_ago=2, completed=3)
    result = cli("status", "--json", dsn=dsn)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        stats = conn.execute("SELECT * FROM angela_queue.queue_stats").fetchall()
        workers = conn.execute("SELECT * FROM angela_queue.worker_stats").fetchall()
    active = [r for r in stats if r["pending"] or r["done_1h"] or r["dropped_1h"] or r["running"]]
    assert [(q["queue"], q["tier"]) for q in data["queues"]] == [
        (r["queue"], r["tier"]) for r in active
    ]
    for shown, row in zip(data["queues"], active, strict=True):
        for column, value in row.items():
            if column != "oldest_pending_age_s":  # an age, read a moment apart
                assert shown[column] == value, column
    assert [w["id"] for w in data["workers"]] == [w["id"] for w in workers]
    assert data["workers"][0]["tasks_completed"] == 3 and data["workers"][0]["health"] == "ok"
    assert data["decisions"] == []
    everything = json.loads(cli("status", "--json", "--all", dsn=dsn).stdout)
    assert len(everything["queues"]) == len(stats)


def test_metrics_endpoint_parses_and_carries_the_queue(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_history(conn)
        add_worker(conn, status="active", heartbeat_ago=1, completed=9)
        row = conn.execute(
            "SELECT count(*) FROM angela_queue.tasks WHERE status = 'pending' AND ready"
        ).fetchone()
        assert row is not None
        due = row[0]
    port = free_port()
    proc = serve(dsn, "metrics", "--port", str(port))
    try:
        status, text = wait_for(lambda: (r := get(f"http://127.0.0.1:{port}/metrics"))[0] and r)
    finally:
        code, output = stop(proc)
    assert status == 200, output
    fams = families(text)
    for name in (
        "angela_queue_up",
        "angela_queue_depth",
        "angela_queue_oldest_wait_seconds",
        "angela_queue_target_wait_seconds",
        "angela_queue_tasks_finished_last_hour",
        "angela_queue_dropped",
        "angela_queue_retried_last_hour",
        "angela_queue_reclaimed",
        "angela_queue_workers",
        "angela_queue_slo_met_ratio",
        "angela_queue_wait_seconds",
        "angela_queue_processing_seconds",
        "angela_queue_worker_tasks",
        "angela_queue_unserved_pending",
    ):
        assert name in fams, name

    samples = [s for f in fams.values() for s in f.samples]  # type: ignore[attr-defined]

    def value(name: str, **labels: str) -> float:
        return next(
            s.value for s in samples if s.name == name and labels.items() <= s.labels.items()
        )

    assert value("angela_queue_up") == 1
    assert value("angela_queue_depth", tier="medium", state="pending") == 3
    assert value("angela_queue_tasks_finished_last_hour", tier="high", outcome="failed") == 1
    assert value("angela_queue_dropped", tier="low") == 2
    assert value("angela_queue_reclaimed", tier="medium") == 1
    assert value("angela_queue_workers", status="active") == 1
    assert value("angela_queue_slo_met_ratio", tier="high") == pytest.approx(0.8)
    assert fams["angela_queue_wait_seconds"].type == "histogram"  # type: ignore[attr-defined]
    assert value("angela_queue_wait_seconds_bucket", tier="high", le="+Inf") == 5
    assert value("angela_queue_wait_seconds_bucket", tier="high", le="60") == 4
    assert value("angela_queue_worker_tasks_total", outcome="succeeded") == 9
    # The seeded tasks are all of kind a.b, which the seeded worker has no handler for.
    assert value("angela_queue_unserved_pending", queue="default", kind="a.b") == due > 0
    assert code == 0 and "Traceback" not in output


def test_dashboard_refuses_an_exposed_host_without_a_token(dsn):
    assert_one_line_error(cli("dashboard", "--host", "0.0.0.0", dsn=dsn), "--token")
    assert_one_line_error(
        cli("dashboard", "--token", "short", dsn=dsn), "--token must be at least 8"
    )


def test_dashboard_token_guards_every_route(dsn):
    port = free_port()
    token = "s3cret-token"
    proc = serve(dsn, "dashboard", "--port", str(port), env={"ANGELA_QUEUE_DASHBOARD_TOKEN": token})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{base}/healthz")[0] == 200)
        assert get(f"{base}/api/snapshot")[0] == 401
        assert get(f"{base}/metrics")[0] == 401
        auth = {"Authorization": f"Bearer {token}"}
        status, body = get(f"{base}/api/snapshot", auth)
        assert status == 200 and json.loads(body)["queues"] == []
        status, text = get(f"{base}/metrics", auth)
        assert status == 200 and "angela_queue_up" in families(text)
        assert get(f"{base}/api/snapshot", {"Authorization": "Bearer wrong-token"})[0] == 401
        assert get(f"{base}/", {"Host": "attacker.example"})[0] == 421
        post = urllib.request.Request(f"{base}/api/tasks/1/retry", method="POST", headers=auth)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(post, timeout=10)
        refused.value.close()
        assert refused.value.code == 403  # no X-Angela-Queue header: not from the page
    finally:
        code, output = stop(proc)
    assert code == 0 and "Traceback" not in output


def test_worker_json_logs_are_one_object_per_line(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(CREATE_RUNS)
        conn.execute("INSERT INTO angela_queue.tasks (kind, max_attempts) VALUES ('test.fail', 1)")
    proc = start_worker(dsn, "--log-format", "json")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_for(
                lambda: conn.execute(
                    "SELECT 1 FROM angela_queue.tasks WHERE status = 'failed'"
                ).fetchone()
            )
    finally:
        code, output = stop(proc)
    assert code == 0
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len(events) == len([ln for ln in output.splitlines() if ln.strip()]), output
    by_event = {e.get("event"): e for e in events}
    assert {"worker_started", "task_failed", "worker_stopping", "worker_stopped"} <= set(by_event)
    failed = by_event["task_failed"]
    assert failed["kind"] == "test.fail" and failed["will_retry"] is False
    assert "boom on attempt 1" in failed["error"] and failed["level"] == "WARNING"


def test_monitoring_commands_have_help():
    for args in (("metrics", "--help"), ("dashboard", "--help"), ("status", "--help")):
        result = cli(*args)
        assert result.returncode == 0 and "Usage" in result.stdout, (args, result.stderr)


def test_bad_log_format_is_one_line(dsn):
    result = cli("worker", "--app", "tests.apps.sample_app:app", "--log-format", "xml", dsn=dsn)
    assert_one_line_error(result, "--log-format must be text or json")
