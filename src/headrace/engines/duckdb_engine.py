"""The embedded default engine: one in-process DuckDB database per run, one cursor per task.

Inputs are bound as connection-local temp views named after the transform's input keys, so
concurrent tasks never see each other's names. A result is computed once, streamed by DuckDB's
parallel Parquet writer straight into the table's folder; the lake then commits those files
(or discards them), so memory stays bounded and no row is computed twice.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from headrace.engines.base import (
    PARQUET_CODECS,
    StagedFile,
    StagedResult,
    StageTarget,
    check_result_columns,
    delta_schema,
)
from headrace.errors import (
    DefinitionError,
    EngineError,
    SourceError,
    TransformError,
    engine_message,
)
from headrace.sources.batches import InputBatch
from headrace.sources.files import quote_ident, reader_sql, sql_string
from headrace.spec.context import render_template
from headrace.spec.sources import FileSource, SourceSpec
from headrace.spec.tables import PythonTransform, SqlTransform, TableSpec

# DuckDB types Delta cannot store, and what we store instead (lossless where possible)
_DELTA_CASTS: dict[str, str] = {
    "UTINYINT": "SMALLINT",
    "USMALLINT": "INTEGER",
    "UINTEGER": "BIGINT",
    "UBIGINT": "DECIMAL(20,0)",
    "HUGEINT": "DECIMAL(38,0)",
    "UHUGEINT": "DECIMAL(38,0)",
    "TIME": "VARCHAR",
    "INTERVAL": "VARCHAR",
    "UUID": "VARCHAR",
    "JSON": "VARCHAR",
    '"NULL"': "VARCHAR",
    "NULL": "VARCHAR",
}

_counter = itertools.count()
_counter_lock = threading.Lock()


def _next_id() -> int:
    with _counter_lock:
        return next(_counter)


class DuckDBEngine:
    """DuckDB in-process. Settings: memory_limit, threads, temp_directory."""

    name = "duckdb"

    def __init__(
        self,
        *,
        memory_limit: str | None = None,
        threads: int | None = None,
        temp_directory: Path | str | None = None,
    ) -> None:
        config: dict[str, Any] = {}
        if memory_limit:
            config["memory_limit"] = memory_limit
        if threads:
            config["threads"] = threads
        if temp_directory:
            Path(temp_directory).mkdir(parents=True, exist_ok=True)
            config["temp_directory"] = str(temp_directory)
        try:
            self._db = duckdb.connect(":memory:", config=config)
            # partitioned writes buffer this many rows per thread before flushing to the
            # per-partition files; DuckDB's default (524,288) makes memory grow with the input.
            # GLOBAL: each task works on its own cursor, which is a connection of its own.
            self._db.execute("SET GLOBAL partitioned_write_flush_threshold = 65536")
        except duckdb.Error as exc:
            raise EngineError(f"cannot start DuckDB: {engine_message(exc)}") from exc

    def session(self) -> DuckDBSession:
        return DuckDBSession(self._db.cursor())

    def connection(self) -> duckdb.DuckDBPyConnection:
        """A fresh cursor, for ad-hoc queries (``headrace query``)."""
        return self._db.cursor()

    def close(self) -> None:
        self._db.close()


class DuckDBSession:
    """One task's view of the engine; everything it creates is dropped on close."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._uid = _next_id()
        self._sources: dict[str, tuple[SourceSpec, list[Path], str]] = {}
        self._uncounted: list[str] = []  # CSV/JSON sources whose rows are counted from the profile
        self._validated: dict[str, tuple[str, Any, dict[str, str | None]]] = {}
        self._binds = 0

    # ---- inputs -------------------------------------------------------------------------
    def read_source(self, key: str, spec: SourceSpec, batch: InputBatch, *, source_name: str) -> int | None:
        """Bind the source as a lazy view: files are parsed once, while the result streams to
        Parquet, so memory does not grow with the input. Row count only where it is free."""
        if not isinstance(spec, FileSource):  # database and Kafka batches arrive as files
            raise EngineError(f"source {source_name!r}: only file sources reach the engine directly")
        files = [e.path for e in batch.files]
        self._sources[key] = (spec, files, source_name)
        try:
            pinned = self._pinned_schema(spec, files)
            self.con.execute(f"CREATE TEMP VIEW {quote_ident(key)} AS {reader_sql(spec, files, extra=pinned)}")
        except duckdb.Error as exc:
            raise self._source_error(exc, spec, files, source_name) from exc
        if isinstance(spec, FileSource) and spec.format != "parquet":
            self._uncounted.append(key)
        if isinstance(spec, FileSource) and spec.format == "parquet":
            paths = "[" + ", ".join(sql_string(str(p)) for p in files) + "]"
            row = self.con.execute(
                f"SELECT sum(num_rows) FROM parquet_file_metadata({paths})"
            ).fetchall()
            return int(row[0][0] or 0)
        return None

    def _pinned_schema(self, spec: SourceSpec, files: Sequence[Path]) -> list[str]:
        """Detect the schema once and fix it in the view. Why: DuckDB re-detects a JSON/CSV
        schema on every bind (0.3 s for 300 MB of NDJSON), and a run binds a source several
        times; with explicit columns a bind is free."""
        if not isinstance(spec, FileSource) or spec.columns or spec.format == "parquet":
            return []
        if spec.format in ("ndjson", "json"):
            plain = replace(spec, filename_column=None)
            described = self.con.execute(f"DESCRIBE {reader_sql(plain, files)}").fetchall()
            return [f"columns={_struct_literal((r[0], r[1]) for r in described)}"]
        opts = [f"header={'true' if spec.header else 'false'}", f"delim={sql_string(spec.delimiter or ',')}"]
        if spec.quote is not None:
            opts.append(f"quote={sql_string(spec.quote)}")
        if spec.escape is not None:
            opts.append(f"escape={sql_string(spec.escape)}")
        if spec.null_string is not None:
            opts.append(f"nullstr={sql_string(spec.null_string)}")
        row = self.con.execute(
            f"SELECT Columns, DateFormat, TimestampFormat, SkipRows FROM sniff_csv({sql_string(str(files[0]))}, "
            f"{', '.join(opts)})"
        ).fetchall()[0]
        columns, date_format, ts_format, skip = row
        # the sniffed dialect (quote, escape) comes from a sample, so it stays DuckDB's default;
        # types and date formats are what every bind would detect anyway
        pinned = ["auto_detect=false", f"columns={_struct_literal((c['name'], c['type']) for c in columns)}"]
        if skip:
            pinned.append(f"skip={int(skip)}")
        if date_format:
            pinned.append(f"dateformat={sql_string(date_format)}")
        if ts_format:
            pinned.append(f"timestampformat={sql_string(ts_format)}")
        return pinned

    def read_validated_source(
        self, key: str, spec: SourceSpec, batch: InputBatch, contract: Any, *, source_name: str,
        workdir: Path,
    ) -> tuple[int, int]:
        """Read every record (malformed ones included), validate it against the contract, and
        keep the result as Parquet in ``workdir`` (bounded memory): one parallel pass over the
        input, then the rejects alone re-read with their line numbers (see
        :func:`headrace.quality.contracts.store_validated`). Binds ``key`` to the good, typed
        rows; the rejects stay available to :meth:`quarantine_reader`.
        Returns ``(records read, records violating the contract)``."""
        from headrace.quality.contracts import store_validated

        if not isinstance(spec, FileSource):  # database and Kafka batches arrive as files
            raise EngineError(f"source {source_name!r}: only file sources reach the engine directly")
        files = [e.path for e in batch.files]
        self._sources[key] = (spec, files, source_name)
        try:
            stored = store_validated(
                self.con, spec, files, contract, directory=workdir / f"validated-{key}",
                name=f"__hr_{self._uid}_{key}",
            )
        except duckdb.Error as exc:
            raise SourceError(
                f"source {source_name!r}: cannot read {spec.describe()}: {engine_message(exc)}",
                hint="check the file format and options",
            ) from exc
        self.con.execute(f"CREATE TEMP VIEW {quote_ident(key)} AS {stored.good_sql()}")
        self.keep_validated(key, stored)
        return stored.rows, stored.quarantined

    def keep_validated(self, key: str, stored: Any) -> None:
        """Keep a validated source's rejects (a ``StoredValidation``) for :meth:`quarantine_reader`."""
        view = f"__hr_validated_{self._uid}_{key}"
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(view)} AS {stored.rejects}")
        self._validated[key] = (view, stored, dict(stored.headers))

    def validate_result(
        self, spec: TableSpec, result: duckdb.DuckDBPyRelation, contract: Any, *, workdir: Path
    ) -> tuple[duckdb.DuckDBPyRelation, int, int]:
        """Validate a transform's result against the table's contract (tables that read other
        tables): each row as text, so the same rules and quarantine apply as for a source.
        Returns the good rows (typed), the row count and the count of rows breaking a rule."""
        from headrace.quality.contracts import plan_validation, result_raw_sql

        hidden = f"__hr_out_{self._uid}"
        result.create_view(hidden, replace=True)
        fields = list(result.columns)
        raw = result_raw_sql(quote_ident(hidden), fields, [str(t) for t in result.types], origin=spec.name,
                             line="row_number() OVER ()")
        plan = plan_validation(contract, f"({raw})", fields)
        validated = workdir / "validated-result"
        try:
            self.con.execute(
                f"COPY ({plan.sql}) TO {sql_string(str(validated))} "
                "(FORMAT parquet, COMPRESSION zstd, PER_THREAD_OUTPUT true, OVERWRITE_OR_IGNORE true)"
            )
        except duckdb.Error as exc:
            raise self._classify(exc, spec, f"table {spec.name!r} ({spec.origin})") from exc
        view = f"__hr_validated_{self._uid}_result"
        self.con.execute(
            f"CREATE OR REPLACE TEMP VIEW {quote_ident(view)} AS SELECT * FROM "
            f"read_parquet({sql_string(str(validated / '*.parquet'))})"
        )
        self._validated["__result__"] = (view, plan, {})
        rows, bad = self.con.execute(plan.counts_sql(quote_ident(view))).fetchall()[0]
        return self.con.sql(plan.good_sql(quote_ident(view))), int(rows), int(bad)

    def quarantine_reader(self, key: str, *, table: str, run_id: str) -> pa.RecordBatchReader:
        """The rejects of a validated source, shaped as the quarantine table's rows."""
        from headrace.delta.quarantine import select_sql

        view, plan, headers = self._validated[key]
        rejects = f"__hr_rejects_{self._uid}_{key}"
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(rejects)} AS {plan.quarantine_sql(quote_ident(view))}")
        return self.con.sql(select_sql(quote_ident(rejects), table=table, run_id=run_id, headers=headers)).arrow()

    def read_table(self, key: str, dataset: Any) -> None:
        hidden = f"__hr_ds_{self._uid}_{key}"
        self.con.register(hidden, dataset)
        self.con.execute(
            f"CREATE TEMP VIEW {quote_ident(key)} AS SELECT * FROM {quote_ident(hidden)}"
        )

    def _source_error(
        self, exc: duckdb.Error, spec: SourceSpec, files: Sequence[Path], source_name: str
    ) -> SourceError:
        if isinstance(spec, FileSource) and spec.format == "csv":
            detail = self._diagnose_csv(spec, files)
            if detail:
                return SourceError(
                    f"source {source_name!r}: {detail}",
                    hint="fix the file, or declare a contract with on_violation='quarantine'",
                )
        return SourceError(
            f"source {source_name!r}: cannot read {spec.describe()}: {engine_message(exc)}",
            hint="check the file format and options (delimiter, header, compression)",
        )

    def _diagnose_csv(self, spec: FileSource, files: Sequence[Path]) -> str | None:
        """Re-read with DuckDB's reject store to name the first bad file, line and reason."""
        rejects = f"__hr_rej_{self._uid}"
        scans = f"__hr_rejscan_{self._uid}"
        extra = [
            "store_rejects=true",
            f"rejects_table='{rejects}'",
            f"rejects_scan='{scans}'",
        ]
        try:
            self.con.execute(f"SELECT count(*) FROM ({reader_sql(spec, files, extra=extra)})").fetchall()
            rows = self.con.execute(
                f"SELECT s.file_path, e.line, e.error_message, e.csv_line FROM {rejects} e "
                f"JOIN {scans} s USING (scan_id, file_id) ORDER BY s.file_path, e.line LIMIT 1"
            ).fetchall()
        except duckdb.Error:
            return None
        if not rows:
            return None
        path, line, message, text = rows[0]
        return f"{path} line {line}: {message} (row: {str(text)[:80]!r})"

    # ---- transform ----------------------------------------------------------------------
    def transform(self, spec: TableSpec, keys: Sequence[str], context: Any) -> duckdb.DuckDBPyRelation:
        transform = spec.transform
        where = f"table {spec.name!r} ({spec.origin})"
        try:
            if isinstance(transform, SqlTransform):
                return self.con.sql(render_template(transform.query, getattr(context, "ds", None)))
            if isinstance(transform, PythonTransform):
                args: dict[str, Any] = {k: self.con.table(k) for k in keys}
                if transform.wants_context:
                    args["ctx"] = context
                result = transform.fn(**args)
                return self._as_relation(result, where)
        except duckdb.Error as exc:
            raise self._classify(exc, spec, where) from exc
        if transform is None and len(keys) == 1:
            return self.con.table(keys[0])
        raise DefinitionError(f"{where}: has no transform and {len(keys)} inputs")

    def _as_relation(self, result: Any, where: str) -> duckdb.DuckDBPyRelation:
        if isinstance(result, duckdb.DuckDBPyRelation):
            return result
        if isinstance(result, str):
            return self.con.sql(result)
        if isinstance(result, pa.Table | pa.RecordBatchReader):
            return self.con.from_arrow(result)
        if isinstance(result, pa.RecordBatch):
            return self.con.from_arrow(pa.Table.from_batches([result]))
        module = type(result).__module__.split(".")[0]
        if module == "polars":
            frame = result.collect() if hasattr(result, "collect") else result
            return self.con.from_arrow(frame.to_arrow())
        if module == "pandas":
            return self.con.from_df(result)
        raise TransformError(
            f"{where}: returned {type(result).__name__}",
            hint="return a DuckDB relation, a SQL string, an Arrow table/reader or a Polars/pandas frame",
        )

    # ---- staging ------------------------------------------------------------------------
    def conform(self, result: duckdb.DuckDBPyRelation, table_schema: pa.Schema, *,
                drop_extra: bool) -> duckdb.DuckDBPyRelation:
        """Fit a result to an existing table: NULLs for the table's columns the result lacks
        (typed like the table), and, when asked, without columns the table does not have."""
        have = list(result.columns)
        wanted = set(table_schema.names)
        cols = [quote_ident(c) for c in have if not drop_extra or c in wanted]
        for field_ in table_schema:
            if field_.name not in have:
                cols.append(f"CAST(NULL AS {_duck_type(field_.type)}) AS {quote_ident(field_.name)}")
        if cols == [quote_ident(c) for c in have]:
            return result
        return result.select(", ".join(cols))

    def describe(self, spec: TableSpec, result: duckdb.DuckDBPyRelation) -> dict[str, str]:
        """The result's columns and engine types, without computing it."""
        try:
            return {c: _DELTA_CASTS.get(str(t).upper(), str(t)) for c, t in zip(result.columns, result.types, strict=True)}
        except duckdb.Error as exc:
            raise self._classify(exc, spec, f"table {spec.name!r} ({spec.origin})") from exc

    def stage(self, spec: TableSpec, result: duckdb.DuckDBPyRelation, target: StageTarget) -> StagedResult:
        """Stream the result into Parquet files in the table's folder with DuckDB's parallel
        writer; the files stay invisible until the lake commits them (write-audit-publish)."""
        where = f"table {spec.name!r} ({spec.origin})"
        try:
            columns = list(result.columns)
            types = [str(t) for t in result.types]
        except duckdb.Error as exc:
            raise self._classify(exc, spec, where) from exc
        check_result_columns(spec, columns, where)
        select = ", ".join(_delta_column(c, t) for c, t in zip(columns, types, strict=True))
        hidden = f"__hr_rel_{self._uid}"
        target.directory.mkdir(parents=True, exist_ok=True)
        started = time.time()
        try:
            result.create_view(hidden, replace=True)
            query = f"SELECT {select} FROM {quote_ident(hidden)}"
            schema = delta_schema(self.con.sql(f"{query} LIMIT 0").to_arrow_table().schema)
            profile = self._start_profile(target)
            try:
                rows = self.con.execute(
                    f"COPY ({query}) TO {sql_string(str(target.directory))} ({_copy_options(target)})"
                ).fetchall()
            finally:
                if profile:
                    self.con.execute("PRAGMA disable_profiling")
        except duckdb.Error as exc:
            _remove_partial_files(target.directory, started)
            raise self._classify(exc, spec, where) from exc
        except BaseException:
            _remove_partial_files(target.directory, started)
            raise
        finally:
            try:
                self.con.execute(f"DROP VIEW IF EXISTS {quote_ident(hidden)}")
            except duckdb.Error:
                pass
        staged = _staged_files(rows, target, schema)
        return StagedResult(
            files=staged,
            rows=sum(f.rows for f in staged),
            schema=schema,
            partition_by=target.partition_by,
            column_types=dict(zip(columns, [_DELTA_CASTS.get(t.upper(), t) for t in types], strict=True)),
            rows_read=_rows_scanned(profile, len(self._uncounted)) if profile else None,
        )

    def _start_profile(self, target: StageTarget) -> Path | None:
        """Profile the COPY when CSV/JSON sources were bound: the scan operators' row counts are
        the records read, for free (counting up front would parse the files twice)."""
        if not self._uncounted:
            return None
        path = target.directory.parent / f".headrace-profile-{self._uid}-{time.time_ns()}.json"
        try:
            self.con.execute("PRAGMA enable_profiling='json'")
            self.con.execute(f"PRAGMA profiling_output={sql_string(str(path))}")
        except duckdb.Error:
            return None
        return path

    def _classify(self, exc: duckdb.Error, spec: TableSpec, where: str) -> Exception:
        """Errors surface while the result streams; name the bad source file when there is one."""
        text = engine_message(exc)
        if isinstance(exc, duckdb.BinderException | duckdb.ParserException | duckdb.CatalogException):
            return TransformError(f"{where}: {text}", table=spec.name)
        for spec_, files, source_name in self._sources.values():
            if isinstance(spec_, FileSource) and spec_.format == "csv":
                detail = self._diagnose_csv(spec_, files)
                if detail:
                    return SourceError(
                        f"source {source_name!r}: {detail}",
                        hint="fix the file, or declare a contract with on_violation='quarantine'",
                        table=spec.name,
                    )
        if isinstance(exc, duckdb.IOException) or "Malformed JSON" in text or "CSV Error" in text:
            names = ", ".join(repr(n) for _, _, n in self._sources.values())
            return SourceError(
                f"{where}: cannot read source {names}: {text}",
                hint="check the file format and options (delimiter, header, compression)",
                table=spec.name,
            )
        return TransformError(f"{where}: {text}", table=spec.name)

    def _staged_view(self, staged: StagedResult) -> str:
        """A view over the staged files with partition columns typed as in the result."""
        view = f"__hr_staged_{self._uid}"
        if not staged.files:
            cols = ", ".join(f"NULL::{_duck_type(f.type)} AS {quote_ident(f.name)}" for f in staged.schema)
            self.con.execute(f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT {cols} LIMIT 0")
            return view
        paths = "[" + ", ".join(sql_string(str(f.path)) for f in staged.files) + "]"
        options = "union_by_name=true"
        if staged.partition_by:
            types = ", ".join(
                f"{sql_string(c)}: {sql_string(_duck_type(staged.schema.field(c).type))}" for c in staged.partition_by
            )
            options += f", hive_partitioning=true, hive_types={{{types}}}"
        else:
            options += ", hive_partitioning=false"
        cols = ", ".join(quote_ident(n) for n in staged.schema.names)
        self.con.execute(
            f"CREATE OR REPLACE TEMP VIEW {view} AS SELECT {cols} FROM read_parquet({paths}, {options})"
        )
        return view

    def staged_rows(self, staged: StagedResult, sql: str) -> list[tuple[Any, ...]]:
        view = self._staged_view(staged)
        return [tuple(r) for r in self.con.execute(sql.replace("{staged}", view)).fetchall()]

    def staged_reader(self, staged: StagedResult, *, where: str | None = None) -> pa.RecordBatchReader:
        view = self._staged_view(staged)
        sql = f"SELECT * FROM {view} AS s" + (f" WHERE {where}" if where else "")
        return self.con.sql(sql).arrow()

    # ---- engine-side write modes (scd2) -----------------------------------------------
    def for_input(self, nbytes: int) -> DuckDBSession:
        return self

    # ---- personal data (headrace.quality.pii) -------------------------------------------
    def protect(self, relation: duckdb.DuckDBPyRelation, masks: Mapping[str, str],
                key: str | None) -> duckdb.DuckDBPyRelation:
        """The relation with its ``mask=`` columns protected."""
        self._binds += 1
        hidden = f"__hr_pii_{self._uid}_{self._binds}"
        relation.create_view(hidden, replace=True)
        return self.con.sql(self._protected_sql(hidden, list(relation.columns), masks, key))

    def protect_view(self, name: str, masks: Mapping[str, str], key: str | None) -> None:
        """Rebind the view ``name`` (a validated source) with its ``mask=`` columns protected."""
        self._binds += 1
        hidden = f"__hr_pii_{self._uid}_{self._binds}"
        self.con.execute(f"ALTER VIEW {quote_ident(name)} RENAME TO {quote_ident(hidden)}")
        columns = list(self.con.sql(f"SELECT * FROM {quote_ident(hidden)} LIMIT 0").columns)
        self.con.execute(f"CREATE TEMP VIEW {quote_ident(name)} AS "
                         f"{self._protected_sql(hidden, columns, masks, key)}")

    @staticmethod
    def _protected_sql(view: str, columns: Sequence[str], masks: Mapping[str, str], key: str | None) -> str:
        from headrace.quality.pii import protect_sql

        replaced = [f"{protect_sql(m, quote_ident(c), dialect='duckdb', key=key)} AS {quote_ident(c)}"
                    for c, m in masks.items() if c in columns]
        return f"SELECT * REPLACE ({', '.join(replaced)}) FROM {quote_ident(view)}" if replaced else \
            f"SELECT * FROM {quote_ident(view)}"

    def bind_staged(self, staged: StagedResult, name: str) -> None:
        """A temp view ``name`` over the staged files, typed like :meth:`staged_rows` sees them."""
        view = self._staged_view(staged)
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(name)} AS SELECT * FROM {view}")

    def column_types(self, name: str) -> dict[str, str]:
        """The DuckDB type of each column of the relation ``name``."""
        described = self.run_sql(f"SELECT column_name, column_type FROM (DESCRIBE {quote_ident(name)})")
        return {str(n): str(t) for n, t in described}

    def bind_hashed(self, name: str, sql: str, hash_sql: str, column: str) -> None:
        """A temp table ``name``: the rows of ``sql`` plus ``column`` = ``hash_sql``."""
        self.run_sql(f"CREATE TEMP TABLE {quote_ident(name)} AS SELECT *, {hash_sql} AS {quote_ident(column)} "
                     f"FROM ({sql})")

    def bind_files(self, name: str, files: Sequence[tuple[str, Mapping[str, str | None]]], schema: pa.Schema,
                   partition_by: Sequence[str]) -> None:
        """A temp view ``name`` over a table's Parquet files: its columns (partition values,
        kept in the Delta log, typed by ``schema``), ``__hr_f`` (the file's path) and
        ``__hr_r`` (the row's number in its file)."""
        paths = "[" + ", ".join(sql_string(p) for p, _ in files) + "]"
        src = (f"read_parquet({paths}, filename='__hr_f', file_row_number=true, union_by_name=true, "
               "hive_partitioning=false)")
        if not partition_by:
            sql = f"SELECT * EXCLUDE (file_row_number), file_row_number AS __hr_r FROM {src}"
        else:
            mapping = f"{name}_files"
            columns: dict[str, list[Any]] = {"__hr_f": [p for p, _ in files]}
            for c in partition_by:
                columns[c] = [values.get(c) for _, values in files]
            self.read_table(mapping, pa.table(columns, schema=pa.schema([(n, pa.string()) for n in columns])))
            casts = ", ".join(
                f"CAST(fm.{quote_ident(c)} AS {_duck_type(schema.field(c).type)}) AS {quote_ident(c)}"
                for c in partition_by)
            sql = (f"SELECT e.* EXCLUDE (file_row_number), e.file_row_number AS __hr_r, {casts} "
                   f"FROM {src} AS e JOIN {quote_ident(mapping)} AS fm ON e.__hr_f = fm.__hr_f")
        self.run_sql(f"CREATE OR REPLACE TEMP VIEW {quote_ident(name)} AS {sql}")

    def run_sql(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            return [tuple(r) for r in self.con.execute(sql).fetchall()]
        except duckdb.Error as exc:
            raise EngineError(f"DuckDB: {engine_message(exc, 3)}") from exc

    def write_query(self, sql: str, target: StageTarget) -> StagedResult:
        """COPY the query's rows into Parquet files under ``target`` with the options and Delta
        statistics of :meth:`stage`; on failure, the files this COPY wrote are deleted."""
        target.directory.mkdir(parents=True, exist_ok=True)
        before = set(target.directory.rglob("part-*.parquet"))
        try:
            schema = self.con.sql(f"SELECT * FROM ({sql}) LIMIT 0").to_arrow_table().schema
            rows = self.con.execute(
                f"COPY ({sql}) TO {sql_string(str(target.directory))} ({_copy_options(target)})"
            ).fetchall()
        except BaseException as exc:
            for path in set(target.directory.rglob("part-*.parquet")) - before:
                path.unlink(missing_ok=True)
            if isinstance(exc, duckdb.Error):
                raise EngineError(f"DuckDB: {engine_message(exc, 3)}") from exc
            raise
        files = _staged_files(rows, target, schema)
        return StagedResult(files=files, rows=sum(f.rows for f in files), schema=schema,
                            partition_by=target.partition_by)

    def close(self) -> None:
        self.con.close()


def _delta_column(name: str, duck_type: str) -> str:
    target = _DELTA_CASTS.get(duck_type.upper())
    ident = quote_ident(name)
    return f"CAST({ident} AS {target}) AS {ident}" if target else ident


_ROW_GROUP_ROWS = 122_880


def _copy_options(target: StageTarget) -> str:
    """COPY options: unique file names (so a folder can be shared with committed files),
    bounded row groups, and per-file statistics returned for the Delta log."""
    codec = PARQUET_CODECS.get(target.compression, "zstd")
    opts = [
        "FORMAT parquet",
        f"COMPRESSION {codec}",
        "RETURN_STATS true",
        "FILENAME_PATTERN 'part-{uuid}'",
        f"FILE_SIZE_BYTES {max(target.target_file_size, 1)}",
        f"ROW_GROUP_SIZE {_ROW_GROUP_ROWS}",
        f"ROW_GROUP_SIZE_BYTES {max(16 * 1024, min(target.target_file_size // 2, 64 * 1024 * 1024))}",
    ]
    if target.compression_level is not None and codec == "zstd":
        opts.append(f"COMPRESSION_LEVEL {target.compression_level}")
    if target.partition_by:
        cols = ", ".join(quote_ident(c) for c in target.partition_by)
        opts += [f"PARTITION_BY ({cols})", "APPEND true"]
    else:
        opts += ["PER_THREAD_OUTPUT true", "OVERWRITE_OR_IGNORE true"]
    return ", ".join(opts)


def _staged_files(
    rows: list[tuple[Any, ...]], target: StageTarget, schema: pa.Schema
) -> tuple[StagedFile, ...]:
    files = []
    for filename, count, size, _footer, column_stats, partition_keys, *_ in rows:
        path = Path(filename)
        if int(count) == 0:
            path.unlink(missing_ok=True)  # an empty result still gets a file; it adds nothing
            continue
        rel = path.relative_to(target.directory).as_posix()
        partitions = {c: (partition_keys or {}).get(c) for c in target.partition_by}
        files.append(StagedFile(
            path=path,
            # the path as on disk; deltalake percent-encodes it for the log
            rel_path=rel,
            size=int(size),
            rows=int(count),
            partition_values=partitions,
            stats=_delta_stats(int(count), column_stats or {}, schema, target.partition_by),
            modification_time=int(path.stat().st_mtime * 1000),
        ))
    return tuple(files)


def _delta_stats(
    rows: int, column_stats: dict[str, dict[str, str]], schema: pa.Schema, partition_by: Sequence[str]
) -> str:
    """Delta file statistics. Min/max only where the text form is unambiguous (integers, dates,
    exact short strings): a wrong bound would make readers skip rows that are there."""
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for field in schema:
        if field.name in partition_by:
            continue
        stat = column_stats.get(quote_ident(field.name))
        if not stat:
            continue
        if "null_count" in stat:
            nulls[field.name] = int(stat["null_count"])
        lo, hi = stat.get("min"), stat.get("max")
        exact = stat.get("min_is_exact") == "true" and stat.get("max_is_exact") == "true"
        if lo is None or hi is None or not exact:
            continue
        kind = field.type
        if pa.types.is_integer(kind):
            mins[field.name], maxs[field.name] = int(lo), int(hi)
        elif pa.types.is_date32(kind) or (pa.types.is_string(kind) and len(lo) <= 32 and len(hi) <= 32):
            mins[field.name], maxs[field.name] = lo, hi
    stats = {"numRecords": rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}
    return json.dumps(stats, separators=(",", ":"))


_SIMPLE_DUCK_TYPES: dict[str, str] = {
    "bool": "BOOLEAN", "int8": "TINYINT", "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT",
    "uint8": "UTINYINT", "uint16": "USMALLINT", "uint32": "UINTEGER", "uint64": "UBIGINT",
    "float": "FLOAT", "double": "DOUBLE", "string": "VARCHAR", "large_string": "VARCHAR",
    "string_view": "VARCHAR", "date32[day]": "DATE", "binary": "BLOB", "large_binary": "BLOB",
}


def _duck_type(kind: pa.DataType) -> str:
    """The DuckDB type for an Arrow type (partition values read back from paths, NULL columns
    added to fit a table). Common types from a table; others by asking DuckDB once."""
    simple = _SIMPLE_DUCK_TYPES.get(str(kind))
    if simple:
        return simple
    if pa.types.is_timestamp(kind):
        return "TIMESTAMPTZ" if kind.tz else "TIMESTAMP"
    if pa.types.is_decimal(kind):
        return f"DECIMAL({kind.precision},{kind.scale})"
    probe = duckdb.connect()
    try:
        empty = pa.table({"x": pa.array([], type=kind)})
        return str(probe.from_arrow(empty).types[0])
    finally:
        probe.close()



def _remove_partial_files(directory: Path, since: float) -> None:
    """Delete the files a failed COPY left behind. Safe because the runner holds the table's
    lock: every ``part-*.parquet`` newer than the COPY's start is this attempt's."""
    for path in directory.rglob("part-*.parquet"):
        try:
            if path.stat().st_mtime >= since - 1:
                path.unlink()
        except OSError:
            pass


def _struct_literal(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{sql_string(name)}: {sql_string(kind)}" for name, kind in pairs) + "}"


_SCANS = ("READ_CSV", "READ_JSON", "READ_NDJSON")


def _rows_scanned(profile: Path, sources: int) -> int | None:
    """Records read by the CSV/JSON scans of a profiled query, or None when that is not exactly
    the input: a scan with pushed-down filters, or a source scanned more than once."""
    try:
        import json as _json

        tree = _json.loads(profile.read_text())
    except (OSError, ValueError):
        return None
    finally:
        profile.unlink(missing_ok=True)
    scans: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        if str(node.get("name", "")).upper().startswith(_SCANS):
            scans.append(node)
        for child in node.get("children", []):
            walk(child)

    for op in tree.get("operator", []) if isinstance(tree, dict) else []:
        walk(op)
    if len(scans) != sources or any("Filters" in (n.get("extra_info") or {}) for n in scans):
        return None
    return sum(int(n.get("intermediate_rows") or 0) for n in scans)
