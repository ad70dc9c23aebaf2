"""``headrace quarantine replay TABLE``: re-validate quarantined records after a contract fix.

Records that now pass are published into the table (appended, or merged for a merge table,
so rows already in the table stay) and then removed from the quarantine; the others stay.
Idempotent: the replayed records are written to files whose path and content depend only on
which records they are, and appends are keyed by file content (Delta app transactions), so a
replay interrupted between the two commits publishes nothing twice when run again.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from headrace.delta.quarantine import quarantine_name
from headrace.errors import DefinitionError, SelectionError
from headrace.quality.contracts import open_raw_reader, plan_validation
from headrace.runner.events import Listener, RunResult
from headrace.runner.executor import Runner, RunOptions
from headrace.sources.files import sql_string
from headrace.spec.sources import FileSource
from headrace.spec.tables import TableSpec
from headrace.spec.write_modes import Append, Merge, Scd2


@dataclass(frozen=True)
class ReplayResult:
    table: str
    examined: int
    passed: int
    still_failing: int
    run: RunResult | None
    removed: int


class _SingleTable:
    """The DAG of a replay: one table, no neighbours (its upstream tables already exist)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def parents(self, name: str) -> list[str]:
        return []

    def descendants(self, name: str) -> set[str]:
        return set()

    def order(self) -> list[str]:
        return [self.name]


def replay(ws: Any, table: str, *, listener: Listener | None = None) -> ReplayResult:
    name = table.lower()
    spec: TableSpec | None = ws.project.tables.get(name)
    if spec is None:
        raise SelectionError(f"unknown table {table!r}", hint="`headrace dag` lists the tables")
    if not spec.validates_source:
        raise DefinitionError(
            f"table {name!r} has no contract on a single file source, so it has no quarantine to replay",
            hint="declare contract=hr.Contract(...) on a table that reads one source",
        )
    masked = sorted(n for n, kind in spec.contract.columns.items() if kind.mask) if spec.contract else []
    if masked:
        raise DefinitionError(
            f"table {name!r}: its quarantined records show *** for personal data ({', '.join(masked)}), "
            "so replaying them would publish the stars",
            hint="deliver the corrected source records again instead; the quarantine keeps the evidence",
        )
    qname = quarantine_name(name)
    if not ws.lake.exists(qname):
        return ReplayResult(name, 0, 0, 0, None, 0)
    source_key, source = next(iter(spec.inputs.items()))
    assert isinstance(source, FileSource)
    records = _quarantined(ws, qname)
    if records.num_rows == 0:
        return ReplayResult(name, 0, 0, 0, None, 0)
    folder = _replay_folder(ws, name, records)
    try:
        files = _write_records(folder / "candidates", source, records)
        passing = _passing(spec, source, files)
        chosen = records.filter(pa.array([i in passing for i in range(records.num_rows)]))
        if chosen.num_rows == 0:
            return ReplayResult(name, records.num_rows, 0, records.num_rows, None, 0)
        replay_files = _write_records(folder / "records", source, chosen)
        run = _publish(ws, spec, source_key, source, replay_files, listener)
        removed = 0
        if run.ok:
            removed = _remove(ws, qname, chosen)
        return ReplayResult(name, records.num_rows, chosen.num_rows,
                            records.num_rows - chosen.num_rows, run, removed)
    finally:
        shutil.rmtree(folder / "candidates", ignore_errors=True)


def _quarantined(ws: Any, qname: str) -> pa.Table:
    con = duckdb.connect()
    try:
        con.register("q", ws.lake.snapshot(qname).dataset())
        return con.sql(
            "SELECT source_file, source_line, raw_record, source_header, run_id FROM q "
            "ORDER BY source_file, source_line, run_id"
        ).to_arrow_table()
    finally:
        con.close()


