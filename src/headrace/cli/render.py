"""Terminal rendering: run progress, summary tables, errors and JSON.

Tables and progress go through rich; machine-readable output is plain JSON on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.text import Text

from headrace.runner.events import RunResult, TaskOutcome

if TYPE_CHECKING:
    from rich.live import Live
    from rich.table import Table


def _console(*, stderr: bool) -> Console:
    """Pipes and CI logs get a wide fixed width rather than rich's 80-column fallback."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else int(os.environ.get("COLUMNS", "160"))
    return Console(stderr=stderr, highlight=False, width=width)


out = _console(stderr=False)
err = _console(stderr=True)

STATUS_STYLE = {
    "success": "green",
    "unchanged": "cyan",
    "failed": "bold red",
    "skipped": "yellow",
    "running": "blue",
    "pending": "dim",
    "interrupted": "red",
    "abandoned": "red",
}


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_default, indent=2) + "\n")
    sys.stdout.flush()


def print_json_line(data: Any) -> None:
    """One JSON object per line (a stream of results a script reads as they come)."""
    sys.stdout.write(json.dumps(data, default=_default) + "\n")
    sys.stdout.flush()


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def fmt_int(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


def fmt_seconds(s: float | None) -> str:
    return "" if s is None else f"{s:.2f}s"


def simple_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A table with empty columns dropped; every column but the last keeps to one line."""
    from rich.table import Table

    cells = [[v if isinstance(v, Text) else Text("" if v is None else str(v)) for v in r] for r in rows]
    keep = [i for i in range(len(columns)) if not cells or any(str(r[i]) for r in cells)]
    table = Table(title=title, title_justify="left", header_style="bold")
    for n, i in enumerate(keep):
        last = n == len(keep) - 1
        table.add_column(columns[i], overflow="fold", no_wrap=not last)
    for r in cells:
        table.add_row(*[r[i] for i in keep])
    return table


class RunProgress:
    """Live per-table status while a run works; a line per finished table when not a TTY."""

    def __init__(self, tables: Sequence[str], *, enabled: bool = True) -> None:
        self.outcomes: dict[str, TaskOutcome] = {t: TaskOutcome(table=t) for t in tables}
        self.enabled = enabled
        self.live: Live | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> RunProgress:
        if self.enabled and err.is_terminal:
            from rich.live import Live  # only a live terminal pays for it (~30 ms)

            self.live = Live(self._render(), console=err, refresh_per_second=8, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.__exit__(None, None, None)

    def __call__(self, outcome: TaskOutcome) -> None:
        with self._lock:
            previous = self.outcomes.get(outcome.table)
            self.outcomes[outcome.table] = TaskOutcome(**vars(outcome))
            if self.live:
                self.live.update(self._render())
            elif self.enabled and outcome.status not in ("running", "pending") and (
                previous is None or previous.status != outcome.status
            ):
                note = outcome.message or outcome.error or ""
                err.print(Text.assemble(f"  {outcome.table} ", styled(outcome.status), f" {note}".rstrip()))

    def _render(self) -> Group:
        from rich.spinner import Spinner
        from rich.table import Table

        done = sum(1 for o in self.outcomes.values() if o.status not in ("pending", "running"))
        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
        for c in ("", "table", "status", "rows", "attempt"):
            table.add_column(c)
        for o in self.outcomes.values():
            icon: Any = Spinner("dots") if o.status == "running" else Text("•", style=STATUS_STYLE.get(o.status, ""))
            table.add_row(icon, o.table, styled(o.status), fmt_int(o.rows_out), str(o.attempts or ""))
        return Group(Text(f"running {len(self.outcomes)} table(s): {done} done", style="bold"), table)


def print_run_summary(result: RunResult) -> None:
    rows = []
    for t in result.tasks:
        note = t.error or t.message or ""
        if t.hint and t.error:
            note += f"\nhint: {t.hint}"
        rows.append([
            t.table, styled(t.status), t.operation or "", fmt_int(t.rows_in),
            fmt_int(t.rows_quarantined or None), fmt_int(t.rows_dropped or None), fmt_int(t.rows_out),
            "" if t.version is None else str(t.version), str(t.attempts or ""),
            fmt_seconds(t.seconds), note,
        ])
    out.print(simple_table(
        None, ["table", "status", "write", "rows in", "quarantined", "dropped", "rows out", "version",
               "attempts", "time", "note"], rows
    ))
    counts: dict[str, int] = {}
    for t in result.tasks:
        counts[t.status] = counts.get(t.status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.print(Text.assemble(
        "run ", (result.run_id, "bold"), ": ", styled(result.status),
        f" in {result.seconds:.2f}s ({parts})",
    ))
    if not result.ok:
        out.print(f"retry the failed and skipped tables with: headrace retry {result.run_id}")


def run_result_json(result: RunResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "status": result.status,
        "started_at": result.started_at,
        "ended_at": result.ended_at,
        "seconds": round(result.seconds, 3),
        "tables": [
            {
                "table": t.table, "status": t.status, "operation": t.operation, "rows_in": t.rows_in,
                "rows_quarantined": t.rows_quarantined, "rows_dropped": t.rows_dropped,
                "rows_out": t.rows_out, "version": t.version, "attempts": t.attempts,
                "seconds": t.seconds, "message": t.message, "error": t.error,
                "error_kind": t.error_kind,
            }
            for t in result.tasks
        ],
    }


@contextmanager
def backfill_progress(total: int, *, enabled: bool) -> Iterator[Any]:
    """A progress bar over the dates of a backfill; yields the per-date callback."""
    if not enabled or not err.is_terminal:
        def plain(outcome: Any) -> None:
            if enabled:
                err.print(Text.assemble(f"  {outcome.ds} ", styled(outcome.status), f" {outcome.note or ''}"))
        yield plain
        return
    with progress_bar(total, "backfill", enabled=True) as step:
        yield lambda outcome: step(f"{outcome.ds} {outcome.status}")


@contextmanager
def progress_bar(total: int, label: str, *, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A transient progress bar on stderr over ``total`` steps (only on a terminal); yields
    the callback that advances it one step, showing what was just done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled or not err.is_terminal:
        yield lambda _done: None
        return
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("", total=total)
        yield lambda done: progress.update(task, advance=1, description=done)


def print_backfill(outcomes: Sequence[Any]) -> None:
    rows = []
    for o in outcomes:
        counts: dict[str, int] = {}
        for t in (o.result.tasks if o.result else []):
            counts[t.status] = counts.get(t.status, 0) + 1
        failed = [t for t in (o.result.tasks if o.result else []) if t.status == "failed"]
        note = o.note or "; ".join(f"{t.table}: {t.error}" for t in failed)
        rows.append([str(o.ds), styled(o.status), ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
                     o.result.run_id if o.result else "", note])
    out.print(simple_table(None, ["date", "status", "tables", "run", "note"], rows))
