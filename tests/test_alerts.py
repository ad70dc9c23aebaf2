"""Alerts: built from real run results, delivered to a real local HTTP server and a shell command."""

from __future__ import annotations

import json
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from headrace.observe.alerts import Alert, AlertSender, alerts_for_run
from headrace.project.config import AlertsConfig
from headrace.runner.events import RunResult, TaskOutcome

from conftest import Hook, run_project


def _sender(delays: list[float] | None = None, **config: Any) -> AlertSender:
    sleeps = delays if delays is not None else []
    return AlertSender(AlertsConfig(**config), backoff_seconds=0.01, sleep=sleeps.append)


def _alert(**kw: Any) -> Alert:
    return Alert(**{"kind": "run_failed", "title": "run r1 failed", "text": "• a: boom",
                    "run_id": "r1", "project": "demo", "table": None,
                    "details": {"failed": [{"table": "a"}]}, **kw})


def _result(*tasks: TaskOutcome, status: str = "failed") -> RunResult:
    now = datetime.now(UTC)
    return RunResult(run_id="20260101T000000-000001", status=status, started_at=now - timedelta(seconds=3),
                     ended_at=now, tasks=list(tasks))


# --------------------------------------------------------------------------- webhook


def test_webhook_payload(hook: Hook) -> None:
    report = _sender(webhook=hook.url).send(_alert(table="gold.x"))
    assert report.ok and report.delivered
    assert [(d.target, d.attempts, d.status) for d in report.deliveries] == [("webhook", 1, 200)]
    [request] = hook.requests
    assert request["path"] == "/hook/T123/secret"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["body"]
    assert body["text"] == "[demo] run r1 failed\n• a: boom"  # what Slack shows
    assert body["kind"] == "run_failed" and body["run_id"] == "r1" and body["project"] == "demo"
    assert body["table"] == "gold.x" and body["details"] == {"failed": [{"table": "a"}]}
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None


def test_webhook_retries_after_500_then_succeeds(hook: Hook) -> None:
    hook.statuses = [500, 503]
    delays: list[float] = []
    report = _sender(delays, webhook=hook.url, retries=3).send(_alert())
    assert report.ok
    assert report.deliveries[0].attempts == 3 and report.deliveries[0].status == 200
    assert len(hook.requests) == 3
    assert delays == [0.01, 0.02]  # exponential backoff


def test_webhook_400_is_not_retried_and_not_raised(hook: Hook) -> None:
    hook.statuses = [400]
    delays: list[float] = []
    report = _sender(delays, webhook=hook.url, retries=3).send(_alert())
    assert not report.ok
    delivery = report.deliveries[0]
    assert delivery.attempts == 1 and delivery.status == 400 and "HTTP 400" in (delivery.error or "")
    assert len(hook.requests) == 1 and delays == []


def test_webhook_500_until_retries_run_out(hook: Hook) -> None:
    hook.statuses = [500] * 5
    report = _sender(webhook=hook.url, retries=2).send(_alert())
    assert not report.ok and report.deliveries[0].attempts == 3 and report.deliveries[0].status == 500
    assert len(hook.requests) == 3


def test_unreachable_webhook_is_reported_not_raised() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = _sender(webhook=f"http://127.0.0.1:{port}/x", retries=1, timeout_seconds=2).send(_alert())
    assert not report.ok
    assert report.deliveries[0].attempts == 2 and "cannot reach webhook" in (report.deliveries[0].error or "")


def test_kinds_not_listed_in_on_are_skipped(hook: Hook) -> None:
    sender = _sender(webhook=hook.url, on=["sla_missed"])
    report = sender.send(_alert())
    assert report.ok and not report.delivered and report.skipped == "run_failed is not in alerts.on"
    assert hook.requests == []
    assert sender.send(_alert(kind="sla_missed")).delivered
    assert AlertSender(None).send(_alert()).skipped == "alerts are not configured"


# --------------------------------------------------------------------------- command


def test_command_receives_payload_and_env(tmp_path: Path, hook: Hook) -> None:
    script = ("import json, os, sys; p = json.load(sys.stdin); "
              "open('got.json', 'w').write(json.dumps({'payload': p, 'kind': os.environ['HEADRACE_ALERT_KIND'], "
              "'run': os.environ['HEADRACE_ALERT_RUN_ID'], 'table': os.environ['HEADRACE_ALERT_TABLE']}))")
    sender = AlertSender(AlertsConfig(webhook=hook.url, command=f"{sys.executable} -c \"{script}\""),
                         cwd=tmp_path)
    report = sender.send(_alert(table="bronze.t"))
    assert report.ok and [d.target for d in report.deliveries] == ["webhook", "command"]
    got = json.loads((tmp_path / "got.json").read_text())
    assert got["kind"] == "run_failed" and got["run"] == "r1" and got["table"] == "bronze.t"
    assert got["payload"] == hook.bodies()[0]  # the same JSON as the webhook


