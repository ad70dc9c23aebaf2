"""The ``headrace`` command line: parses, calls the runner/lake, prints.

Errors a user can fix print as one or two lines (message and hint); tracebacks only with
``--debug``. Heavy modules are imported inside commands so ``headrace --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from headrace.errors import ConfigError, HeadraceError

if TYPE_CHECKING:
    from headrace.runner.workspace import Workspace

app = typer.Typer(
    name="headrace",
    help="Reliable data pipelines on an open lakehouse (DuckDB + Delta Lake).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class _State:
    project: Path | None = None
    profile: str | None = None
    debug: bool = False


state = _State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
SelectOpt = Annotated[
    list[str] | None,
    typer.Option("--select", "-s", help="Tables: name, glob (silver.*), +name (with upstream), name+ (with downstream), tag:x."),
]
EngineOpt = Annotated[
    str | None,
    typer.Option("--engine", help="Engine for this command: duckdb or spark (overrides headrace.toml)."),
]


@app.callback()
def _global(
    project: Annotated[Path | None, typer.Option("--project", "-p", help="Project folder (default: search upward from cwd).")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Profile from headrace.toml (env HEADRACE_PROFILE).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    state.project = project
    state.profile = profile
    state.debug = debug or bool(os.environ.get("HEADRACE_DEBUG"))
    if state.debug:
        os.environ["HEADRACE_DEBUG"] = "1"


def _workspace(overrides: dict[str, Any] | None = None) -> Workspace:
    from headrace.runner.workspace import Workspace

    return Workspace.open(state.project, profile=state.profile, overrides=overrides)


# ---- init -----------------------------------------------------------------------------------
@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")],
    name: Annotated[str | None, typer.Option(help="Project name (default: folder name).")] = None,
) -> None:
    """Create a new project with a sample pipeline, a SQL model and sample data."""
    from headrace.cli.render import out
    from headrace.project.scaffold import scaffold

    written = scaffold(directory, name=name)
    out.print(f"created project in {directory} ({len(written)} files)")
    out.print(f"next: cd {directory} && headrace run")


# ---- run / retry ----------------------------------------------------------------------------
@app.command()
def run(
    select: SelectOpt = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=1, help="Tables in parallel.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when inputs are unchanged.")] = False,
    full_refresh: Annotated[bool, typer.Option(
        "--full-refresh", help="Rebuild the tables from all their inputs in one overwrite commit.")] = False,
    ds: Annotated[str | None, typer.Option("--ds", help="Logical date (YYYY-MM-DD) for {{ ds }} and ctx.ds.")] = None,
    engine: EngineOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the selected tables (default: all) in dependency order."""
    ws = _workspace({"engine": engine})
    try:
        names = ws.select(select or [])
        result = _execute(lambda listener: ws.run(select or [], workers=workers, force=force,
                                                           full_refresh=full_refresh, listener=listener,
                                                           logical_date=_date(ds, "--ds")),
                          names, as_json=as_json, ws=ws)
    finally:
        ws.close()
    raise typer.Exit(0 if result.ok else 1)