def _replay_folder(ws: Any, table: str, records: pa.Table) -> Path:
    """A folder named by the records it replays: the same records give the same files."""
    h = hashlib.blake2b(digest_size=8)
    for f, ln, run in zip(*(records.column(c).to_pylist() for c in ("source_file", "source_line", "run_id")),
                          strict=True):
        h.update(f"{f}\x1f{ln}\x1f{run}\x1e".encode())
    folder = ws.config.root / ".headrace" / "replay" / table / h.hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_records(folder: Path, source: FileSource, records: pa.Table) -> list[Path]:
    """The raw records as files of the source's format: NDJSON lines, or CSV lines under the
    header they were read with (one file per header)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    raws = records.column("raw_record").to_pylist()
    if source.format in ("ndjson", "json"):
        path = folder / "records.ndjson"
        path.write_text("".join(f"{r}\n" for r in raws), encoding="utf-8")
        return [path]
    if source.format != "csv":
        raise DefinitionError(f"replay of {source.format} sources is not supported (their records always parse)")
    by_header: dict[str, list[str]] = {}
    for raw, header in zip(raws, records.column("source_header").to_pylist(), strict=True):
        by_header.setdefault(header or "", []).append(raw)
    paths = []
    for i, (header, lines) in enumerate(sorted(by_header.items())):
        path = folder / f"records_{i}.csv"
        body = "".join(f"{line}\n" for line in lines)
        path.write_text((f"{header}\n" if source.header else "") + body, encoding="utf-8")
        paths.append(path)
    return paths


def _passing(spec: TableSpec, source: FileSource, files: list[Path]) -> set[int]:
    """Positions (in the record order written) of records that pass the current contract."""
    con = duckdb.connect()
    try:
        plain = replace(source, path=str(files[0]))
        with open_raw_reader(con, plain, files, contract=spec.contract) as raw:
            plan = plan_validation(spec.contract, f"({raw.sql})", raw.fields)
            rows = con.execute(
                f"SELECT __hr_file, __hr_line FROM ({plan.sql}) WHERE len(__hr_violations) = 0"
            ).fetchall()
    finally:
        con.close()
    offsets: dict[str, int] = {}
    position = 0
    for path in files:
        offsets[str(path)] = position
        lines = path.read_text(encoding="utf-8").count("\n")
        position += lines - (1 if source.format == "csv" and source.header else 0)
    header = 1 if source.format == "csv" and source.header else 0
    return {offsets[str(f)] + int(line) - 1 - header for f, line in rows}


def _publish(ws: Any, spec: TableSpec, key: str, source: FileSource, files: list[Path],
             listener: Listener | None) -> RunResult:
    pattern = str(files[0].parent / ("*.ndjson" if source.format != "csv" else "*.csv"))
    replay_source = replace(source, path=pattern, name=f"{spec.name} quarantine replay")
    if isinstance(spec.write, Scd2):
        write: Any = replace(spec.write, deletes="ignore")  # a replay is not a full snapshot
    elif isinstance(spec.write, Merge):
        write = spec.write
    else:
        write = Append()
    contract = replace(spec.contract, on_violation="fail", max_quarantine_ratio=None)
    replay_spec = replace(spec, inputs={key: replay_source}, write=write, contract=contract)
    engine = ws.engine()
    try:
        runner = Runner(
            root=ws.config.root, tables={spec.name: replay_spec}, dag=_SingleTable(spec.name),
            lake=ws.lake, engine=engine, store=ws.store, settings=ws.write_settings(),
            listener=listener,
        )
        run = ws.config.run
        return runner.run([spec.name], RunOptions(
            command="quarantine replay", selection=(spec.name,), workers=1,
            lock_timeout=run.lock_timeout_seconds, project_name=ws.config.name,
            profile=ws.config.profile or "",
        ))
    finally:
        engine.close()


def _remove(ws: Any, qname: str, chosen: pa.Table) -> int:
    """Delete exactly the replayed records (file, line, run) from the quarantine, one commit."""
    from deltalake import DeltaTable

    groups: dict[tuple[str, str], set[int]] = {}
    columns = (chosen.column(c).to_pylist() for c in ("source_file", "source_line", "run_id"))
    for f, ln, run in zip(*columns, strict=True):
        groups.setdefault((f, run), set()).add(int(ln))
    clauses = [
        f"(source_file = {sql_string(f)} AND run_id = {sql_string(run)} "
        f"AND source_line IN ({', '.join(str(n) for n in sorted(lines))}))"
        for (f, run), lines in sorted(groups.items())
    ]
    table = DeltaTable(str(ws.lake.path(qname)))
    metrics = table.delete(" OR ".join(clauses))
    return int(metrics.get("num_deleted_rows", 0))
