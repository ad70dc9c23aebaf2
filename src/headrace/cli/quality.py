"""Quality commands: check results with history, and quarantine inspection."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from headrace.cli.render import fmt_int, out, print_json, simple_table
from headrace.delta.quarantine import quarantine_name
from headrace.runner.workspace import Workspace


def _status(passed: bool, severity: str) -> Text:
    if passed:
        return Text("pass", style="green")
    return Text("FAIL" if severity == "error" else "warn", style="bold red" if severity == "error" else "yellow")


def show_checks(ws: Workspace, table: str | None, *, history: bool, limit: int, as_json: bool) -> None:
    """Latest result per check (or every result with --history), newest first."""
    records = ws.store.check_results(table=table.lower() if table else None, limit=max(limit, 1) * 50)
    if not history:
        seen: set[tuple[str, str]] = set()
        latest = []
        for r in records:
            if (r.table, r.name) not in seen:
                seen.add((r.table, r.name))
                latest.append(r)
        records = latest
    else:
        records = records[:limit]
    if as_json:
        print_json([vars(r) for r in records])
        return
    if not records:
        out.print("no check results yet" + (f" for {table}" if table else ""))
        return
    rows = []
    for r in records:
        ratio = "" if r.ratio is None else f"{r.ratio:.2%}"
        sample = ", ".join(str(s) for s in r.sample[:3])
        detail = r.message if r.passed else f"{r.message} {sample}".strip()
        when = [r.run_id, r.created_at.strftime("%Y-%m-%d %H:%M:%S")] if history else []
        rows.append([r.table, r.name, _status(r.passed, r.severity), fmt_int(r.failing),
                     fmt_int(r.total), ratio, *when, detail])
    when_cols = ["run", "time (UTC)"] if history else []
    out.print(simple_table(None, ["table", "check", "result", "failing", "rows", "ratio", *when_cols,
                                  "detail"], rows))


def show_quarantine(ws: Workspace, table: str, *, limit: int, as_json: bool) -> None:
    """Counts by rule and a sample of quarantined records of a table."""
    import duckdb

    name = quarantine_name(table.lower())
    snap = ws.lake.snapshot(name)
    con = duckdb.connect()
    try:
        con.register("q", snap.dataset())
        by_rule = con.execute(
            "SELECT e.column, e.rule, count(*) AS n FROM (SELECT unnest(errors) AS e FROM q) "
            "GROUP BY ALL ORDER BY n DESC, 1, 2"
        ).fetchall()
        total = con.execute("SELECT count(*), count(DISTINCT run_id) FROM q").fetchall()[0]
        sample = con.execute(
            "SELECT source_file, source_line, raw_record, errors, run_id FROM q "
            "ORDER BY quarantined_at DESC, source_file, source_line LIMIT ?", [limit]
        ).fetchall()
    finally:
        con.close()
    data: dict[str, Any] = {
        "table": table, "quarantine_table": name, "records": total[0], "runs": total[1],
        "by_rule": [{"column": c, "rule": r, "count": n} for c, r, n in by_rule],
        "sample": [{"file": f, "line": ln, "raw": raw, "errors": errs, "run_id": run}
                   for f, ln, raw, errs, run in sample],
    }
    if as_json:
        print_json(data)
        return
    out.print(f"[bold]{name}[/bold]: {total[0]:,} record(s) from {total[1]} run(s)")
    out.print(simple_table("by rule", ["column", "rule", "records"],
                           [[c or "(record)", r, fmt_int(n)] for c, r, n in by_rule]))
    rows = []
    root = f"{ws.config.root}/"
    for f, ln, raw, errs, _run in sample:
        reasons = "; ".join(f"{e['column'] or '(record)'}: {e['message']}" for e in errs or [])
        text = raw or ""
        rows.append([f"{str(f).replace(root, '')}:{ln}", text if len(text) <= 48 else text[:47] + "…", reasons])
    out.print(simple_table("sample", ["source", "record", "why"], rows))


def replay_quarantine(ws: Workspace, table: str, *, as_json: bool) -> bool:
    from headrace.cli.render import RunProgress
    from headrace.runner.replay import replay

    with RunProgress([table.lower()], enabled=not as_json) as progress:
        result = replay(ws, table, listener=progress)
    data = {
        "table": result.table, "examined": result.examined, "published": result.passed,
        "still_failing": result.still_failing, "removed_from_quarantine": result.removed,
        "run_id": result.run.run_id if result.run else None,
        "status": result.run.status if result.run else "nothing to publish",
        "error": next((t.error for t in result.run.tasks if t.error), None) if result.run else None,
    }
    if as_json:
        print_json(data)
    else:
        out.print(
            f"{result.table}: {result.examined:,} quarantined record(s) re-validated; "
            f"{result.passed:,} now pass and were published ({result.removed:,} removed from quarantine), "
            f"{result.still_failing:,} still fail and stay"
        )
        if data["error"]:
            out.print(f"[red]{data['error']}[/red]")
    return result.run is None or result.run.ok