@app.command()
def stream(
    select: SelectOpt = None,
    interval: Annotated[str, typer.Option("--interval", "-i", help="Time between batch starts: '5s', '1m', ...")] = "10s",
    max_batches: Annotated[int | None, typer.Option("--max-batches", min=1, help="Stop after this many batches.")]
    = None,
    engine: EngineOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the selection as micro-batches every --interval until SIGTERM/SIGINT (one run each)."""
    from headrace.cli.render import out, print_json_line, styled
    from headrace.project.config import parse_duration
    from headrace.streaming.loop import Batch, MicroBatchLoop

    try:
        seconds = parse_duration(interval).total_seconds()
    except ValueError:
        raise typer.BadParameter(f"{interval!r} is not a duration; write '500ms', '5s', '1m' or '1h'",
                                 param_hint="--interval") from None
    ws = _workspace({"engine": engine})

    def report(batch: Batch) -> None:
        if as_json:
            print_json_line(batch.to_json())
            return
        line = batch.to_json()
        counts: dict[str, int] = {}
        for status in line["tables"].values():
            counts[status] = counts.get(status, 0) + 1
        out.print(f"batch {batch.number} {batch.result.run_id}: ", styled(batch.result.status),
                  f" in {line['seconds']:.2f}s ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; "
                  f"{line['rows_out']:,} row(s) out, {line['rows_quarantined']:,} quarantined)")
        for task in batch.result.tasks:
            if task.status == "failed":
                out.print(f"  {task.table}: {task.error}")
        _alert(ws, batch.result)

    try:
        ws.select(select or [])  # an unknown name fails before the first batch
        loop = MicroBatchLoop(lambda: ws.run(select or []), interval=seconds, max_batches=max_batches,
                              on_batch=report)
        batches = loop.run(handle_signals=True)
    finally:
        ws.close()
    raise typer.Exit(0 if not batches or batches[-1].result.ok else 1)


@app.command()
def retry(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix) from `headrace runs`.")],
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=1)] = None,
    engine: EngineOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-run only the failed and skipped tables of an earlier run."""
    ws = _workspace({"engine": engine})
    try:
        record = ws.store.get_run(run_id)
        names = [t.table for t in ws.store.tasks(record.run_id) if t.status != "success" and t.status != "unchanged"]
        result = _execute(lambda listener: ws.retry(record.run_id, workers=workers, listener=listener),
                          names, as_json=as_json, ws=ws)
    finally:
        ws.close()
    raise typer.Exit(0 if result.ok else 1)


def _date(value: str | None, option: str) -> Any:
    if value is None:
        return None
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{option} must be a date like 2026-01-31, got {value!r}") from None


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--start", help="First logical date (YYYY-MM-DD), inclusive.")],
    end: Annotated[str, typer.Option("--end", help="Last logical date (YYYY-MM-DD), inclusive.")],
    select: SelectOpt = None,
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=1, help="Tables in parallel.")] = None,
    missing: Annotated[bool, typer.Option("--missing", help="Only dates some selected table lacks.")] = False,
    engine: EngineOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the selection for each date in a range, resumable; each date is idempotent."""
    from headrace.cli.render import backfill_progress, print_backfill, print_json
    from headrace.runner.backfill import backfill as run_backfill
    from headrace.runner.backfill import dates_between

    first, last = _date(start, "--start"), _date(end, "--end")
    ws = _workspace({"engine": engine})
    try:
        days = dates_between(first, last)
        with backfill_progress(len(days), enabled=not as_json) as advance:
            outcomes = list(run_backfill(ws, select or [], first, last, workers=workers,
                                         missing_only=missing, on_date=advance))
    finally:
        ws.close()
    if as_json:
        print_json([{"ds": o.ds, "status": o.status, "note": o.note,
                     "run_id": o.result.run_id if o.result else None} for o in outcomes])
    else:
        print_backfill(outcomes)
    raise typer.Exit(0 if all(o.status in ("success", "skipped") for o in outcomes) else 1)


def _execute(call: Any, names: list[str], *, as_json: bool, ws: Workspace | None = None) -> Any:
    from headrace.cli.render import RunProgress, print_json, print_run_summary, run_result_json

    with RunProgress(names, enabled=not as_json) as progress:
        result = call(progress)
    if as_json:
        print_json(run_result_json(result))
    else:
        print_run_summary(result)
    if ws is not None:
        _alert(ws, result)
    return result


def _alert(ws: Workspace, result: Any) -> None:
    """Failed runs started from the command line alert like scheduled ones (never raises)."""
    if ws.config.alerts is None or result.ok:
        return
    from headrace.observe.alerts import AlertSender, alerts_for_run

    AlertSender(ws.config.alerts, cwd=ws.config.root).send_all(alerts_for_run(result, ws.config.name))


# ---- inspection -----------------------------------------------------------------------------
@app.command()
def runs(
    run_id: Annotated[str | None, typer.Argument(help="Show one run's tables and attempts.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List recent runs, or the tables of one run."""
    from headrace.cli.inspect import show_run, show_runs

    ws = _workspace()
    try:
        if run_id:
            show_run(ws, run_id, as_json=as_json)
        else:
            show_runs(ws, limit, as_json=as_json)
    finally:
        ws.close()


