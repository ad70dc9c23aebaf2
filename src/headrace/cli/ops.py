"""Operations commands: ``serve``, ``schedules`` and ``export airflow``.

The typer wrappers live in :mod:`headrace.cli.main`; these functions take plain values so
they can be called (and tested) without typer.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headrace.cli.render import out, print_json, progress_bar, simple_table, styled
from headrace.errors import ProjectError, SelectionError
from headrace.project.config import ResolvedConfig
from headrace.runner.scheduler import (
    STATE_FILE,
    ScheduledRun,
    Scheduler,
    ScheduleState,
    next_fire,
)
from headrace.runner.state import process_gone
from headrace.runner.workspace import Workspace
from headrace.spec._names import did_you_mean

__all__ = ["build_scheduler", "export_airflow", "serve", "show_schedules"]


def _open(project: Path | None, profile: str | None) -> Workspace:
    return Workspace.open(project, profile=profile)


def build_scheduler(config: ResolvedConfig, *, profile: str | None = None, **kwargs: Any) -> Scheduler:
    """A scheduler over ``config``'s schedules, alerting as ``[alerts]`` says."""
    from headrace.observe.alerts import AlertSender

    root = config.root
    return Scheduler(
        lambda: Workspace.open(root, profile=profile),
        config.schedules,
        sender=AlertSender(config.alerts, cwd=root),
        state_path=root / STATE_FILE,
        project=config.name,
        **kwargs,
    )


def _no_schedules(config: ResolvedConfig) -> ProjectError:
    return ProjectError(
        f"{config.config_path} defines no schedules",
        hint='add a table such as [schedules.daily] with cron = "0 6 * * *" '
        "(and select = [...] to run only some tables)",
        path=str(config.config_path),
    )


def _setup_logging() -> None:
    """Scheduler and alert log lines on stderr, with a timestamp (a daemon's log)."""
    logger = logging.getLogger("headrace")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _print_run(run: ScheduledRun, *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(run.to_json(), default=str) + "\n")
        sys.stdout.flush()
        return
    sent = [r for r in run.alerts if r.deliveries]
    notes = []
    if run.run_id:
        notes.append(f"run {run.run_id}")
    if run.seconds is not None:
        notes.append(f"{run.seconds:.2f}s")
    if sent:
        failed = sum(1 for r in sent if not r.ok)
        notes.append(f"{len(sent)} alert(s) sent" + (f", {failed} not delivered" if failed else ""))
    if run.error and run.status != "success":
        notes.append(run.error.splitlines()[0])
    out.print(f"schedule {run.schedule} @ {run.interval.isoformat()}: ", styled(run.status),
              f" ({'; '.join(notes)})" if notes else "")


def serve(project: Path | None, profile: str | None, *, once: bool, as_json: bool) -> int:
    """Run due schedules: once (exit 1 when a run failed), or until SIGTERM/SIGINT (exit 0)."""
    ws = _open(project, profile)
    try:
        config = ws.config
    finally:
        ws.close()
    if not any(s.enabled for s in config.schedules.values()):
        raise _no_schedules(config)
    _setup_logging()
    if once:
        scheduler = build_scheduler(config, profile=profile)
        runs = scheduler.tick()
        if as_json:
            print_json({"runs": [r.to_json() for r in runs]})
        elif not runs:
            out.print("nothing is due")
        else:
            for run in runs:
                _print_run(run, as_json=False)
        return 0 if all(r.ok for r in runs) else 1
    scheduler = build_scheduler(config, profile=profile,
                                on_run=lambda run: _print_run(run, as_json=as_json))
    names = ", ".join(f"{n} ({s.cron})" for n, s in config.schedules.items() if s.enabled)
    logging.getLogger("headrace").info("serving %s: %s (pid %d)", config.name, names, os.getpid())
    scheduler.serve(handle_signals=True)
    return 0


def show_schedules(project: Path | None, profile: str | None, *, as_json: bool) -> None:
    """Each schedule: cron, next fire, last fired interval and its run's status."""
    ws = _open(project, profile)
    try:
        config = ws.config
    finally:
        ws.close()
    records = ScheduleState(config.root / STATE_FILE).read()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for name, schedule in config.schedules.items():
        record = records.get(name, {})
        running = record.get("running")
        status = record.get("last_status")
        if running:
            status = "abandoned" if process_gone(running.get("host"), _pid(running.get("pid"))) else "running"
        rows.append({
            "schedule": name,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "select": list(schedule.select),
            "catchup": schedule.catchup,
            "enabled": schedule.enabled,
            "next_fire": next_fire(schedule, now).isoformat() if schedule.enabled else None,
            "last_fired": record.get("last_fired"),
            "last_run_id": record.get("last_run_id"),
            "last_status": status,
            "last_ended": record.get("last_ended"),
            "max_duration": schedule.max_duration.total_seconds() if schedule.max_duration else None,
            "deadline": schedule.deadline.isoformat() if schedule.deadline else None,
        })
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(f"no schedules: add a [schedules.NAME] table to {config.config_path}")
        return
    out.print(simple_table(None, ["schedule", "cron", "timezone", "next fire", "last fired",
                                  "last status", "last run", "select"], [
        [r["schedule"], r["cron"], r["timezone"], _local(r["next_fire"], r["timezone"]) or "disabled",
         _local(r["last_fired"], r["timezone"]), styled(r["last_status"] or ""),
         r["last_run_id"] or "", " ".join(r["select"]) or "(all)"]
        for r in rows
    ]))


