"""Inspection commands: runs, show, query, dag, config."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from headrace.cli.render import fmt_int, out, print_json, simple_table, styled
from headrace.errors import EngineError, SelectionError
from headrace.runner.state import process_gone
from headrace.runner.workspace import Workspace
from headrace.spec.write_modes import SCD2_COLUMNS


def show_runs(ws: Workspace, limit: int, *, as_json: bool) -> None:
    # a run this host left running whose process is gone shows as abandoned (the next run
    # records it so: StateStore.close_abandoned_runs)
    records = [replace(r, status="abandoned") if r.status == "running" and process_gone(
        r.host, r.pid, since=r.started_at) else r for r in ws.store.list_runs(limit)]
    if as_json:
        print_json([vars(r) if not hasattr(r, "__dataclass_fields__") else r for r in records])
        return
    if not records:
        out.print("no runs yet: start one with `headrace run`")
        return
    rows = []
    for r in records:
        seconds = (r.ended_at - r.started_at).total_seconds() if r.ended_at else None
        rows.append([r.run_id, r.command, styled(r.status), r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                     "" if seconds is None else f"{seconds:.2f}s", str(r.tables_total),
                     " ".join(r.selection), r.parent_run_id or ""])
    out.print(simple_table(None, ["run", "command", "status", "started (UTC)", "time", "tables",
                                  "selection", "retry of"], rows))


def show_run(ws: Workspace, run_id: str, *, as_json: bool) -> None:
    record = ws.store.get_run(run_id)
    tasks = ws.store.tasks(record.run_id)
    if as_json:
        print_json({"run": record, "tables": tasks,
                    "attempts": {t.table: ws.store.attempts(record.run_id, t.table) for t in tasks}})
        return
    out.print(f"run {record.run_id}: ", styled(record.status), f" ({record.command}, profile {record.profile or '-'})")
    rows = []
    for t in tasks:
        seconds = (t.ended_at - t.started_at).total_seconds() if t.ended_at and t.started_at else None
        rows.append([t.table, styled(t.status), str(t.attempts), fmt_int(t.rows_in), fmt_int(t.rows_out),
                     "" if t.delta_version is None else str(t.delta_version),
                     "" if seconds is None else f"{seconds:.2f}s", t.error or t.message or ""])
    out.print(simple_table(None, ["table", "status", "attempts", "rows in", "rows out", "version",
                                  "time", "note"], rows))


def show_table(ws: Workspace, name: str, limit: int, *, as_json: bool) -> None:
    name = name.lower()
    snap = ws.lake.snapshot(name)
    import pyarrow as pa

    schema = pa.schema(snap.table.schema().to_arrow())
    fields = [(f.name, str(f.type), f.nullable) for f in schema]
    partition_cols = list(snap.table.metadata().partition_columns)
    partitions = _partition_counts(snap, partition_cols)
    history = ws.lake.history(name, limit)
    info = {
        "table": name,
        "path": str(snap.path),
        "version": snap.version,
        "rows": snap.row_count(),
        "files": len(snap.table.file_uris()),
        "partition_by": partition_cols,
        "schema": [{"name": n, "type": t, "nullable": nl} for n, t, nl in fields],
        "partitions": partitions,
        "history": [
            {"version": c.version, "timestamp": c.timestamp, "operation": c.operation, "run_id": c.run_id,
             "mode": c.metadata.get("mode"), "metrics": c.metrics}
            for c in history
        ],
    }
    if as_json:
        print_json(info)
        return
    out.print(f"[bold]{name}[/bold]  version {snap.version}, {snap.row_count():,} rows, "
              f"{info['files']} files  ({snap.path})")
    out.print(simple_table("schema", ["column", "type", "nullable"],
                           [[n, t, "yes" if nl else "no"] for n, t, nl in fields]))
    if partition_cols:
        shown = partitions[:50]
        out.print(simple_table(f"partitions ({len(partitions)})", [*partition_cols, "rows", "files"],
                               [[*p["values"], fmt_int(p["rows"]), str(p["files"])] for p in shown]))
    rows = []
    for c in history:
        added = c.metrics.get("num_added_rows", c.metrics.get("num_target_rows_inserted"))
        rows.append([str(c.version), c.timestamp.strftime("%Y-%m-%d %H:%M:%S"), c.operation,
                     c.metadata.get("mode", ""), c.run_id or "(not headrace)", fmt_int(added)])
    out.print(simple_table("history", ["version", "time (UTC)", "operation", "mode", "run", "rows added"], rows))


def _partition_counts(snap: Any, columns: list[str]) -> list[dict[str, Any]]:
    if not columns:
        return []
    actions = snap.table.get_add_actions(flatten=True)
    import pyarrow as pa

    table = pa.table(actions)
    counts: dict[tuple[Any, ...], list[int]] = {}
    parts = [table.column(f"partition.{c}").to_pylist() for c in columns]
    records = table.column("num_records").to_pylist()
    for i, n in enumerate(records):
        key = tuple(str(p[i]) for p in parts)
        entry = counts.setdefault(key, [0, 0])
        entry[0] += int(n or 0)
        entry[1] += 1
    return [{"values": list(k), "rows": v[0], "files": v[1]} for k, v in sorted(counts.items())]


def resolve_as_of(ws: Workspace, name: str, text: str) -> tuple[Any, str, Any]:
    """(snapshot, how, scd2 date or None) for ``--as-of``: a version number, a timestamp (Delta
    time travel), or a plain date, which on an SCD2 table means 'the versions valid then'."""
    from datetime import UTC, date, datetime

    if text.isdigit():
        return ws.lake.snapshot(name, int(text)), f"version {text}", None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    current = ws.lake.snapshot(name)
    import pyarrow as pa

    columns = set(pa.schema(current.table.schema().to_arrow()).names)
    if day is not None and all(c in columns for c in SCD2_COLUMNS):
        return current, f"SCD2 versions valid on {day}", day
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SelectionError(
            f"--as-of {text!r} is neither a version number, a date nor a timestamp",
            hint="e.g. --as-of 7, --as-of 2026-01-31 or --as-of 2026-01-31T12:00:00",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return ws.lake.snapshot(name, moment), f"as of {moment.isoformat()}", None


def show_as_of(ws: Workspace, name: str, text: str, limit: int, *, as_json: bool) -> None:
    import duckdb

    name = name.lower()
    snap, how, day = resolve_as_of(ws, name, text)
    con = duckdb.connect()
    try:
        con.register("t", snap.dataset())
        where = ""
        if day is not None:
            where = (f" WHERE valid_from < DATE '{day.isoformat()}' + INTERVAL 1 DAY "
                     f"AND (valid_to IS NULL OR valid_to >= DATE '{day.isoformat()}' + INTERVAL 1 DAY)")
        total = con.execute(f"SELECT count(*) FROM t{where}").fetchall()[0][0]
        rows = con.sql(f"SELECT * FROM t{where} LIMIT {int(limit)}").to_arrow_table()
    finally:
        con.close()
    if as_json:
        print_json({"table": name, "as_of": text, "version": snap.version, "how": how, "rows": total,
                    "sample": rows.to_pylist()})
        return
    out.print(f"[bold]{name}[/bold] {how} (Delta version {snap.version}): {total:,} rows")
    out.print(simple_table(None, rows.column_names, [[_cell(v) for v in r.values()] for r in rows.to_pylist()]))


def run_query(ws: Workspace, sql: str, limit: int, *, as_json: bool) -> None:
    import duckdb

    from headrace.sources.files import quote_ident

    engine = ws.engine()
    con = engine.connection()  # type: ignore[attr-defined]
    try:
        for name in ws.lake.list_tables():
            schema, table = name.split(".", 1)
            hidden = f"__hr_{schema}__{table}"
            con.register(hidden, ws.lake.snapshot(name).dataset())
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
            con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(table)} AS SELECT * FROM {quote_ident(hidden)}"
                        if schema == "main" else
                        f"CREATE OR REPLACE VIEW {quote_ident(schema)}.{quote_ident(table)} AS SELECT * FROM {quote_ident(hidden)}")
        try:
            rel = con.sql(sql)
            if rel is None:
                out.print("ok")
                return
            result = rel.limit(limit + 1).to_arrow_table()
        except duckdb.Error as exc:
            msg = str(exc).strip().splitlines()[0]
            raise SelectionError(f"query failed: {msg}",
                                 hint=f"tables: {', '.join(ws.lake.list_tables()) or '(none yet)'}") from exc
    finally:
        engine.close()
    truncated = result.num_rows > limit
    result = result.slice(0, limit)
    if as_json:
        print_json({"columns": result.column_names, "rows": result.to_pylist(), "truncated": truncated})
        return
    rows = [[_cell(v) for v in row.values()] for row in result.to_pylist()]
    out.print(simple_table(None, result.column_names, rows))
    if truncated:
        out.print(f"(first {limit} rows; use --limit to see more)")


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    return str(value)


def show_dag(ws: Workspace, select: list[str], *, as_json: bool) -> None:
    project = ws.project
    names = project.dag.select(select)
    if as_json:
        print_json([
            {"table": n, "parents": project.dag.parents(n), "write": project.tables[n].write.kind,
             "sources": {k: s.describe() for k, s in project.tables[n].sources().items()},
             "origin": project.tables[n].origin}
            for n in names
        ])
        return
    out.print(project.dag.render(names), markup=False)


def show_config(ws: Workspace, *, as_json: bool) -> None:
    rows = ws.config.explain()
    if as_json:
        print_json({k: {"value": v, "origin": o} for k, v, o in rows})
        return
    out.print(simple_table(f"{ws.config.root / 'headrace.toml'} (profile: {ws.config.profile or '-'})",
                           ["setting", "value", "from"], [[k, str(v), o] for k, v, o in rows]))


__all__ = ["EngineError", "run_query", "show_config", "show_dag", "show_run", "show_runs", "show_table"]