@app.command()
def show(
    table: Annotated[str, typer.Argument(help="Table name, e.g. bronze.orders.")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="History entries (rows with --as-of).")] = 20,
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="Rows as of a Delta version (7), a time (2026-01-31T12:00), or for an SCD2 "
                        "table a date (2026-01-31): the versions valid then.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Schema, partitions, row count and Delta version history of a table (or its rows --as-of)."""
    from headrace.cli.inspect import show_as_of, show_table

    ws = _workspace()
    try:
        if as_of is not None:
            show_as_of(ws, table, as_of, limit, as_json=as_json)
        else:
            show_table(ws, table, limit, as_json=as_json)
    finally:
        ws.close()


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL; lake tables by their names (bronze.orders).")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Rows to print.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Query lake tables with DuckDB SQL."""
    from headrace.cli.inspect import run_query

    ws = _workspace()
    try:
        run_query(ws, sql, limit, as_json=as_json)
    finally:
        ws.close()


@app.command()
def dag(select: SelectOpt = None, as_json: JsonOpt = False) -> None:
    """Print the dependency graph of the project's tables."""
    from headrace.cli.inspect import show_dag

    show_dag(_workspace(), select or [], as_json=as_json)


@app.command()
def checks(
    table: Annotated[str | None, typer.Argument(help="Only this table.")] = None,
    history: Annotated[bool, typer.Option("--history", help="Every stored result, not just the latest.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Latest check results per table (or their history)."""
    from headrace.cli.quality import show_checks

    ws = _workspace()
    try:
        show_checks(ws, table, history=history, limit=limit, as_json=as_json)
    finally:
        ws.close()


@app.command()
def quarantine(
    action_or_table: Annotated[str, typer.Argument(metavar="TABLE | replay", help="A table, or `replay`.")],
    table: Annotated[str | None, typer.Argument(help="With `replay`: the table.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Sample rows.")] = 10,
    as_json: JsonOpt = False,
) -> None:
    """Quarantined records by rule with a sample; `quarantine replay TABLE` re-validates them."""
    ws = _workspace()
    try:
        if action_or_table == "replay":
            if not table:
                raise typer.BadParameter("name the table: headrace quarantine replay TABLE")
            from headrace.cli.quality import replay_quarantine

            ok = replay_quarantine(ws, table, as_json=as_json)
            raise typer.Exit(0 if ok else 1)
        from headrace.cli.quality import show_quarantine

        show_quarantine(ws, action_or_table, limit=limit, as_json=as_json)
    finally:
        ws.close()


@app.command()
def vacuum(
    tables: Annotated[list[str] | None, typer.Argument(help="Tables (default: every table in the lake).")] = None,
    retention_hours: Annotated[int, typer.Option("--retention-hours", min=0,
                                                 help="Keep files removed less than this long ago.")] = 168,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete data files no version needs: old removed files and files a crashed run left."""
    from headrace.cli.render import out, print_json, simple_table
    from headrace.delta.maintenance import vacuum as vacuum_table

    ws = _workspace()
    try:
        names = [t.lower() for t in tables] if tables else ws.lake.list_tables()
        results = []
        for name in names:
            with ws.store.lock(f"table:{name}", owner="vacuum", timeout=ws.config.run.lock_timeout_seconds):
                results.append(vacuum_table(ws.lake, name, retention_hours=retention_hours, dry_run=dry_run))
    finally:
        ws.close()
    if as_json:
        print_json([{"table": r.table, "files": r.files, "dry_run": r.dry_run} for r in results])
        return
    verb = "would delete" if dry_run else "deleted"
    out.print(simple_table(None, ["table", verb], [[r.table, str(len(r.files))] for r in results]))


@app.command()
def optimize(
    tables: Annotated[list[str] | None, typer.Argument(help="Tables (default: every table in the lake).")] = None,
    zorder: Annotated[str | None, typer.Option("--zorder", metavar="COL,...",
                                               help="Cluster the rows of each partition by these columns.")] = None,
    target_size: Annotated[str | None, typer.Option("--target-size", metavar="SIZE",
                                                    help="File size to aim for (default: [write] target_file_size).")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count the files that would be rewritten.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compact small files into files of the target size, one commit per table, rows unchanged."""
    from headrace.cli.ops import optimize_tables

    optimize_tables(_workspace(), tables, zorder=zorder, target_size=target_size, dry_run=dry_run, as_json=as_json)


@app.command("config")
def config_cmd(as_json: JsonOpt = False) -> None:
    """Show every setting, its value and where it came from."""
    from headrace.cli.inspect import show_config

    show_config(_workspace(), as_json=as_json)


# ---- schedules / serve / export ---------------------------------------------------------------
@app.command()
def serve(
    once: Annotated[bool, typer.Option("--once", help="Run whatever is due now, then exit (for cron and tests).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the project's [schedules] until SIGTERM/SIGINT (the current run finishes first)."""
    from headrace.cli import ops

    raise typer.Exit(ops.serve(state.project, state.profile, once=once, as_json=as_json))


@app.command()
def schedules(as_json: JsonOpt = False) -> None:
    """List schedules: cron, next fire time, last fired interval and its run's status."""
    from headrace.cli import ops

    ops.show_schedules(state.project, state.profile, as_json=as_json)


@app.command()
def export(
    target: Annotated[str, typer.Argument(metavar="airflow", help="What to export to: airflow.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help="Use this schedule's cron and selection.")] = None,
    dag_id: Annotated[str | None, typer.Option("--dag-id", help="Airflow dag_id (default: headrace_<project>[_<schedule>]).")] = None,
    executable: Annotated[str, typer.Option("--executable", help="headrace command on the Airflow workers.")] = "headrace",
) -> None:
    """Export the project's DAG: `export airflow` writes an Airflow DAG file (one task per table)."""
    from headrace.cli import ops

    if target.lower() != "airflow":
        raise typer.BadParameter(f"unknown export target {target!r}; supported: airflow")
    ops.export_airflow(state.project, state.profile, output=output, schedule=schedule,
                       dag_id=dag_id, executable=executable)


# ---- entry point ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Console entry: maps errors to short messages and exit codes (2 = fix config, 1 = failed)."""
    debug = "--debug" in (argv if argv is not None else sys.argv) or bool(os.environ.get("HEADRACE_DEBUG"))
    try:
        code = app(args=argv, standalone_mode=False, prog_name="headrace")
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:
        show = getattr(exc, "show", None)
        if show:
            show()
        code = getattr(exc, "exit_code", 2)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        code = 130
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except HeadraceError as exc:
        if debug:
            traceback.print_exc()
        _print_error(exc)
        code = 2 if isinstance(exc, ConfigError) else 1
    except Exception as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: internal error: {type(exc).__name__}: {exc}\n"
                         "  hint: rerun with --debug for the traceback, and report it\n")
        code = 70
    code = int(code or 0) if isinstance(code, int | type(None)) else 0
    sys.stdout.flush()
    return code


def _print_error(exc: HeadraceError) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    cwd = f"{Path.cwd()}/"
    console.print(Text.assemble(("error: ", "bold red"), exc.message.replace(cwd, "")))
    if exc.hint:
        console.print(Text.assemble(("  hint: ", "yellow"), exc.hint.replace(cwd, "")))


def entry() -> None:
    sys.exit(main())