def _local(iso: str | None, timezone: str) -> str:
    if not iso:
        return ""
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(iso).astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")


def optimize_tables(ws: Workspace, tables: list[str] | None, *, zorder: str | None, target_size: str | None,
                    dry_run: bool, as_json: bool) -> None:
    """``headrace optimize``: compact each table under its lock, with a progress bar."""
    import time

    from headrace.delta.maintenance import OptimizeResult, optimize
    from headrace.delta.writer import writer_properties
    from headrace.project.config import parse_size

    try:
        size = ws.write_settings().target_file_size
        if target_size is not None:
            try:
                size = parse_size(target_size.strip())
            except ValueError:
                raise SelectionError(f"--target-size {target_size!r} is not a size",
                                     hint="write bytes or a size such as '128MB' or '1GB'") from None
        columns = [c.strip() for c in (zorder or "").split(",") if c.strip()]
        names = [t.lower() for t in tables] if tables else ws.lake.list_tables()
        properties = writer_properties(ws.write_settings())
        results: list[tuple[OptimizeResult, float]] = []
        with progress_bar(len(names), "optimizing", enabled=not as_json and len(names) > 1) as advance:
            for name in names:
                started = time.perf_counter()
                with ws.store.lock(f"table:{name}", owner="optimize", timeout=ws.config.run.lock_timeout_seconds):
                    results.append((optimize(ws.lake, name, target_size=size, writer_properties=properties,
                                             zorder=columns, dry_run=dry_run), time.perf_counter() - started))
                advance(name)
    finally:
        ws.close()
    if as_json:
        print_json([{**vars(r), "seconds": round(t, 3)} for r, t in results])
        return
    rows = []
    for r, seconds in results:
        if r.dry_run:
            rows.append([r.table, str(r.files_before), f"{r.files_rewritten} in {r.partitions} partition(s)", "", ""])
            continue
        done = (f"{r.files_before} -> {r.files_after} ({r.partitions} partition(s))" if r.version is not None
                else f"{r.files_before}: nothing to compact")
        rows.append([r.table, done, _mib(r.bytes_before, r.bytes_after), "" if r.version is None else str(r.version),
                     f"{seconds:.2f}s"])
    headers = (["table", "files", "would rewrite", "", ""] if dry_run
               else ["table", "files", "size", "version", "time"])
    out.print(simple_table(None, headers, rows))


def _mib(before: int, after: int) -> str:
    return f"{before / 2**20:,.1f} -> {after / 2**20:,.1f} MiB"


def _pid(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def export_airflow(
    project: Path | None,
    profile: str | None,
    *,
    output: Path | None,
    schedule: str | None,
    dag_id: str | None,
    executable: str = "headrace",
) -> None:
    """Write (or print) an Airflow DAG file running the project's tables."""
    from headrace.project.airflow import render_airflow_dag

    ws = _open(project, profile)
    try:
        config = ws.config
        tables: list[str] | None = None
        cron: str | None = None
        timezone = "UTC"
        if schedule is not None:
            if schedule not in config.schedules:
                raise SelectionError(
                    f"unknown schedule {schedule!r}.{did_you_mean(schedule, config.schedules)}",
                    hint=f"schedules in {config.config_path.name}: "
                    + (", ".join(config.schedules) or "none (add a [schedules.NAME] table)"),
                )
            chosen = config.schedules[schedule]
            tables = ws.select(chosen.select)
            cron, timezone = chosen.cron, chosen.timezone
        text = render_airflow_dag(
            ws.project,
            dag_id=dag_id or "_".join(["headrace", config.name, *([schedule] if schedule else [])]),
            schedule=cron,
            project_dir=config.root,
            tables=tables,
            retries=config.run.retries,
            retry_delay_seconds=config.run.max_backoff_seconds,
            timezone=timezone,
            profile=profile or config.profile,
            executable=executable,
        )
        count = len(tables) if tables is not None else len(ws.project.dag.order())
    finally:
        ws.close()
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    output = output.expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    out.print(f"wrote {output} ({count} tasks{', schedule ' + cron if cron else ''})")
