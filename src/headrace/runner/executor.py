"""Runs a selection of tables in dependency order, independent ones in parallel.

A failed table marks its downstream ``skipped`` and the rest of the graph continues; every
state change goes to the state store and to a listener (the CLI's progress display).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from headrace.delta.catalog import Lake
from headrace.delta.writer import WriteSettings
from headrace.engines.base import Engine
from headrace.errors import HeadraceError
from headrace.runner.events import Listener, RunResult, TaskOutcome
from headrace.runner.retry import RetryPolicy, classify_transient
from headrace.runner.task import TableTask, TaskResult
from headrace.spec.tables import TableSpec

log = logging.getLogger("headrace.runner")

OK_STATUSES = frozenset({"success", "unchanged"})


class DagLike(Protocol):
    def parents(self, name: str) -> list[str]: ...
    def descendants(self, name: str) -> set[str]: ...
    def order(self) -> list[str]: ...


def new_run_id() -> str:
    """Sortable by time, unique across processes: ``YYYYmmddTHHMMSS-xxxxxx``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RunOptions:
    command: str = "run"
    selection: tuple[str, ...] = ()
    workers: int = 4
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    lock_timeout: float = 600.0
    parent_run_id: str | None = None
    force: bool = False
    full_refresh: bool = False
    logical_date: date | None = None
    project_name: str = "project"
    profile: str = ""


