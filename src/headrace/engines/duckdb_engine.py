"""The embedded default engine: one in-process DuckDB database per run, one cursor per task.

Inputs are bound as connection-local temp tables/views named after the transform's input keys,
so concurrent tasks never see each other's names. Results are staged once into a table so the
row count, partition values and (later) checks read the same rows that get published.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from headrace.engines.base import StagedResult
from headrace.errors import DefinitionError, EngineError, SourceError, TransformError
from headrace.sources.batches import InputBatch
from headrace.sources.files import quote_ident, reader_sql
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


def _first_lines(exc: BaseException, n: int = 2) -> str:
    """DuckDB's message without the echoed SQL ("LINE 1: ...") that follows it."""
    lines = []
    for raw in str(exc).strip().splitlines():
        line = raw.strip()
        if line.startswith("LINE "):
            break
        if line:
            lines.append(line)
    return " ".join(lines[:n])


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
        except duckdb.Error as exc:
            raise EngineError(f"cannot start DuckDB: {_first_lines(exc)}") from exc

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
        self._tables: list[str] = []

    # ---- inputs -------------------------------------------------------------------------
    def read_source(self, key: str, spec: SourceSpec, batch: InputBatch, *, source_name: str) -> int:
        files = [e.path for e in batch.files]
        sql = reader_sql(spec, files)
        try:
            self.con.execute(f"CREATE TEMP TABLE {quote_ident(key)} AS {sql}")
        except duckdb.Error as exc:
            raise self._source_error(exc, spec, files, source_name) from exc
        row = self.con.execute(f"SELECT count(*) FROM {quote_ident(key)}").fetchall()
        return int(row[0][0])

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
            f"source {source_name!r}: cannot read {spec.describe()}: {_first_lines(exc)}",
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
                return self.con.sql(transform.query)
            if isinstance(transform, PythonTransform):
                args: dict[str, Any] = {k: self.con.table(k) for k in keys}
                if transform.wants_context:
                    args["ctx"] = context
                result = transform.fn(**args)
                return self._as_relation(result, where)
        except duckdb.Error as exc:
            raise TransformError(f"{where}: {_first_lines(exc)}", table=spec.name) from exc
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
    def stage(self, spec: TableSpec, result: duckdb.DuckDBPyRelation) -> StagedResult:
        name = f"__hr_result_{self._uid}"
        where = f"table {spec.name!r} ({spec.origin})"
        try:
            columns = list(result.columns)
            types = [str(t) for t in result.types]
        except duckdb.Error as exc:
            raise TransformError(f"{where}: {_first_lines(exc)}", table=spec.name) from exc
        self._check_columns(spec, columns, where)
        select = ", ".join(_delta_column(c, t) for c, t in zip(columns, types, strict=True))
        hidden = f"__hr_rel_{self._uid}"
        try:
            result.create_view(hidden, replace=True)
            self.con.execute(
                f"CREATE TEMP TABLE {name} AS SELECT {select} FROM {quote_ident(hidden)}"
            )
        except duckdb.Error as exc:
            raise self._classify(exc, spec, where) from exc
        finally:
            try:
                self.con.execute(f"DROP VIEW IF EXISTS {quote_ident(hidden)}")
            except duckdb.Error:
                pass
        self._tables.append(name)
        rows = int(self.con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0])
        schema = self.con.sql(f"SELECT * FROM {name} LIMIT 0").to_arrow_table().schema
        partitions: tuple[tuple[Any, ...], ...] = ()
        if spec.partition_by:
            cols = ", ".join(quote_ident(c) for c in spec.partition_by)
            partitions = tuple(
                tuple(r) for r in self.con.execute(f"SELECT DISTINCT {cols} FROM {name}").fetchall()
            )
        return StagedResult(name=name, rows=rows, schema=schema, partitions=partitions)

    def _check_columns(self, spec: TableSpec, columns: Sequence[str], where: str) -> None:
        if len(set(columns)) != len(columns):
            dupes = sorted({c for c in columns if columns.count(c) > 1})
            raise TransformError(f"{where}: result has duplicate column names {dupes}",
                                 hint="alias the columns so each name is unique")
        needed = list(spec.partition_by)
        keys = getattr(spec.write, "keys", ())
        needed += list(keys)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DefinitionError(
                f"{where}: column(s) {missing} named in partition_by/keys are not in the result",
                hint=f"result columns: {', '.join(columns)}",
                table=spec.name,
            )

    def _classify(self, exc: duckdb.Error, spec: TableSpec, where: str) -> Exception:
        text = _first_lines(exc)
        if isinstance(exc, duckdb.IOException):
            return SourceError(f"{where}: {text}", table=spec.name)
        return TransformError(f"{where}: {text}", table=spec.name)

    def batches(self, staged: StagedResult, *, where: str | None = None) -> pa.RecordBatchReader:
        sql = f"SELECT * FROM {staged.name} AS s"
        if where:
            sql += f" WHERE {where}"
        return self.con.sql(sql).arrow()

    def scalar_rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.con.execute(sql).fetchall()]

    def close(self) -> None:
        for name in self._tables:
            try:
                self.con.execute(f"DROP TABLE IF EXISTS {name}")
            except duckdb.Error:
                pass
        self.con.close()


def _delta_column(name: str, duck_type: str) -> str:
    target = _DELTA_CASTS.get(duck_type.upper())
    ident = quote_ident(name)
    return f"CAST({ident} AS {target}) AS {ident}" if target else ident
