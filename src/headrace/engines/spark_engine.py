"""The scale-out engine: the same project on Apache Spark, into the same Delta tables.

What runs where:

* Spark (executors, in parallel): reading file sources (CSV, JSON, Parquet) and upstream
  Delta tables, contract validation of sources and of derived tables' results (each task runs
  the validator over its group of files: :mod:`headrace.engines.spark_contracts`), the transforms (SQL models
  transpiled from DuckDB's dialect, Python functions receiving DataFrames), writing the
  result's Parquet files into the table's folder, and the checks (the check compiler's one
  audit query, transpiled). Merge is a copy-on-write rewrite on the executors
  (:meth:`SparkTaskSession.merge_rewrite`); SCD2 change sets are headrace's own SQL run
  statement by statement (:mod:`headrace.engines.spark_statements`), row hashes computed by
  DuckDB in the tasks so both engines store the same ones.
* The driver: the Delta commit (the files' footers become add actions; one commit per table
  per run through deltalake, exactly as on DuckDB), writing the quarantine's rows, and,
  through an embedded DuckDB over files, commits that add columns (schema ``evolve``), which
  go through deltalake's writer (streamed, bounded memory, one machine).
* Small work, on the driver's DuckDB by choice: a contract, merge or SCD2 publish over less
  than ``[spark] local_threshold`` bytes of input (:meth:`SparkTaskSession.for_input`). Both
  engines run the same SQL, so the result does not depend on where it ran; only the time does
  (a Spark job costs seconds of scheduling and Python-worker start-up).

pyspark is imported only when this module is, i.e. only when ``engine = "spark"``.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from headrace.delta.partitions import partition_text
from headrace.engines.base import (
    PARQUET_CODECS,
    StagedResult,
    StageTarget,
    check_result_columns,
    delta_schema,
)
from headrace.engines.spark_sql import audit_to_spark_sql, to_spark_sql
from headrace.engines.spark_stage import (
    engine_type_name,
    remove_side_files,
    staged_files,
    unique_names,
)
from headrace.errors import DefinitionError, EngineError, SourceError, TransformError
from headrace.sources.batches import InputBatch
from headrace.sources.files import quote_ident, reader_sql
from headrace.spec.context import render_template
from headrace.spec.sources import FileSource, SourceSpec
from headrace.spec.tables import PythonTransform, SqlTransform, TableSpec

INSTALL_HINT = "install it with: pip install 'headrace[spark]' (needs Java 17 on the PATH or JAVA_HOME)"

# Settings that make Spark agree with DuckDB, so both engines write the same tables: TIMESTAMP
# means a wall-clock time without zone (DuckDB's TIMESTAMP), instants are UTC, Parquet
# timestamps are plain microseconds (not INT96), and no _SUCCESS marker files.
_DEFAULT_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.timestampType": "TIMESTAMP_NTZ",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.adaptive.enabled": "true",
    "spark.ui.showConsoleProgress": "false",
}
_LOCAL_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.shuffle.partitions": "8",
}

_started: dict[tuple[Any, ...], Any] = {}
_start_lock = threading.Lock()


def _import_pyspark() -> Any:
    try:
        import pyspark.sql
    except ImportError:
        raise EngineError("the Spark engine needs pyspark, which is not installed", hint=INSTALL_HINT) from None
    return pyspark.sql


class SparkEngine:
    """Apache Spark: ``master`` (local[*], spark://, yarn, k8s://) or a Spark Connect ``remote``
    (sc://). Spark starts on the first task that needs it, so a run with nothing to do never
    starts a JVM; one Spark application serves every engine of the process."""

    name = "spark"

    def __init__(
        self,
        *,
        master: str = "local[*]",
        remote: str | None = None,
        app_name: str = "headrace",
        conf: Mapping[str, str] | None = None,
        start_timeout: float = 120.0,
        optimize_write: bool = True,
        local_threshold: int = 64 * 1024**2,
        memory_limit: str | None = None,
        threads: int | None = None,
        temp_directory: Path | str | None = None,
    ) -> None:
        _import_pyspark()  # fail at once, with the install hint, when pyspark is missing
        self.master = master
        self.remote = remote
        self.app_name = app_name
        self.conf = dict(conf or {})
        self.start_timeout = start_timeout
        self.optimize_write = optimize_write
        self.local_threshold = local_threshold
        self._local_settings: dict[str, Any] = {"memory_limit": memory_limit, "threads": threads,
                                                "temp_directory": temp_directory}
        self._local: Any = None
        self._lock = threading.Lock()

    # ---- lifecycle ----------------------------------------------------------------------
    def spark(self) -> Any:
        """The Spark application, started (with a bounded wait) on first use."""
        key = (self.master, self.remote, self.app_name, tuple(sorted(self.conf.items())))
        with _start_lock:
            session = _started.get(key)
            if session is None:
                for old in list(_started.values()):  # one SparkContext per JVM
                    _stop(old)
                _started.clear()
                session = self._start()
                _started[key] = session
            return session

    def _start(self) -> Any:
        sql = _import_pyspark()
        target = self.remote or self.master
        local = self.remote is None and self.master.startswith("local")
        if local:
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            # tasks run headrace's own code (contract validation): this interpreter has it
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = sql.SparkSession.Builder().appName(self.app_name)  # a fresh builder: the shared one keeps options
        builder = builder.remote(self.remote) if self.remote else builder.master(self.master)
        settings = {**_DEFAULT_CONF, **(_LOCAL_CONF if local else {}), **self.conf}
        log_config = Path(__file__).with_name("spark_log4j2.properties")
        if local and "spark.driver.extraJavaOptions" not in settings and log_config.is_file():
            # Spark's INFO/WARN chatter would bury the run summary; errors still print
            settings["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={log_config.as_uri()}"
        if self.remote:  # a Connect server owns its static settings
            settings = {k: v for k, v in settings.items() if k.startswith("spark.sql.")}
        for key, value in settings.items():
            builder = builder.config(key, value)
        outcome: dict[str, Any] = {}

        def start() -> None:
            try:
                session = builder.getOrCreate()
                session.range(1).count()  # proves executors accepted the application
                outcome["session"] = session
            except BaseException as exc:  # reported to the waiting thread
                outcome["error"] = exc

        thread = threading.Thread(target=start, name="headrace-spark-start", daemon=True)
        thread.start()
        thread.join(self.start_timeout)
        if thread.is_alive():
            raise EngineError(
                f"Spark at {target!r} did not start an application within {self.start_timeout:g} s",
                hint="check that the master is reachable and has free executors "
                "([spark] master / remote, start_timeout in headrace.toml)",
            )
        if "error" in outcome:
            raise _start_error(outcome["error"], target) from None
        session = outcome["session"]
        atexit.register(_stop, session)
        return session

    def local(self) -> Any:
        """The driver's embedded DuckDB, for the steps that are not distributed yet."""
        from headrace.engines.duckdb_engine import DuckDBEngine

        with self._lock:
            if self._local is None:
                self._local = DuckDBEngine(**self._local_settings)
            return self._local

    def session(self) -> SparkTaskSession:
        spark = self.spark()
        if self.remote is None:
            task_session = spark.newSession()  # its own temp views; settings from the application
        else:  # a Connect session of its own per task, with the SQL settings each session needs
            task_session = _connect_session(self.remote, self._sql_settings())
        return SparkTaskSession(task_session, self.local().session(), optimize_write=self.optimize_write,
                                local_threshold=self.local_threshold)

    def _sql_settings(self) -> dict[str, str]:
        settings = {**_DEFAULT_CONF, **self.conf}
        return {k: v for k, v in settings.items() if k.startswith("spark.sql.")}

    def close(self) -> None:
        """Spark stays up for the process (another run may follow); it stops at exit."""
        with self._lock:
            if self._local is not None:
                self._local.close()
                self._local = None


def _connect_session(remote: str, settings: Mapping[str, str]) -> Any:
    sql = _import_pyspark()
    builder = sql.SparkSession.Builder().remote(remote)
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.create()


def _stop(session: Any) -> None:
    try:
        session.stop()
    except Exception:  # stopping a dead JVM at exit is not worth a traceback
        pass


def _start_error(exc: BaseException, target: str) -> EngineError:
    text = _first_line(exc)
    if "JAVA_GATEWAY_EXITED" in text or "Java gateway process exited" in text or "JAVA_HOME" in text:
        return EngineError(f"Spark could not start its JVM: {text}", hint=INSTALL_HINT)
    return EngineError(f"cannot start Spark at {target!r}: {text}",
                       hint="check [spark] master / remote / conf in headrace.toml")


def _first_line(exc: BaseException) -> str:
    """Spark's message without the JVM stack trace that follows it; for a failure inside a
    Python UDF on an executor, the Python exception itself (the line users can act on)."""
    lines = [raw.strip() for raw in str(exc).strip().splitlines()]
    first = next((ln for ln in lines if ln and not ln.startswith(("at ", "JVM stacktrace", "Traceback"))), "")
    if first.startswith("An error occurred while calling"):  # py4j's wrapper: the cause follows
        first = next((ln.lstrip(": ") for ln in lines[1:] if ln and not ln.startswith("at ")), first)
    if "exception was thrown from the Python worker" in first or "PythonException" in first:
        raised = [ln for ln in lines if _PY_EXCEPTION.match(ln)]
        if raised:
            first = raised[-1]
    elif "Job aborted due to stage failure" in first and "Exception: " in first:
        first = first.rsplit("Exception: ", 1)[1]  # the task's own error, not the scheduler's
    return first[:400] or type(exc).__name__


_PY_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?$")


class SparkTaskSession:
    """One task's Spark session (its own temp views) plus the driver's DuckDB helper."""

    def __init__(self, spark: Any, local: Any, *, optimize_write: bool = True,
                 local_threshold: int = 64 * 1024**2) -> None:
        self.spark = spark
        self._local = local
        self.optimize_write = optimize_write
        self.local_threshold = local_threshold
        self._uid = uuid.uuid4().hex[:12]
        self._observed: list[tuple[Any, Any]] = []  # (observation, the unobserved source)
        self._sources: dict[str, str] = {}
        self._binds = 0
        self._kept: list[Any] = []  # checkpoints behind temp views (see spark_statements.run_statement)

    # ---- inputs -------------------------------------------------------------------------
    def read_source(self, key: str, spec: SourceSpec, batch: InputBatch, *, source_name: str) -> int | None:
        """Read the files natively in parallel; CSV/JSON columns and types come from DuckDB's
        sniffer (a sample, on the driver), so both engines type a source the same way."""
        if not isinstance(spec, FileSource):
            raise EngineError(f"source {source_name!r}: only file sources reach the Spark engine directly")
        files = [e.path for e in batch.files]
        self._sources[key] = source_name
        try:
            frame = self._read_files(spec, files)
        except Exception as exc:
            raise SourceError(f"source {source_name!r}: cannot read {spec.describe()}: {_first_line(exc)}",
                              hint="check the file format and options") from exc
        if spec.format == "parquet":
            frame.createOrReplaceTempView(key)
            return _parquet_rows(files)
        from pyspark.sql import Observation
        from pyspark.sql import functions as F

        observation = Observation(f"hr_rows_{self._uid}_{key}")
        self._observed.append((observation, frame))
        frame = frame.observe(observation, F.count(F.lit(1)).alias("rows"))
        frame.createOrReplaceTempView(key)
        return None

    def _read_files(self, spec: FileSource, files: Sequence[Path]) -> Any:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_type
        from pyspark.sql.types import StringType, StructField, StructType

        uris = [_uri(Path(p).resolve()) for p in files]
        if spec.format == "parquet":
            frame = self.spark.read.parquet(*uris)
        else:
            schema = self._sniff(spec, files)
            textual = spec.format == "csv"
            fields = []
            for f in schema:
                as_text = textual or pa.types.is_timestamp(f.type) or pa.types.is_date(f.type) or pa.types.is_time(f.type)
                fields.append(StructField(f.name, StringType() if as_text else from_arrow_type(f.type, prefer_timestamp_ntz=True), True))
            reader = self.spark.read.schema(StructType(fields)).option("mode", "FAILFAST")
            if spec.format == "csv":
                # multiLine: a quoted field may hold line breaks (DuckDB reads them so); it costs
                # splitting a single file across tasks, files still read in parallel
                reader = (reader.option("header", str(spec.header).lower()).option("sep", spec.delimiter or ",")
                          .option("multiLine", "true")
                          .option("quote", spec.quote if spec.quote is not None else '"')
                          .option("escape", spec.escape if spec.escape is not None else '"'))
                if spec.null_string is not None:
                    reader = reader.option("nullValue", spec.null_string)
                frame = reader.csv(uris)
            else:
                frame = reader.option("multiLine", str(spec.format == "json").lower()).json(uris)
            casts = []
            for f, read in zip(schema, fields, strict=True):
                ident = quote_spark(f.name)
                if isinstance(read.dataType, StringType) and not pa.types.is_string(f.type):
                    casts.append(F.expr(f"CAST({ident} AS {_spark_ddl(f.type)})").alias(f.name))
                else:
                    casts.append(F.col(ident))
            frame = frame.select(*casts)
        if spec.filename_column:
            frame = frame.withColumn(spec.filename_column,
                                     F.regexp_replace(F.col("_metadata.file_path"), "^file:(//)?", ""))
        return frame

    def _sniff(self, spec: FileSource, files: Sequence[Path]) -> pa.Schema:
        plain = replace(spec, filename_column=None)
        sql = f"SELECT * FROM ({reader_sql(plain, files)}) LIMIT 0"
        return self._local.con.sql(sql).to_arrow_table().schema

    def read_validated_source(
        self, key: str, spec: SourceSpec, batch: InputBatch, contract: Any, *, source_name: str, workdir: Path,
    ) -> tuple[int, int]:
        """CSV and NDJSON sources are validated in Spark tasks, each running the engine's own
        validator over a group of files (:mod:`headrace.engines.spark_contracts`); Spark reads
        the good rows they stored, the driver only the rejects. Parquet sources are validated
        in tasks as a derived table's result is (:meth:`validate_result`). Batches under
        ``[spark] local_threshold`` are validated by the driver's DuckDB (a Spark job and its
        Python workers cost seconds), and Spark reads the good rows."""
        if (not isinstance(spec, FileSource) or not batch.files
                or sum(e.size for e in batch.files) < self.local_threshold):
            rows, bad = self._local.read_validated_source(key, spec, batch, contract, source_name=source_name,
                                                           workdir=workdir)
            self._bind_from_local(key, f"SELECT * FROM {quote_ident(key)}", workdir / f"good-{key}")
            return rows, bad
        if spec.format == "parquet":
            return self._validate_parquet_source(key, spec, [e.path for e in batch.files], contract,
                                                 source_name=source_name, workdir=workdir)
        from headrace.engines.spark_contracts import validate_on_spark
        from headrace.quality.contracts import StoredValidation

        done = validate_on_spark(
            self.spark, self._local.con, self._parquet_frame, spec, [e.path for e in batch.files], contract,
            source_name=source_name, workdir=workdir / f"spark-{key}", parallelism=self._parallelism(),
            task_cores=self._task_cores(),
        )
        self._sources[key] = source_name
        self._good_rows(done).createOrReplaceTempView(key)
        self._local.keep_validated(key, StoredValidation(
            rows=done.rows, quarantined=done.quarantined, columns=done.columns, fields=done.fields, good="",
            rejects=done.rejects_sql, headers=done.headers, path="stored"))
        return done.rows, done.quarantined

    def _good_rows(self, done: Any) -> Any:
        """The stored rows that passed every rule and hold no duplicated key."""
        frame = self._stored_frame(done.stored, (*done.columns, "__hr_bad"))
        if done.duplicates:
            from pyspark.sql import functions as F

            dups = self.spark.read.parquet(*[_uri(p) for p in done.duplicates])
            keys = dups.select(*[F.col(c).alias(k) for c, k in zip(
                [c for c in dups.columns if c != "__hr_dups"], done.key_columns, strict=True)])
            frame = frame.join(keys, on=list(done.key_columns), how="left_anti")
        return frame.where("NOT __hr_bad").select(*[quote_spark(c) for c in done.columns])

    def _parallelism(self) -> int:
        """How many tasks run at once: classic Spark knows; over Connect, the session's
        default parallelism setting, else its shuffle partitions."""
        try:
            return int(self.spark.sparkContext.defaultParallelism)
        except Exception:
            setting = self.spark.conf.get("spark.default.parallelism", None)
            return int(setting or self.spark.conf.get("spark.sql.shuffle.partitions", "2"))

    def _task_cores(self) -> int:
        try:
            return int(self.spark.conf.get("spark.task.cpus", "1"))
        except Exception:
            return 1

    def _bind_from_local(self, key: str, sql: str, directory: Path) -> None:
        """Write a driver-side DuckDB query as Parquet and expose it to Spark under ``key``."""
        from headrace.sources.files import sql_string

        schema = self._local.con.sql(f"SELECT * FROM ({sql}) LIMIT 0").to_arrow_table().schema
        self._local.con.execute(
            f"COPY ({sql}) TO {sql_string(str(directory))} "
            "(FORMAT parquet, COMPRESSION zstd, PER_THREAD_OUTPUT true, OVERWRITE_OR_IGNORE true)"
        )
        self._parquet_frame(sorted(directory.glob("*.parquet")), schema).createOrReplaceTempView(key)

    def validate_result(self, spec: TableSpec, result: Any, contract: Any, *, workdir: Path) -> tuple[Any, int, int]:
        """A contract on a derived table: Spark writes the result, Spark tasks validate it
        (:func:`headrace.engines.spark_contracts.validate_result_on_spark`), the driver reads
        the rejects; a result under ``[spark] local_threshold`` is validated by the driver."""
        from headrace.sources.files import sql_string

        raw = workdir / "result-raw"
        try:
            result.write.mode("overwrite").parquet(_uri(raw))
        except Exception as exc:
            raise self._classify(exc, spec) from exc
        remove_side_files(raw)
        files = sorted(raw.glob("*.parquet"))
        if files and sum(p.stat().st_size for p in files) >= self.local_threshold and _parquet_rows(files):
            return self._validate_result_in_tasks(spec, files, contract, workdir=workdir)
        relation = self._local.con.sql(f"SELECT * FROM read_parquet({sql_string(str(raw / '*.parquet'))})")
        good, rows, bad = self._local.validate_result(spec, relation, contract, workdir=workdir)
        view = f"__hr_good_{self._uid}"
        good.create_view(view, replace=True)
        name = f"__hr_result_{self._uid}"
        self._bind_from_local(name, f"SELECT * FROM {quote_ident(view)}", workdir / "result-good")
        return self.spark.table(name), rows, bad

    def _validate_result_in_tasks(self, spec: TableSpec, files: Sequence[Path], contract: Any, *,
                                  workdir: Path) -> tuple[Any, int, int]:
        from headrace.engines.spark_contracts import validate_result_on_spark

        done = validate_result_on_spark(self.spark, self._parquet_frame, files, contract, table=spec.name,
                                        workdir=workdir, parallelism=self._parallelism(),
                                        task_cores=self._task_cores())
        return self._checked_rows("__result__", done), done.rows, done.quarantined

    def _validate_parquet_source(self, key: str, spec: FileSource, files: Sequence[Path], contract: Any, *,
                                 source_name: str, workdir: Path) -> tuple[int, int]:
        from headrace.engines.spark_contracts import validate_parquet_source_on_spark
        from headrace.sources.files import sql_string

        listed = ", ".join(sql_string(str(p)) for p in files)
        try:  # the batch's columns, as one DuckDB read of every file types them (footers only)
            described = self._local.con.execute(
                f"DESCRIBE SELECT * FROM read_parquet([{listed}], union_by_name=true)").fetchall()
        except Exception as exc:
            raise SourceError(f"source {source_name!r}: cannot read {spec.describe()}: {_first_line(exc)}",
                              hint="check the file format and options") from exc
        done = validate_parquet_source_on_spark(
            self.spark, self._parquet_frame, spec, files, contract, types=[(str(r[0]), str(r[1])) for r in described],
            source_name=source_name, workdir=workdir / f"spark-{key}", parallelism=self._parallelism(),
            task_cores=self._task_cores())
        self._sources[key] = source_name
        self._checked_rows(key, done).createOrReplaceTempView(key)
        return done.rows, done.quarantined

    def _checked_rows(self, key: str, done: Any) -> Any:
        """The good rows of a validation in tasks (a ``ResultValidation``) as a DataFrame; its
        rejects kept in the driver's DuckDB under ``key`` for :meth:`quarantine_reader`."""
        from headrace.quality.contracts import StoredValidation

        self._local.keep_validated(key, StoredValidation(
            rows=done.rows, quarantined=done.quarantined, columns=done.columns, fields=done.fields, good="",
            rejects=done.rejects_sql, headers={}, path="stored"))
        frame = self._stored_frame(done.checked, (*done.columns, "__hr_good"))
        return frame.where("__hr_good").select(*[quote_spark(c) for c in done.columns])

    def _stored_frame(self, paths: Sequence[Path], columns: Sequence[str]) -> Any:
        """Parquet files the validation tasks stored (one schema: the first file's footer),
        read by Spark with only ``columns``."""
        import pyarrow.parquet as pq

        stored = pq.read_schema(paths[0])
        return self._parquet_frame(paths, pa.schema([stored.field(c) for c in columns]))

    def quarantine_reader(self, key: str, *, table: str, run_id: str) -> pa.RecordBatchReader:
        return self._local.quarantine_reader(key, table=table, run_id=run_id)

    def read_table(self, key: str, dataset: Any) -> None:
        """Bind an upstream table: its files are read by Spark in one scan; partition values
        (kept in the Delta log, not in the files) are joined in by file name."""
        if isinstance(dataset, pa.Table):
            frame = self.spark.createDataFrame(dataset) if dataset.num_rows else self._empty(dataset.schema)
        else:
            frame = self._dataset_frame(dataset)
        frame.createOrReplaceTempView(key)

    def _empty(self, schema: pa.Schema) -> Any:
        from pyspark.sql.pandas.types import from_arrow_schema

        return self.spark.createDataFrame([], from_arrow_schema(_nullable(schema), prefer_timestamp_ntz=True))

    def _parquet_frame(self, paths: Sequence[Path], schema: pa.Schema, *,
                       partitions: Mapping[str, Mapping[str, Any]] | None = None,
                       log_paths: Mapping[str, str] | None = None, file_column: str | None = None,
                       row_column: str | None = None) -> Any:
        """Parquet files as one DataFrame in ``schema``'s column order. Partition columns (not
        stored in the files) come from ``partitions`` (file name -> values) via a broadcast
        join, which also gives each row its file's log path (``log_paths``) when asked."""
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_schema, from_arrow_type
        from pyspark.sql.types import StringType, StructField, StructType

        wanted = [F.col(quote_spark(n)) for n in schema.names] + ([F.col(file_column)] if file_column else []) + (
            [F.col(row_column)] if row_column else [])
        if not paths:
            empty = self._empty(schema)
            if file_column:
                empty = empty.withColumn(file_column, F.lit(None).cast("string"))
            return empty.withColumn(row_column, F.lit(None).cast("bigint")) if row_column else empty
        part_cols = sorted({c for values in (partitions or {}).values() for c in values} & set(schema.names))
        if len(partitions or {}) < len(paths) and (part_cols or file_column):
            raise EngineError("two files of one table share a file name; Spark cannot tell their partitions apart",
                              hint="rewrite the table once on the duckdb engine (headrace run --full-refresh)")
        data = pa.schema([f for f in schema if f.name not in part_cols])
        frame = self.spark.read.schema(from_arrow_schema(_nullable(data), prefer_timestamp_ntz=True)).parquet(
            *[_uri(p) for p in paths])
        if row_column:
            frame = frame.withColumn(row_column, F.col("_metadata.row_index"))
        if part_cols or file_column:
            names = list(partitions or {})
            rows = [(name, (log_paths or {}).get(name), *[partition_text((partitions or {})[name].get(c)) for c in part_cols])
                    for name in names]
            struct = StructType([StructField("__hr_name", StringType()), StructField("__hr_log", StringType())]
                                + [StructField(c, StringType()) for c in part_cols])
            lookup = self.spark.createDataFrame(rows, struct).select(
                "__hr_name", F.col("__hr_log").alias(file_column or "__hr_log"),
                *[F.col(quote_spark(c)).cast(from_arrow_type(schema.field(c).type, prefer_timestamp_ntz=True)).alias(c)
                  for c in part_cols])
            frame = (frame.withColumn("__hr_name", F.col("_metadata.file_name"))
                     .join(F.broadcast(lookup), "__hr_name", "left").drop("__hr_name"))
        return frame.select(*wanted)

    # ---- transform ----------------------------------------------------------------------
    def transform(self, spec: TableSpec, keys: Sequence[str], context: Any) -> Any:
        transform = spec.transform
        where = f"table {spec.name!r} ({spec.origin})"
        try:
            if isinstance(transform, SqlTransform):
                sql = render_template(transform.query, getattr(context, "ds", None))
                return self.spark.sql(to_spark_sql(sql, where=where))
            if isinstance(transform, PythonTransform):
                args: dict[str, Any] = {k: self.spark.table(k) for k in keys}
                if transform.wants_context:
                    args["ctx"] = context
                return self._as_frame(transform.fn(**args), where)
        except (DefinitionError, TransformError):
            raise
        except Exception as exc:
            raise self._classify(exc, spec) from exc
        if transform is None and len(keys) == 1:
            return self.spark.table(keys[0])
        raise DefinitionError(f"{where}: has no transform and {len(keys)} inputs")

    def _as_frame(self, result: Any, where: str) -> Any:
        if type(result).__name__ == "DataFrame" and type(result).__module__.startswith("pyspark"):
            return result
        if isinstance(result, str):
            return self.spark.sql(to_spark_sql(result, where=where))
        if isinstance(result, pa.Table):
            return self.spark.createDataFrame(result) if result.num_rows else self._empty(result.schema)
        raise TransformError(
            f"{where}: returned {type(result).__name__} on the Spark engine",
            hint="return a Spark DataFrame, or a SQL string (portable: it runs on both engines)",
        )

    # ---- staging ------------------------------------------------------------------------
    def conform(self, result: Any, table_schema: pa.Schema, *, drop_extra: bool) -> Any:
        from pyspark.sql import functions as F
        from pyspark.sql.pandas.types import from_arrow_type

        have = list(result.columns)
        wanted = set(table_schema.names)
        cols = [F.col(quote_spark(c)) for c in have if not drop_extra or c in wanted]
        missing = [f for f in table_schema if f.name not in have]
        if not missing and len(cols) == len(have):
            return result
        cols += [F.lit(None).cast(from_arrow_type(f.type, prefer_timestamp_ntz=True)).alias(f.name) for f in missing]
        return result.select(*cols)

    def describe(self, spec: TableSpec, result: Any) -> dict[str, str]:
        try:
            schema = _arrow_schema(result.schema)
        except Exception as exc:
            raise self._classify(exc, spec) from exc
        return {f.name: engine_type_name(f.type) for f in schema}

    def stage(self, spec: TableSpec, result: Any, target: StageTarget) -> StagedResult:
        """Executors write the result's Parquet files under a fresh folder in the table's
        folder; the driver reads only their footers. Invisible until the Delta commit."""
        check_result_columns(spec, list(result.columns), f"table {spec.name!r} ({spec.origin})")
        try:
            staged = self._write(result, target)
        except Exception as exc:
            raise self._classify(exc, spec) from exc
        return replace(staged, rows_read=self._rows_read())

    def _write(self, frame: Any, target: StageTarget) -> StagedResult:
        schema = delta_schema(_nullable(_arrow_schema(frame.schema)))
        stage_dir = target.directory / f"stage-{uuid.uuid4().hex}"
        target.directory.mkdir(parents=True, exist_ok=True)
        codec = PARQUET_CODECS.get(target.compression, "zstd")
        if self.optimize_write:
            frame = self._rebalanced(frame, target)
        writer = frame.write.mode("error").option("compression", codec)
        if target.compression_level is not None and codec == "zstd":
            writer = writer.option("parquet.compression.codec.zstd.level", str(target.compression_level))
        if target.partition_by:
            writer = writer.partitionBy(*target.partition_by)
        restore = self._size_files(target) if self.optimize_write else (lambda: None)
        try:
            writer.parquet(_uri(stage_dir))
        except BaseException:
            shutil.rmtree(stage_dir, ignore_errors=True)
            raise
        finally:
            restore()
        remove_side_files(stage_dir)
        unique_names(stage_dir)
        files = staged_files(target.directory, stage_dir, schema, target.partition_by)
        return StagedResult(
            files=files,
            rows=sum(f.rows for f in files),
            schema=schema,
            partition_by=target.partition_by,
            column_types={f.name: engine_type_name(f.type) for f in schema},
        )

    # ---- file sizes (``[write] target_file_size``) ------------------------------------------
    # Spark writes one file per task and partition value, so left alone its files follow the
    # plan's partitions: a file per task and value however small, or a few huge ones. So the
    # write is rebalanced, as Delta's optimized writes do, with Spark's own AQE: REBALANCE by
    # the partition columns (a value's rows meet in one task; a value bigger than a file is
    # split into file-sized runs of map outputs) or, unpartitioned, round robin; AQE then
    # splits big tasks and coalesces small ones to its advisory partition size, derived from
    # the target. That size counts shuffle bytes (rows, lz4), files are Parquet (columns,
    # dictionaries, zstd): measured, 1.3 (random doubles) to 12 (repetitive codes) shuffle
    # bytes per file byte, ~3.5 on orders-like data (tests/test_spark_file_size.py); Delta's
    # optimized writes bin 512 MiB of shuffle for their 128 MiB files, the same factor.
    _SHUFFLE_BYTES_PER_FILE_BYTE = 4

    def _rebalanced(self, frame: Any, target: StageTarget) -> Any:
        from pyspark.sql import functions as F

        # Columns, not names: Spark Connect sends a bare string as a literal
        return frame.hint("rebalance", *[F.col(quote_spark(c)) for c in target.partition_by])

    def _size_files(self, target: StageTarget) -> Any:
        """Set the AQE settings that size the rebalanced write's tasks in this task's own
        session (classic: its ``newSession()``; Connect: its own session), so concurrent tasks
        with other targets are unaffected; returns the undo, run once the write is done."""
        advisory = int(max(target.target_file_size, 1) * self._SHUFFLE_BYTES_PER_FILE_BYTE)
        settings = {
            "spark.sql.adaptive.enabled": "true",  # a REBALANCE is only a shuffle without AQE
            "spark.sql.adaptive.coalescePartitions.enabled": "true",
            "spark.sql.adaptive.optimizeSkewsInRebalancePartitions.enabled": "true",
            "spark.sql.adaptive.advisoryPartitionSizeInBytes": str(advisory),
            # a split's last run under half the size joins the one before (Spark: a fifth),
            # so a file cut from a big partition is 0.5 to 1.5 sizes, not 0.2
            "spark.sql.adaptive.rebalancePartitionsSmallPartitionFactor": "0.5",
        }
        if not target.partition_by:
            settings.update({
                # here tasks are files: AQE keeps up to a task per core while a result is
                # smaller than cores x target (as DuckDB writes a file per thread), but no
                # file under a quarter of the target (Spark: 1 MiB), so a small result is one
                # file (partitioned, the count of tasks does not change the count of files)
                "spark.sql.adaptive.coalescePartitions.minPartitionSize": str(max(1, advisory // 4)),
                # Spark's local sort before a round robin scrambles the rows (files 2-3x larger,
                # the write 2x slower, measured); without it a retried map task over unordered
                # input makes its stage indeterminate, which Spark handles by rerunning or
                # failing the job, never by losing or doubling rows
                "spark.sql.execution.sortBeforeRepartition": "false",
            })
        conf = self.spark.conf
        saved: dict[str, str | None] = {}
        for key, value in settings.items():
            try:  # sizing is best effort: a server that refuses a setting still gets the write
                before = conf.get(key, None)
                conf.set(key, value)
            except Exception:
                continue
            saved[key] = before

        def restore() -> None:
            for key, value in saved.items():
                if value is None:
                    conf.unset(key)
                else:
                    conf.set(key, value)

        return restore

    def merge_rewrite(self, staged: StagedResult, dataset: Any, keys: Sequence[str], delete_when: str | None,
                      target: StageTarget) -> tuple[StagedResult, list[str], int]:
        """A copy-on-write merge on the executors: find the table files holding a key of the
        new rows, rewrite their other rows together with the new rows (those matching
        ``delete_when`` left out), and return the rewritten files, the replaced files' log
        paths and the count of rows upserted. Only file names reach the driver."""
        from pyspark.sql import functions as F

        new = self._staged_frame(staged)
        incoming = new.select(*[quote_spark(k) for k in keys]).distinct()
        if delete_when:
            view = f"__hr_merge_src_{self._uid}"
            new.createOrReplaceTempView(view)
            new = self.spark.sql(to_spark_sql(
                f"SELECT * FROM {view} AS s WHERE NOT coalesce(({delete_when}), false)", where="merge delete_when"))
        # one scan of the table finds the files to replace; the rewrite then reads only those
        table = self._dataset_frame(dataset, file_column="__hr_file")
        replaced = [row[0] for row in
                    table.join(incoming, list(keys), "left_semi").select("__hr_file").distinct().collect()]
        kept = (self._dataset_frame(dataset, only=set(replaced))
                .join(incoming, list(keys), "left_anti"))
        columns = [F.col(quote_spark(n)) for n in staged.schema.names]
        written = self._write(kept.select(*columns).unionByName(new.select(*columns)), target)
        upserted = staged.rows if not delete_when else int(new.count())
        return written, replaced, upserted

    def _staged_frame(self, staged: StagedResult) -> Any:
        partitions = {f.path.name: f.partition_values for f in staged.files}
        return self._parquet_frame([f.path for f in staged.files], staged.schema, partitions=partitions)

    def _dataset_frame(self, dataset: Any, *, file_column: str | None = None,
                       only: set[str] | None = None) -> Any:
        """A Delta snapshot's dataset (see :meth:`Snapshot.dataset`) as a DataFrame, with the
        Delta log path of each row's file in ``file_column`` when asked; ``only`` restricts it
        to those log paths."""
        import pyarrow.dataset as pads

        base = Path(getattr(dataset.filesystem, "base_path", "/"))
        entries = [(frag.path, pads.get_partition_keys(frag.partition_expression))
                   for frag in dataset.get_fragments() if only is None or frag.path in only]
        return self._parquet_frame([base / rel for rel, _ in entries], dataset.schema,
                                   partitions={Path(rel).name: v for rel, v in entries},
                                   log_paths={Path(rel).name: rel for rel, _ in entries} if file_column else None,
                                   file_column=file_column)

    def _rows_read(self) -> int | None:
        """Records read from CSV/JSON sources, observed while the result was written. Spark
        Connect (4.0) reports no observed metrics for a write; there the source is counted,
        one more read of it, so the count invariant still holds."""
        if not self._observed:
            return None
        total = 0
        for observation, source in self._observed:
            seen = _observed_rows(observation)
            total += seen if seen is not None else int(source.count())
        return total

    def staged_rows(self, staged: StagedResult, sql: str) -> list[tuple[Any, ...]]:
        """Audit queries (checks, merge-key checks) run on Spark over the staged files: the
        check compiler's SQL, transpiled (see :func:`audit_to_spark_sql`)."""
        view = f"__hr_staged_{self._uid}"
        self._staged_frame(staged).createOrReplaceTempView(view)
        text = audit_to_spark_sql(sql.replace("{staged}", view))
        return [tuple(_plain(v) for v in row) for row in self.spark.sql(text).collect()]

    def staged_reader(self, staged: StagedResult, *, where: str | None = None) -> pa.RecordBatchReader:
        """The staged rows as an Arrow stream, for deltalake's merge (runs on the driver)."""
        name = self._bind_local(_staged_dataset(staged))
        sql = f"SELECT * FROM {quote_ident(name)} AS s" + (f" WHERE {where}" if where else "")
        return self._local.con.sql(sql).arrow()

    def _bind_local(self, dataset: Any) -> str:
        """A fresh driver-side DuckDB view over a dataset (the staged files change per call)."""
        self._binds += 1
        name = f"__hr_staged_ds_{self._uid}_{self._binds}"
        self._local.read_table(name, dataset)
        return name

    # ---- engine-side write modes (scd2): headrace's own SQL, run on Spark ----------------
    def for_input(self, nbytes: int) -> Any:
        """Work over less than ``[spark] local_threshold`` bytes runs on the driver's DuckDB:
        a dozen Spark jobs cost seconds where DuckDB needs milliseconds, and both engines run
        the same SQL, hash rows the same way and stage files the same way."""
        return self._local if nbytes < self.local_threshold else self

    def bind_staged(self, staged: StagedResult, name: str) -> None:
        self._staged_frame(staged).createOrReplaceTempView(name)

    # ---- personal data (headrace.quality.pii): the same values as on DuckDB -------------
    def protect(self, frame: Any, masks: Mapping[str, str], key: str | None) -> Any:
        from pyspark.sql import functions as F

        from headrace.quality.pii import protect_sql

        replaced = {c: F.expr(protect_sql(m, quote_spark(c), dialect="spark", key=key))
                    for c, m in masks.items() if c in frame.columns}
        return frame.withColumns(replaced) if replaced else frame

    def protect_view(self, name: str, masks: Mapping[str, str], key: str | None) -> None:
        self.protect(self.spark.table(quote_spark(name)), masks, key).createOrReplaceTempView(name)

    def column_types(self, name: str) -> dict[str, str]:
        """DuckDB's names for the column types of the view ``name`` (the SQL is DuckDB's)."""
        from headrace.engines.duckdb_engine import _duck_type

        return {f.name: _duck_type(f.type) for f in _arrow_schema(self.spark.table(quote_spark(name)).schema)}

    def bind_hashed(self, name: str, sql: str, hash_sql: str, column: str) -> None:
        from headrace.engines.spark_statements import bind_hashed

        try:
            bind_hashed(self.spark, name, sql, hash_sql, column, self._kept)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"Spark: {_first_line(exc)}") from exc

    def bind_files(self, name: str, files: Sequence[tuple[str, Mapping[str, str | None]]], schema: pa.Schema,
                   partition_by: Sequence[str]) -> None:
        """A temp view over a table's files with ``__hr_f`` (path) and ``__hr_r`` (row number
        in the file, Parquet's own ``_metadata.row_index``), as the DuckDB engine binds them."""
        paths = [Path(p) for p, _ in files]
        partitions = {path.name: dict(values) for path, (_, values) in zip(paths, files, strict=True)}
        frame = self._parquet_frame(paths, schema, partitions=partitions,
                                    log_paths={path.name: str(path) for path in paths}, file_column="__hr_f",
                                    row_column="__hr_r")
        frame.createOrReplaceTempView(name)

    def run_sql(self, sql: str) -> list[tuple[Any, ...]]:
        from headrace.engines.spark_statements import run_statement

        return run_statement(self.spark, sql, self._kept)

    def write_query(self, sql: str, target: StageTarget) -> StagedResult:
        """Executors write the query's rows into the table's folder (see :meth:`stage`)."""
        from headrace.engines.spark_statements import internal_to_spark_sql

        try:
            return self._write(self.spark.sql(internal_to_spark_sql(sql)), target)
        except Exception as exc:
            raise EngineError(f"Spark: {_first_line(exc)}") from exc

    def _classify(self, exc: BaseException, spec: TableSpec) -> Exception:
        where = f"table {spec.name!r} ({spec.origin})"
        text = _first_line(exc)
        kind = type(exc).__name__
        if "Malformed records" in text or "MALFORMED_RECORD" in text or "FAILFAST" in text:
            names = ", ".join(repr(n) for n in self._sources.values())
            return SourceError(f"{where}: cannot read source {names}: {text}",
                               hint="fix the file, or declare a contract with on_violation='quarantine'",
                               table=spec.name)
        if kind in ("AnalysisException", "ParseException"):
            return TransformError(f"{where}: {text}", table=spec.name)
        return TransformError(f"{where}: {text}", table=spec.name)

    def close(self) -> None:
        from headrace.engines.spark_statements import release

        release(self._kept)
        self._local.close()


# ---- helpers ------------------------------------------------------------------------------

def quote_spark(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _arrow_schema(struct: Any) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(struct, timestamp_utc=True, prefers_large_types=False)


def _nullable(schema: pa.Schema) -> pa.Schema:
    """Delta columns written by headrace are nullable on both engines (DuckDB's are)."""
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def _spark_ddl(kind: pa.DataType) -> str:
    from pyspark.sql.pandas.types import from_arrow_type

    if pa.types.is_timestamp(kind):
        return "TIMESTAMP_LTZ" if kind.tz else "TIMESTAMP_NTZ"
    return str(from_arrow_type(kind, prefer_timestamp_ntz=True).simpleString())


def _observed_rows(observation: Any) -> int | None:
    """The observed row count, or None when there is none. Never blocks: ``Observation.get``
    waits for ever when the optimiser pruned the source's scan (``WHERE false``)."""
    jvm_side = getattr(observation, "_jo", None)
    if jvm_side is not None:  # classic: a bounded wait (~0.1 s) on the JVM's observation
        metrics = jvm_side.getOrEmpty()
        return int(metrics.apply("rows")) if metrics.contains("rows") else None
    try:  # Spark Connect: filled only by actions that return rows
        return int(observation.get["rows"])
    except Exception:
        return None


def _plain(value: Any) -> Any:
    """Spark rows (structs) as dicts, recursively, as DuckDB returns them."""
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict(recursive=False).items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _uri(path: Path) -> str:
    """A local file URI as Hadoop reads it: not percent-encoded (``as_uri`` would turn the
    ``=`` of partition folders into ``%3D``, which Hadoop takes literally)."""
    return f"file://{path}"


def _parquet_rows(files: Sequence[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


def _staged_dataset(staged: StagedResult) -> Any:
    """The staged files as a pyarrow dataset typed like the result (partition values from the
    staged files' descriptions, not re-parsed from paths)."""
    from headrace.delta.partitions import file_dataset

    return file_dataset([str(f.path) for f in staged.files], staged.schema, staged.partition_by,
                        [f.partition_values for f in staged.files], _local_fs())


def _local_fs() -> Any:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()

