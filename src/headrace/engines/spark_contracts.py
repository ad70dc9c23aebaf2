"""Contracts on Spark: the engine's own validator, run by Spark tasks over groups of files.

Why the DuckDB validator inside Spark tasks rather than Spark's CSV/JSON readers and casts:
a quarantine row names the file, the line and the raw text of every record that breaks the
contract, malformed ones included, and both engines must quarantine exactly the same records
for the same reasons. Spark's readers report neither line numbers nor the text of a malformed
record, split lines differently (a bare CR, invalid UTF-8) and cast differently (``'1.5'`` as
an integer, offsets in timestamps); matching the DuckDB engine record for record would mean a
second implementation of every rule, always one edge case behind. So the same SQL runs on both
engines, and on Spark it runs where the data is: each task validates its own files with an
embedded DuckDB (one thread per task core) and writes Parquet into the run's work folder;
only counts and file lists reach the driver.

The batch is one contract check, not one per group, so what depends on all files is done
between the steps, not inside a group:

1. **fields**: CSV headers (first lines only) or, when the contract does not fix them, the
   NDJSON keys of every group; their union is what each group reads;
2. **rows** (one Spark job): every group stores its lines typed and judged
   (:func:`headrace.quality.contracts.store_rows`);
3. **duplicate keys** (Spark SQL): counted over every group's stored key columns;
4. **rejects** (one Spark job, only groups holding one): the rejected lines read again with
   their line numbers, validated by the very SQL of ``plan_validation``.

Spark then reads the good rows from the stored Parquet (an anti-join on the duplicated keys).
Parquet files (a Parquet source, or a derived table's result written by Spark) take a shorter
way with the same SQL: key counts per group summed by Spark, then each group's rows checked
and stored with a good/bad flag (see "a derived table's result" below).

The unit of parallelism is a file: a single huge file is validated by one task. The work
folder must be visible to every executor (it is under the project, like the lake).
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from headrace.errors import DataQualityError, HeadraceError, SourceError
from headrace.quality.contracts import (
    NO_REJECTS,
    CsvDialect,
    StoredRows,
    copy_parquet,
    csv_headers,
    csv_union,
    file_chunks,
    header_text,
    open_raw_reader,
    plan_validation,
    probe_layout,
    store_rejects,
    store_rows,
)
from headrace.sources.files import quote_ident, sql_string
from headrace.spec.contracts import Contract
from headrace.spec.sources import FileSource

_GROUP_BYTES = 128 * 1024 * 1024
"""A task's share of input when the files outnumber the cores: what Spark reads per task."""


@dataclass(frozen=True)
class SparkValidation:
    """A validated batch: the good rows as Parquet folders Spark reads, the rejects as a
    DuckDB query (the quarantine table is written from the driver, rejects are few)."""

    rows: int
    quarantined: int
    columns: tuple[str, ...]
    fields: tuple[str, ...]
    stored: tuple[Path, ...]
    key_columns: tuple[str, ...]
    duplicates: tuple[Path, ...]
    rejects_sql: str
    headers: dict[str, str | None]


@dataclass(frozen=True)
class _Job:
    """One group's work in one step; pickled into the Spark task."""

    step: str  # "headers" | "keys" | "rows" | "rejects"
    spec: FileSource
    files: tuple[Path, ...]
    contract: Contract
    directory: Path
    fields: tuple[str, ...] | None = None
    other_keys: bool = False
    stored: StoredRows | None = None  # for "rejects"
    duplicates: tuple[Path, ...] = ()
    threads: int = 1


@dataclass(frozen=True)
class _Failure:
    """A headrace error raised in a task, carried back as text (exceptions with keyword
    arguments do not survive pickling)."""

    kind: str
    message: str
    hint: str | None