def test_command_non_zero_exit_is_retried(tmp_path: Path) -> None:
    command = 'n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; ' \
              'echo "attempt $n" >&2; [ "$n" -ge 3 ]'
    delays: list[float] = []
    sender = AlertSender(AlertsConfig(command=command, retries=5), backoff_seconds=0.01,
                         sleep=delays.append, cwd=tmp_path)
    report = sender.send(_alert())
    assert report.ok and report.deliveries[0].attempts == 3
    assert (tmp_path / "count").read_text().strip() == "3" and len(delays) == 2
    failing = AlertSender(AlertsConfig(command="echo broken >&2; exit 7", retries=1),
                          backoff_seconds=0.01, sleep=delays.append, cwd=tmp_path).send(_alert())
    assert not failing.ok
    assert failing.deliveries[0].status == 7 and "exited with 7: broken" in (failing.deliveries[0].error or "")


# --------------------------------------------------------------------------- alerts_for_run


def test_alerts_for_run_is_pure_and_classifies() -> None:
    ok = TaskOutcome(table="bronze.a", status="success")
    checks = TaskOutcome(table="bronze.b", status="failed", error_kind="DataQualityError",
                         error="table 'bronze.b': 1 error check(s) failed (unique_id); nothing was published",
                         hint="see `headrace checks bronze.b`")
    breaker = TaskOutcome(table="bronze.c", status="failed", error_kind="DataQualityError",
                          error="source 'raw': 5 of 10 records (50.0%) break the contract, above "
                          "max_quarantine_ratio 10.0%")
    crash = TaskOutcome(table="bronze.d", status="failed", error_kind="TransformError", error="boom\nmore")
    skipped = TaskOutcome(table="silver.b", status="skipped", message="upstream bronze.b failed")
    result = _result(ok, checks, breaker, crash, skipped)
    alerts = alerts_for_run(result, "demo")
    assert [(a.kind, a.table) for a in alerts] == [
        ("run_failed", None), ("check_failed", "bronze.b"), ("quarantine_breaker", "bronze.c")]
    run_failed = alerts[0]
    assert run_failed.run_id == result.run_id and run_failed.project == "demo"
    assert "3 failed, 1 skipped of 5 tables" in run_failed.title
    assert "• bronze.d (TransformError): boom" in run_failed.text and "more" not in run_failed.text
    assert "• skipped: silver.b" in run_failed.text
    assert [f["table"] for f in run_failed.details["failed"]] == ["bronze.b", "bronze.c", "bronze.d"]
    assert "hint: see `headrace checks bronze.b`" in alerts[1].text
    assert alerts_for_run(_result(ok, status="success"), "demo") == []


PIPE = '''
import headrace as hr
orders_raw = hr.files("data/orders.csv", format="csv")
events_raw = hr.files("data/events.csv", format="csv")

@hr.table("bronze.orders", source=orders_raw, write="overwrite", checks=[hr.check.unique("order_id")])
def orders(raw):
    return raw

@hr.table("silver.orders", inputs={"o": "bronze.orders"})
def silver(o):
    return o

@hr.table("bronze.events", source=events_raw, write="overwrite",
          contract=hr.Contract({"id": hr.Int64(), "n": hr.Int64(min=0)}, max_quarantine_ratio=0.1))
def events(raw):
    return raw
'''


def test_alerts_from_a_real_failed_run(make_project, hook: Hook) -> None:
    root = make_project({
        "pipelines/p.py": PIPE,
        "data/orders.csv": "order_id,amount\n1,5\n1,6\n",
        "data/events.csv": "id,n\n1,5\n2,-1\n",
    })
    result = run_project(root)
    assert result.status == "failed"
    alerts = alerts_for_run(result, "t")
    assert [(a.kind, a.table) for a in alerts] == [  # tables in run order
        ("run_failed", None), ("quarantine_breaker", "bronze.events"), ("check_failed", "bronze.orders")]
    assert "• skipped: silver.orders" in alerts[0].text
    reports = _sender(webhook=hook.url).send_all(alerts)
    assert all(r.delivered for r in reports)
    assert [b["kind"] for b in hook.bodies()] == ["run_failed", "quarantine_breaker", "check_failed"]
    assert all(b["run_id"] == result.run_id for b in hook.bodies())


def test_cli_run_failure_alerts_the_webhook(make_project, hook):
    """`headrace run` (not only the scheduler) delivers a run_failed alert."""
    from conftest import BASE_TOML, cli

    toml = BASE_TOML + f'\n[alerts]\nwebhook = "{hook.url}"\nretries = 0\n'
    root = make_project({"pipelines/p.py": 'import headrace as hr\nsrc = hr.files("data/a.csv", format="csv")\n\n'
                         '@hr.table("bronze.a", source=src)\ndef a(raw):\n    raise ValueError("boom")\n',
                         "data/a.csv": "x\n1\n"}, toml=toml)
    proc = cli(root, "run")
    assert proc.returncode == 1
    bodies = hook.bodies()
    assert len(bodies) == 1 and bodies[0]["kind"] == "run_failed" and "bronze.a" in bodies[0]["text"]