class Runner:
    """Executes tables of one project against one lake, engine and state store."""

    def __init__(
        self,
        *,
        root: Path,
        tables: dict[str, TableSpec],
        dag: DagLike,
        lake: Lake,
        engine: Engine,
        store: Any,
        settings: WriteSettings,
        source_names: dict[int, str] | None = None,
        listener: Listener | None = None,
        lineage: Any = None,
    ) -> None:
        self.root = root
        self.tables = tables
        self.dag = dag
        self.lake = lake
        self.engine = engine
        self.store = store
        self.settings = settings
        self.source_names = source_names or {}
        self.listener = listener
        self.lineage = lineage  # an observe.lineage.LineageEmitter, or None
        self._lock = threading.Lock()

    def run(self, names: Sequence[str], options: RunOptions, *, run_id: str | None = None) -> RunResult:
        order = [n for n in self.dag.order() if n in set(names)]
        run_id = run_id or new_run_id()
        started = _now()
        self.store.start_run(
            run_id=run_id,
            project=options.project_name,
            profile=options.profile,
            command=options.command,
            selection=list(options.selection),
            tables=order,
            parent_run_id=options.parent_run_id,
        )
        outcomes = {n: TaskOutcome(table=n) for n in order}
        status = "failed"
        self._lineage(lambda e: e.run_event("START", run_id, command=options.command))
        try:
            self._schedule(run_id, order, outcomes, options)
            status = "success" if all(o.status in OK_STATUSES for o in outcomes.values()) else "failed"
        except KeyboardInterrupt:
            status = "interrupted"
            for o in outcomes.values():
                if o.status in ("pending", "running"):
                    self._finish(run_id, o, "skipped", message="run interrupted")
            raise
        finally:
            self.store.finish_run(run_id, status)
            failed = [o.table for o in outcomes.values() if o.status == "failed"]
            end = {"success": "COMPLETE", "interrupted": "ABORT"}.get(status, "FAIL")
            self._lineage(lambda e: e.run_event(end, run_id, command=options.command,
                                                error=f"failed: {', '.join(failed)}" if failed else None))
        return RunResult(run_id=run_id, status=status, started_at=started, ended_at=_now(),
                         tasks=[outcomes[n] for n in order])

    # ---- scheduling ---------------------------------------------------------------------
    def _schedule(self, run_id: str, order: list[str], outcomes: dict[str, TaskOutcome],
                  options: RunOptions) -> None:
        selected = set(order)
        deps = {n: [p for p in self.dag.parents(n) if p in selected] for n in order}
        pending = list(order)
        running: dict[Future[None], str] = {}
        with ThreadPoolExecutor(max_workers=max(1, options.workers), thread_name_prefix="headrace") as pool:
            while pending or running:
                for name in list(pending):
                    if len(running) >= max(1, options.workers):
                        break
                    states = [outcomes[p].status for p in deps[name]]
                    if all(s in OK_STATUSES for s in states):
                        pending.remove(name)
                        running[pool.submit(self._run_task, run_id, name, outcomes[name], options)] = name
                if not running:
                    break
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    fut.result()
                    if outcomes[name].status not in OK_STATUSES:
                        for child in self._skip_downstream(run_id, name, pending, outcomes):
                            pending.remove(child)

    def _skip_downstream(self, run_id: str, failed: str, pending: list[str],
                         outcomes: dict[str, TaskOutcome]) -> list[str]:
        skipped = []
        for child in [n for n in pending if n in self.dag.descendants(failed)]:
            self._finish(run_id, outcomes[child], "skipped", message=f"upstream {failed} failed")
            skipped.append(child)
        return skipped

    # ---- one table ----------------------------------------------------------------------
    def _run_task(self, run_id: str, name: str, outcome: TaskOutcome, options: RunOptions) -> None:
        spec = self.tables[name]
        policy = options.policy
        if spec.retries is not None:
            policy = RetryPolicy(spec.retries, policy.backoff_seconds, policy.max_backoff_seconds)
        task = TableTask(spec=spec, root=self.root, lake=self.lake, engine=self.engine, run_id=run_id,
                         settings=self.settings, source_names=self.source_names, store=self.store,
                         known_tables=set(self.tables), force=options.force,
                         full_refresh=options.full_refresh, logical_date=options.logical_date)
        outcome.started_at = _now()
        outcome.status = "running"
        self._emit(run_id, outcome, started_at=outcome.started_at)
        self._lineage(lambda e: e.task_event("START", run_id, spec, logical_date=options.logical_date))
        try:
            self._attempts(run_id, name, task, outcome, options, policy)
        finally:
            if outcome.status in ("success", "unchanged", "failed"):
                self._lineage(lambda e: self._task_end(e, run_id, spec, outcome, options))

    def _task_end(self, emitter: Any, run_id: str, spec: TableSpec, outcome: TaskOutcome,
                  options: RunOptions) -> None:
        table = self.lake.open(spec.name) if self.lake.exists(spec.name) else None
        checks = self.store.check_results(table=spec.name, run_id=run_id)
        emitter.task_event("FAIL" if outcome.status == "failed" else "COMPLETE", run_id, spec,
                           logical_date=options.logical_date, outcome=outcome, table=table, checks=checks)

    def _lineage(self, send: Callable[[Any], None]) -> None:
        """Lineage is reported, never in the way: an error building an event is logged."""
        if self.lineage is None:
            return
        try:
            send(self.lineage)
        except Exception as exc:
            log.warning("lineage: event not sent: %s", exc)

    def _attempts(self, run_id: str, name: str, task: TableTask, outcome: TaskOutcome, options: RunOptions,
                  policy: RetryPolicy) -> None:
        attempt = 0
        while True:
            attempt += 1
            outcome.attempts = attempt
            self.store.start_attempt(run_id, name, attempt)
            self._emit(run_id, outcome)
            try:
                with self.store.lock(f"table:{name}", owner=run_id, timeout=options.lock_timeout):
                    result = task.run(attempt)
            except Exception as exc:
                kind = type(exc).__name__
                text = _error_text(exc)
                self.store.finish_attempt(run_id, name, attempt, status="failed", error=text, error_kind=kind)
                if policy.should_retry(exc, attempt):
                    outcome.message = f"attempt {attempt} failed ({kind}); retrying"
                    self._emit(run_id, outcome)
                    time.sleep(policy.delay(attempt))
                    continue
                outcome.hint = getattr(exc, "hint", None)
                if not isinstance(exc, HeadraceError) and not classify_transient(exc):
                    text = f"{text} [{_where(exc)}]"
                    if os.environ.get("HEADRACE_DEBUG"):
                        text += "\n" + "".join(traceback.format_exception(exc))
                self._finish(run_id, outcome, "failed", error=text, error_kind=kind)
                return
            self.store.finish_attempt(run_id, name, attempt, status=result.status)
            self._complete(run_id, outcome, result)
            return

    def _complete(self, run_id: str, outcome: TaskOutcome, result: TaskResult) -> None:
        outcome.rows_in = result.rows_in
        outcome.rows_out = result.rows_out
        outcome.rows_quarantined = result.rows_quarantined
        outcome.rows_dropped = result.rows_dropped
        outcome.version = result.version
        outcome.operation = result.operation
        self._finish(run_id, outcome, result.status, message=result.message)

    def _finish(self, run_id: str, outcome: TaskOutcome, status: str, *, message: str | None = None,
                error: str | None = None, error_kind: str | None = None) -> None:
        outcome.status = status
        outcome.ended_at = _now()
        outcome.message = message
        outcome.error = error
        outcome.error_kind = error_kind
        self._emit(run_id, outcome)

    def _emit(self, run_id: str, outcome: TaskOutcome, **extra: Any) -> None:
        with self._lock:
            self.store.update_task(
                run_id, outcome.table, status=outcome.status, attempts=outcome.attempts,
                ended_at=outcome.ended_at, rows_in=outcome.rows_in, rows_out=outcome.rows_out,
                delta_version=outcome.version, operation=outcome.operation,
                rows_quarantined=outcome.rows_quarantined, rows_dropped=outcome.rows_dropped,
                message=outcome.message, error=outcome.error, error_kind=outcome.error_kind, **extra,
            )
            if self.listener:
                self.listener(outcome)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, HeadraceError):
        return exc.message
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _where(exc: BaseException) -> str:
    """The innermost frame of the user's code, so a failing table function is easy to find."""
    tb = traceback.extract_tb(exc.__traceback__)
    package = str(Path(__file__).resolve().parent.parent)
    frames = [f for f in tb if not f.filename.startswith(package)]
    frame = frames[-1] if frames else (tb[-1] if tb else None)
    return f"{frame.filename}:{frame.lineno}" if frame else "unknown location"