def file_groups(files: Sequence[Path], parallelism: int) -> list[tuple[Path, ...]]:
    """Consecutive runs of ``files``: at least one per core while files last, and about
    ``_GROUP_BYTES`` each when there is more input than that per core."""
    if not files:
        return []
    sizes = [_size(p) for p in files]
    total = sum(sizes)
    count = min(len(files), max(parallelism, -(-total // _GROUP_BYTES)))
    share = total / count if total else 0
    groups: list[tuple[Path, ...]] = []
    current: list[Path] = []
    filled = 0
    for i, (path, size) in enumerate(zip(files, sizes, strict=True)):
        current.append(path)
        filled += size
        left = len(files) - i - 1
        wanted = count - len(groups) - 1  # groups still to open after this one
        if left and wanted and (filled >= share or left <= wanted):
            groups.append(tuple(current))
            current, filled = [], 0
    if current:
        groups.append(tuple(current))
    return groups


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def validate_on_spark(
    spark: Any,
    local: Any,
    read_parquet: Callable[[Sequence[Path], pa.Schema], Any],
    spec: FileSource,
    files: Sequence[Path],
    contract: Contract,
    *,
    source_name: str,
    workdir: Path,
    parallelism: int,
    task_cores: int = 1,
) -> SparkValidation:
    """Validate ``files`` in Spark tasks (see the module docstring). ``local`` is the
    driver's DuckDB connection (it reads footers only); ``read_parquet`` reads Parquet files
    into a DataFrame of the given schema."""
    groups = file_groups([Path(p) for p in files], parallelism)
    folders = [workdir / f"group-{i}" for i in range(len(groups))]

    def run(step: str, **kw: Any) -> list[Any]:
        return _run(spark, jobs(step, **kw), spec=spec, source_name=source_name)

    def jobs(step: str, **kw: Any) -> list[_Job]:
        return [_Job(step=step, spec=spec, files=g, contract=contract, directory=d, threads=task_cores, **kw)
                for g, d in zip(groups, folders, strict=True)]

    # 1. the batch's fields
    fields: tuple[str, ...] | None = None
    headers: dict[str, str | None] = {}
    if spec.format == "csv":
        found = [h for batch in run("headers") for h in batch]
        headers = {str(p): h for p, h in zip([p for g in groups for p in g], found, strict=True)}
        fields = _csv_fields(spec, contract, headers)
    optimistic = spec.format == "ndjson" and contract.schema == "evolve"
    if spec.format == "ndjson":
        fields = contract.names if contract.schema == "discard" or optimistic else _discover_keys(run("keys"), contract)
    # 2. every line typed and judged, in the tasks
    stored = run("rows", fields=fields, other_keys=optimistic)
    if optimistic and any(s.found_other for s in stored):  # a record holds another key
        stored = run("rows", fields=_discover_keys(run("keys"), contract))
    first = stored[0]
    paths = [p for d in folders for p in sorted((d / "rows").glob("*.parquet"))]
    # 3. duplicate keys over every group
    key_names = tuple(contract.names[i] for i, _ in first.key_columns)
    duplicates: tuple[Path, ...] = ()
    if key_names:
        schema = local.sql(f"SELECT * FROM {first.stored} LIMIT 0").to_arrow_table().schema
        keys_frame = read_parquet(paths, pa.schema([schema.field(k) for k in key_names]))
        duplicates = _duplicate_keys(keys_frame, key_names, [i for i, _ in first.key_columns], workdir / "dups")
    # 4. the rejects, numbered, where there are any
    todo = [i for i, s in enumerate(stored) if s.bad or duplicates]
    rejects: list[tuple[str, int]] = [("", 0)] * len(stored)
    if todo:
        work = [replace(j, stored=stored[i], duplicates=duplicates)
                for i, j in enumerate(jobs("rejects")) if i in todo]
        for i, found_rejects in zip(todo, _run(spark, work, spec=spec, source_name=source_name), strict=True):
            rejects[i] = found_rejects
    queries = [sql for sql, n in rejects if n]
    return SparkValidation(
        rows=sum(s.rows for s in stored),
        quarantined=sum(n for _, n in rejects),
        columns=first.columns,
        fields=first.fields,
        stored=tuple(paths),
        key_columns=key_names,
        duplicates=duplicates,
        rejects_sql="\nUNION ALL\n".join(queries) if queries else NO_REJECTS,
        headers=headers,
    )


def _csv_fields(spec: FileSource, contract: Contract, headers: dict[str, str | None]) -> tuple[str, ...]:
    """The fields of a CSV batch from every file's first line, as ``probe_layout`` names them."""
    names = [n for n, _ in spec.columns] or list(contract.names)
    if not spec.header and not names:
        first = next((h for h in headers.values() if h is not None), None)
        width = len(CsvDialect.of(spec).split(first) or []) if first is not None else 0
        names = [f"column{i}" for i in range(width)]
    probes = [_HeaderProbe(Path(p), h) for p, h in headers.items()]
    return csv_union(csv_headers(spec, probes, names))




@dataclass(frozen=True)
class _HeaderProbe:
    """A file's path and first line (what ``csv_headers`` reads)."""

    path: Path
    header: str | None


def _discover_keys(found: list[set[str]], contract: Contract) -> tuple[str, ...]:
    """Every group's JSON keys, united and ordered as one DuckDB pass over all files would
    order them: the contract's spellings first, then the others by name."""
    keys = sorted(set().union(*found))
    wanted = contract.names
    return tuple([k for k in wanted if k in keys] + [k for k in keys if k not in wanted])


def _duplicate_keys(frame: Any, keys: Sequence[str], positions: Sequence[int], target: Path, *,
                    counted: bool = False) -> tuple[Path, ...]:
    """The keys held by more than one stored row of the batch (``__hr_k{i}``, ``i`` the key's
    contract position, and ``__hr_dups``), counted by Spark over the stored key columns of
    every group (``frame``; ``counted``: each group's counts in its ``__hr_dups``, summed), as
    Parquet files the rejects step reads (none: no duplicates)."""
    from pyspark.sql import functions as F

    from headrace.engines.spark_engine import quote_spark

    known = frame.where(" AND ".join(f"{quote_spark(k)} IS NOT NULL" for k in keys))
    total = F.sum("__hr_dups").cast("bigint") if counted else F.count(F.lit(1))
    per_key = known.groupBy(*[F.col(quote_spark(k)) for k in keys]).agg(total.alias("__hr_dups"))
    dups = per_key.where("__hr_dups > 1").select(
        *[F.col(quote_spark(k)).alias(f"__hr_k{i}") for i, k in zip(positions, keys, strict=True)],
        "__hr_dups")
    shutil.rmtree(target, ignore_errors=True)
    dups.coalesce(1).write.parquet(f"file://{target}")
    files = tuple(sorted(target.glob("*.parquet")))
    import pyarrow.parquet as pq

    return files if sum(pq.ParquetFile(p).metadata.num_rows for p in files) else ()


def _run(spark: Any, jobs: Sequence[_Job | _ResultJob], *, spec: FileSource | None = None, source_name: str) -> list[Any]:
    """Run ``jobs`` as the tasks of one Spark job (one task each) and return their results in
    order; a headrace error in a task is raised here with its own message and hint.
    ``source_name`` names what is validated: a source, or (``spec`` None) a table's result."""
    if not jobs:
        return []
    blobs = [pickle.dumps(j) for j in jobs]
    frame = spark.range(0, len(jobs), 1, len(jobs)).mapInArrow(_task(blobs), "id long, out binary")
    where = f"source {source_name!r}" if spec is not None else f"table {source_name!r}"
    what = spec.describe() if spec is not None else "its result"
    try:
        rows = frame.collect()
    except Exception as exc:  # a task died outside headrace's own errors (I/O, memory, ...)
        from headrace.engines.spark_engine import _first_line

        raise SourceError(f"{where}: cannot validate {what}: {_first_line(exc)}",
                          hint="check that every executor can read the files and the project folder") from exc
    results = {int(row["id"]): pickle.loads(bytes(row["out"])) for row in rows}
    outcomes = [results[i] for i in range(len(jobs))]
    for outcome in outcomes:
        if isinstance(outcome, _Failure):
            if outcome.kind == "read":
                raise SourceError(f"{where}: cannot read {what}: {outcome.message}", hint=outcome.hint)
            error = DataQualityError if outcome.kind == "DataQualityError" else SourceError
            raise error(outcome.message, hint=outcome.hint)
    return outcomes


def _task(blobs: list[bytes]) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for i in batch.column(0).to_pylist():
                out = pickle.dumps(run_job(pickle.loads(blobs[i])))
                yield pa.RecordBatch.from_arrays(
                    [pa.array([i], pa.int64()), pa.array([out], pa.binary())], names=["id", "out"])

    return run


def run_job(job: _Job | _ResultJob) -> Any:
    """One group's step, in a Spark task (or anywhere: it needs only the files)."""
    import duckdb

    from headrace.errors import engine_message

    try:
        if isinstance(job, _Job) and job.step == "headers":
            return [file_header(job.spec, p) for p in job.files]
        job.directory.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(":memory:", config={"threads": max(1, job.threads),
                                                 "temp_directory": str(job.directory / "spill")})
        try:
            return _step(con, job) if isinstance(job, _Job) else _result_step(con, job)
        finally:
            con.close()
    except HeadraceError as exc:
        return _Failure(type(exc).__name__, exc.message, exc.hint)
    except duckdb.Error as exc:
        return _Failure("read", engine_message(exc), "check the file format and options")


def _step(con: Any, job: _Job) -> Any:
    spec, files, contract = job.spec, list(job.files), job.contract
    if job.step == "keys":
        layout = probe_layout(con, spec, files, workdir=job.directory, count_lines=False)
        return set(layout.keys)
    if job.step == "rows":
        raw = open_raw_reader(con, spec, files, fields=job.fields, contract=contract, workdir=job.directory,
                              count_lines=False)
        return store_rows(con, raw, contract, directory=job.directory, other_keys=job.other_keys)
    if job.step == "rejects":
        assert job.stored is not None, "a rejects step reads what its rows step stored"
        duplicates = None
        if job.duplicates:
            listed = ", ".join(f"'{p}'" for p in job.duplicates)
            con.execute(f"CREATE TEMP TABLE hr_dups AS SELECT * FROM read_parquet([{listed}])")
            duplicates = "hr_dups"
        found = store_rejects(con, job.stored, contract, duplicates=duplicates, directory=job.directory,
                              name="hr", threads=job.threads)
        return found if found is not None else _reference_rejects(con, job, duplicates)
    raise ValueError(f"unknown step {job.step!r}")


def _reference_rejects(con: Any, job: _Job, duplicates: str | None) -> tuple[str, int]:
    """The rejects by one numbered pass (the safety net when the fast re-read does not add up)."""
    assert job.stored is not None
    with open_raw_reader(con, job.spec, list(job.files), fields=job.stored.fields, contract=job.contract,
                         workdir=job.directory / "reference") as raw:
        plan = plan_validation(job.contract, f"({raw.sql})", raw.fields,
                               duplicates=duplicates if job.stored.key_columns else None)
        stored = copy_parquet(con, plan.quarantine_sql(f"({plan.sql})"), job.directory / "rejects")
    count = con.execute(f"SELECT count(*) FROM {stored}").fetchall()[0][0]
    return f"SELECT * FROM {stored}", int(count)


# ---- a derived table's result --------------------------------------------------------------
# A contract on a table fed by other tables checks the transform's result. Spark writes the
# result as Parquet (its executors, in parallel); groups of those files are then validated by
# the same SQL the DuckDB engine runs (``result_raw_sql`` + ``plan_validation``), in tasks:
# (1) each group counts its keys, Spark sums the counts into the duplicated keys; (2) each
# group writes its rows with a good/bad flag and, apart, its rejects. A row's line is its
# ordinal in the result, in file order (files numbered from their row counts).

@dataclass(frozen=True)
class ResultValidation:
    """A validated result: Parquet files of the checked rows (data columns and ``__hr_good``)
    Spark reads, the rejects as a DuckDB query for the driver (rejects are few)."""

    rows: int
    quarantined: int
    columns: tuple[str, ...]
    fields: tuple[str, ...]
    checked: tuple[Path, ...]
    rejects_sql: str


@dataclass(frozen=True)
class _ResultJob:
    """One group of Parquet files in one step ("keys" | "rows"); pickled into the task.
    ``parquet_types``: the files are a Parquet source's, with these columns over the batch."""

    step: str
    files: tuple[Path, ...]
    first_line: int
    origin: str
    contract: Contract
    directory: Path
    duplicates: tuple[Path, ...] = ()
    threads: int = 1
    parquet_types: tuple[tuple[str, str], ...] | None = None


def validate_result_on_spark(
    spark: Any,
    read_parquet: Callable[[Sequence[Path], pa.Schema], Any],
    files: Sequence[Path],
    contract: Contract,
    *,
    table: str,
    workdir: Path,
    parallelism: int,
    task_cores: int = 1,
) -> ResultValidation:
    """Validate a result Spark wrote as Parquet ``files`` (see above) in Spark tasks."""
    return _validate_parquet(spark, read_parquet, files, contract, origin=table, spec=None, workdir=workdir,
                             parallelism=parallelism, task_cores=task_cores)


def validate_parquet_source_on_spark(
    spark: Any,
    read_parquet: Callable[[Sequence[Path], pa.Schema], Any],
    spec: FileSource,
    files: Sequence[Path],
    contract: Contract,
    *,
    types: Sequence[tuple[str, str]],
    source_name: str,
    workdir: Path,
    parallelism: int,
    task_cores: int = 1,
) -> ResultValidation:
    """Validate a Parquet source's ``files`` in Spark tasks as a result's are, each row named
    by its file and its row number in it; ``types`` are the batch's columns (DuckDB's
    ``union_by_name`` over every file, read on the driver from the footers)."""
    return _validate_parquet(spark, read_parquet, files, contract, origin=source_name, spec=spec,
                             workdir=workdir, parallelism=parallelism, task_cores=task_cores,
                             parquet_types=tuple(types))


def _validate_parquet(
    spark: Any,
    read_parquet: Callable[[Sequence[Path], pa.Schema], Any],
    files: Sequence[Path],
    contract: Contract,
    *,
    origin: str,
    spec: FileSource | None,
    workdir: Path,
    parallelism: int,
    task_cores: int,
    parquet_types: tuple[tuple[str, str], ...] | None = None,
) -> ResultValidation:
    import pyarrow.parquet as pq

    files = [Path(p) for p in files]  # at least one: empty inputs stay on the driver
    groups = file_groups(files, parallelism)
    firsts = [1] * len(groups)  # a Parquet source numbers rows per file, in the task
    if parquet_types is None:  # a result numbers its rows across files: each group's first
        line = 1
        for i, group in enumerate(groups):
            firsts[i] = line
            line += sum(pq.ParquetFile(p).metadata.num_rows for p in group)
    folders = [workdir / f"result-{i}" for i in range(len(groups))]

    def jobs(step: str, **kw: Any) -> list[_ResultJob]:
        return [_ResultJob(step=step, files=g, first_line=f, origin=origin, contract=contract, directory=d,
                           threads=task_cores, parquet_types=parquet_types, **kw)
                for g, f, d in zip(groups, firsts, folders, strict=True)]

    duplicates: tuple[Path, ...] = ()
    keys = [i for i, kind in enumerate(contract.columns.values()) if kind.key]
    if keys:
        _run(spark, jobs("keys"), spec=spec, source_name=origin)
        counted = [p for d in folders for p in sorted((d / "keys").glob("*.parquet"))]
        names = [f"__hr_k{i}" for i in keys]
        schema = pq.read_schema(counted[0])
        frame = read_parquet(counted, pa.schema([schema.field(n) for n in [*names, "__hr_dups"]]))
        duplicates = _duplicate_keys(frame, names, keys, workdir / "result-dups", counted=True)
    done = _run(spark, jobs("rows", duplicates=duplicates), spec=spec, source_name=origin)
    queries = [sql for _, bad, _, sql in done if bad]
    checked = tuple(p for d in folders for p in sorted((d / "checked").glob("*.parquet")))
    return ResultValidation(
        rows=sum(n for n, _, _, _ in done),
        quarantined=sum(bad for _, bad, _, _ in done),
        columns=contract_columns(contract, done[0][2]),
        fields=done[0][2],
        checked=checked,
        rejects_sql="\nUNION ALL\n".join(queries) if queries else NO_REJECTS,
    )


def contract_columns(contract: Contract, fields: Sequence[str]) -> tuple[str, ...]:
    """A good row's columns: the contract's, then (``evolve``) the result's others."""
    return plan_validation(contract, "__hr_none", fields).columns


def _result_step(con: Any, job: _ResultJob) -> Any:
    """``keys``: the group's key counts; ``rows``: its rows checked (``__hr_good``) and its
    rejects, each as Parquet; returns ``(rows, rejects, fields, rejects query)``."""
    import pyarrow.parquet as pq

    from headrace.quality.contracts import parquet_raw_sql, result_raw_sql

    if job.parquet_types is not None:  # a Parquet source: a row's file and its row number in it
        fields = [n for n, _ in job.parquet_types]
        present = {f.name for p in job.files for f in pq.read_schema(p)}
        raw = f"({parquet_raw_sql(job.files, job.parquet_types, present=present)})"
    else:  # a result: the table's name and the row's ordinal in the result
        schema = pq.read_schema(job.files[0])
        types = [str(t) for t in con.from_arrow(schema.empty_table()).types]  # the stream is read once
        con.register("__hr_result", _numbered(job.files, job.first_line, schema))
        fields = schema.names
        raw = f"({result_raw_sql('__hr_result', fields, types, origin=job.origin, line='__hr_line')})"
    if job.step == "keys":
        plan = plan_validation(job.contract, raw, fields, duplicates="__hr_none")
        copy_parquet(con, plan.duplicates_sql(min_count=1), job.directory / "keys")
        return None
    keys = [i for i, kind in enumerate(job.contract.columns.values()) if kind.key]
    duplicates = None
    if keys:
        if job.duplicates:
            listed = ", ".join(sql_string(str(p)) for p in job.duplicates)
            con.execute(f"CREATE TEMP TABLE hr_dups AS SELECT * FROM read_parquet([{listed}])")
        else:  # no key is held twice in the whole result
            kinds = list(job.contract.columns.values())
            cols = ", ".join(f"CAST(NULL AS {kinds[i].duckdb_type()}) AS __hr_k{i}" for i in keys)
            con.execute(f"CREATE TEMP TABLE hr_dups AS SELECT {cols}, 0::BIGINT AS __hr_dups WHERE false")
        duplicates = "hr_dups"
    plan = plan_validation(job.contract, raw, fields, duplicates=duplicates)
    cols = ", ".join(quote_ident(c) for c in plan.columns)
    con.execute(f"CREATE TEMP TABLE hr_checked AS {plan.sql}")
    copy_parquet(con, f"SELECT {cols}, len(__hr_violations) = 0 AS __hr_good FROM hr_checked", job.directory / "checked")
    rows, bad = con.execute(plan.counts_sql("hr_checked")).fetchall()[0]
    rejects = ""
    if bad:
        stored = copy_parquet(con, plan.quarantine_sql("hr_checked"), job.directory / "rejects")
        rejects = f"SELECT * FROM {stored}"
    return int(rows), int(bad), tuple(fields), rejects


def _numbered(files: Sequence[Path], first_line: int, schema: pa.Schema) -> pa.RecordBatchReader:
    """The files' rows in order, each with ``__hr_line`` (its ordinal in the result), streamed
    (numpy comes with pyspark's Arrow support, which these tasks run under)."""
    import numpy as np
    import pyarrow.parquet as pq

    out = schema.append(pa.field("__hr_line", pa.int64()))

    def batches() -> Iterator[pa.RecordBatch]:
        line = first_line
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=64 * 1024):
                numbers = pa.array(np.arange(line, line + batch.num_rows, dtype=np.int64))
                line += batch.num_rows
                yield pa.RecordBatch.from_arrays([*batch.columns, numbers], schema=out)

    return pa.RecordBatchReader.from_batches(out, batches())


def file_header(spec: FileSource, path: Path) -> str | None:
    """A file's first line as the probe reads it, without reading the rest of the file."""
    head = b""
    for chunk in file_chunks(spec, path):
        head += chunk
        end = head.find(b"\n")
        if end >= 0:
            return header_text(head[:end])
    return header_text(head or None)
