"""Alerts: what went wrong in a run, delivered to a webhook and/or a shell command.

Two halves, kept apart so the runner can build alerts without any I/O:

* :func:`alerts_for_run` turns a finished :class:`~headrace.runner.events.RunResult` into
  :class:`Alert` values (pure: no store, no network).
* :class:`AlertSender` delivers them as configured in ``[alerts]``: a JSON ``POST`` to
  ``webhook`` (the body has a Slack-compatible ``text`` plus structured fields) and/or the
  shell ``command`` with the same JSON on stdin and ``HEADRACE_ALERT_*`` variables.

Delivery never raises into a run: every failure is logged and returned in a
:class:`DeliveryReport`. Retries (``alerts.retries``) use exponential backoff and apply to
connection errors, timeouts, HTTP 5xx/429 and a non-zero exit of the command; any other
HTTP 4xx is the receiver refusing the message and is not retried.

Typical use after a run::

    from headrace.observe.alerts import AlertSender, alerts_for_run

    sender = AlertSender(config.alerts, cwd=config.root)
    reports = sender.send_all(alerts_for_run(result, project=config.name))
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headrace.project.config import ALERT_KINDS, AlertsConfig
from headrace.runner.events import RunResult, TaskOutcome

__all__ = [
    "ALERT_KINDS",
    "Alert",
    "AlertSender",
    "Delivery",
    "DeliveryReport",
    "alerts_for_run",
]

log = logging.getLogger(__name__)

_USER_AGENT = "headrace-alerts/1"
_MAX_TEXT = 3000  # Slack truncates long messages badly; details keep the full errors
_OUTPUT_TAIL = 500


# --------------------------------------------------------------------------- alerts


@dataclass(frozen=True)
class Alert:
    """One thing worth telling a human about."""

    kind: str  # run_failed | check_failed | quarantine_breaker | sla_missed
    title: str
    text: str
    run_id: str | None = None
    project: str = ""
    table: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def payload(self) -> dict[str, Any]:
        """The JSON body: Slack-compatible ``text`` first, then the structured fields."""
        prefix = f"[{self.project}] " if self.project else ""
        text = f"{prefix}{self.title}\n{self.text}".strip()
        if len(text) > _MAX_TEXT:
            text = text[: _MAX_TEXT - 1] + "…"
        return {
            "text": text,
            "kind": self.kind,
            "title": self.title,
            "project": self.project,
            "run_id": self.run_id,
            "table": self.table,
            "details": self.details,
            "created_at": self.created_at.isoformat(),
        }

    def env(self) -> dict[str, str]:
        """``HEADRACE_ALERT_*`` variables for the alert command."""
        return {
            "HEADRACE_ALERT_KIND": self.kind,
            "HEADRACE_ALERT_TITLE": self.title,
            "HEADRACE_ALERT_PROJECT": self.project,
            "HEADRACE_ALERT_RUN_ID": self.run_id or "",
            "HEADRACE_ALERT_TABLE": self.table or "",
        }


def alerts_for_run(result: RunResult, project: str) -> list[Alert]:
    """The alerts a finished run calls for (none when it succeeded); pure, no I/O.

    * ``run_failed``: one per failed run, listing failed tables (with their errors) and
      skipped tables;
    * ``check_failed``: one per table stopped by failed error checks (the circuit breaker
      on ``hr.check`` results);
    * ``quarantine_breaker``: one per table whose batch was held back because its share of
      quarantined records went above ``max_quarantine_ratio``.
    """
    if result.status == "success":
        return []
    failed = [t for t in result.tasks if t.status == "failed"]
    skipped = [t for t in result.tasks if t.status == "skipped"]
    alerts = [_run_failed(result, project, failed, skipped)]
    for task in failed:
        error = task.error or ""
        if task.error_kind != "DataQualityError":
            continue
        if "error check(s) failed" in error:
            alerts.append(_table_alert("check_failed", f"checks failed on {task.table}",
                                       result, project, task))
        if "max_quarantine_ratio" in error:
            alerts.append(_table_alert("quarantine_breaker",
                                       f"quarantine breaker tripped on {task.table}",
                                       result, project, task))
    return alerts


def _run_failed(result: RunResult, project: str, failed: list[TaskOutcome],
                skipped: list[TaskOutcome]) -> Alert:
    counts = [f"{len(failed)} failed"] + ([f"{len(skipped)} skipped"] if skipped else [])
    title = f"run {result.run_id} {result.status}: {', '.join(counts)} of {len(result.tasks)} tables"
    lines = [f"• {t.table} ({t.error_kind or 'error'}): {_first_line(t.error)}" for t in failed]
    if skipped:
        lines.append("• skipped: " + ", ".join(t.table for t in skipped))
    lines.append(f"retry with: headrace retry {result.run_id}")
    return Alert(
        kind="run_failed",
        title=title,
        text="\n".join(lines),
        run_id=result.run_id,
        project=project,
        details={
            "status": result.status,
            "started_at": result.started_at.isoformat(),
            "ended_at": result.ended_at.isoformat(),
            "seconds": round(result.seconds, 3),
            "failed": [_task_details(t) for t in failed],
            "skipped": [{"table": t.table, "message": t.message} for t in skipped],
        },
        created_at=result.ended_at,
    )


def _table_alert(kind: str, title: str, result: RunResult, project: str,
                 task: TaskOutcome) -> Alert:
    text = task.error or ""
    if task.hint:
        text += f"\nhint: {task.hint}"
    return Alert(kind=kind, title=title, text=text, run_id=result.run_id, project=project,
                 table=task.table, details=_task_details(task), created_at=result.ended_at)


def _task_details(task: TaskOutcome) -> dict[str, Any]:
    return {
        "table": task.table,
        "error_kind": task.error_kind,
        "error": task.error,
        "hint": task.hint,
        "attempts": task.attempts,
        "rows_in": task.rows_in,
        "rows_quarantined": task.rows_quarantined,
    }


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "(no message)"


# --------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class Delivery:
    """The outcome of delivering one alert to one destination."""

    target: str  # "webhook" | "command"
    ok: bool
    attempts: int
    status: int | None = None  # last HTTP status or exit code
    error: str | None = None


@dataclass(frozen=True)
class DeliveryReport:
    """What happened to one alert: one :class:`Delivery` per destination it went to."""

    alert: Alert
    deliveries: tuple[Delivery, ...] = ()
    skipped: str | None = None  # why nothing was attempted (kind not in alerts.on, no config)

    @property
    def ok(self) -> bool:
        """No destination failed (an alert that was skipped on purpose is ok)."""
        return all(d.ok for d in self.deliveries)

    @property
    def delivered(self) -> bool:
        """At least one destination took the alert and none failed."""
        return bool(self.deliveries) and self.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.alert.kind,
            "title": self.alert.title,
            "table": self.alert.table,
            "ok": self.ok,
            "skipped": self.skipped,
            "deliveries": [asdict(d) for d in self.deliveries],
        }


class _Retry(Exception):
    """An attempt failed in a way worth trying again."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _GiveUp(Exception):
    """An attempt failed in a way that retrying cannot fix (HTTP 4xx)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AlertSender:
    """Delivers alerts as ``[alerts]`` says; never raises, reports instead.

    ``config`` may be ``None`` (alerts not configured): every alert is then skipped.
    ``backoff_seconds`` is the first retry delay, doubled each retry up to
    ``max_backoff_seconds``; ``sleep`` is injectable for tests. The command runs in ``cwd``
    (the project folder when the CLI builds the sender).
    """

    def __init__(
        self,
        config: AlertsConfig | None,
        *,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        cwd: Path | str | None = None,
    ) -> None:
        self.config = config
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.sleep = sleep
        self.cwd = cwd

    @property
    def enabled(self) -> bool:
        return self.config is not None and self.config.enabled

    def wants(self, kind: str) -> bool:
        """True when alerts of ``kind`` are configured to be delivered."""
        return self.enabled and self.config is not None and kind in self.config.on

    def send_all(self, alerts: Iterable[Alert]) -> list[DeliveryReport]:
        return [self.send(alert) for alert in alerts]

    def send(self, alert: Alert) -> DeliveryReport:
        """Deliver ``alert`` to every configured destination."""
        config = self.config
        if config is None or not config.enabled:
            return DeliveryReport(alert, skipped="alerts are not configured")
        if alert.kind not in config.on:
            return DeliveryReport(alert, skipped=f"{alert.kind} is not in alerts.on")
        body = json.dumps(alert.payload(), default=str).encode()
        deliveries: list[Delivery] = []
        if config.webhook:
            deliveries.append(self._deliver("webhook", alert, lambda: self._post(config, body)))
        if config.command:
            deliveries.append(self._deliver("command", alert, lambda: self._command(config, alert, body)))
        return DeliveryReport(alert, tuple(deliveries))

    # -- plumbing -----------------------------------------------------------------------

    def _deliver(self, target: str, alert: Alert, attempt: Callable[[], int]) -> Delivery:
        """Run ``attempt`` with retries; log and report the outcome."""
        assert self.config is not None
        tries = self.config.retries + 1
        last: _Retry | _GiveUp | None = None
        for number in range(1, tries + 1):
            try:
                status = attempt()
            except _GiveUp as exc:
                last = exc
                log.warning("alert %s (%s) not delivered to %s: %s", alert.kind, alert.title, target, exc)
                return Delivery(target, ok=False, attempts=number, status=exc.status, error=str(exc))
            except _Retry as exc:
                last = exc
                if number < tries:
                    delay = min(self.backoff_seconds * 2 ** (number - 1), self.max_backoff_seconds)
                    log.info("alert %s to %s failed (%s); retry %d/%d in %.1fs",
                             alert.kind, target, exc, number, tries - 1, delay)
                    self.sleep(delay)
                continue
            except Exception as exc:  # a bug or an unexpected environment: report, never raise
                last = _Retry(f"{type(exc).__name__}: {exc}")
                break
            log.info("alert %s delivered to %s (attempt %d)", alert.kind, target, number)
            return Delivery(target, ok=True, attempts=number, status=status)
        message = str(last) if last else "unknown error"
        log.warning("alert %s (%s) not delivered to %s after %d attempt(s): %s",
                    alert.kind, alert.title, target, number, message)
        return Delivery(target, ok=False, attempts=number,
                        status=getattr(last, "status", None), error=message)

    def _post(self, config: AlertsConfig, body: bytes) -> int:
        assert config.webhook is not None
        request = urllib.request.Request(
            config.webhook,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": _USER_AGENT},
        )
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_seconds) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code} {exc.reason}".strip()
            detail = _read_error_body(exc)
            message = f"{reason}: {detail}" if detail else reason
            if exc.code >= 500 or exc.code == 429:
                raise _Retry(message, exc.code) from None
            raise _GiveUp(message, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout, reset
            raise _Retry(f"cannot reach webhook: {getattr(exc, 'reason', None) or exc}") from None

    def _command(self, config: AlertsConfig, alert: Alert, body: bytes) -> int:
        assert config.command is not None
        try:
            proc = subprocess.run(
                config.command,
                shell=True,
                input=body,
                capture_output=True,
                timeout=config.timeout_seconds,
                cwd=self.cwd,
                env={**os.environ, **alert.env()},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise _Retry(f"command timed out after {config.timeout_seconds:g} s") from None
        except OSError as exc:
            raise _Retry(f"cannot start command: {exc}") from None
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip()[-_OUTPUT_TAIL:]
            raise _Retry(f"command exited with {proc.returncode}" + (f": {tail}" if tail else ""),
                         proc.returncode)
        return 0


def _read_error_body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read(_OUTPUT_TAIL).decode(errors="replace").strip()
    except Exception:
        return ""
