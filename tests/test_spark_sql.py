"""DuckDB -> Spark SQL translation and the driver's reading of Spark-written files (no JVM)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headrace.engines.spark_sql import audit_to_spark_sql, to_spark_sql
from headrace.engines.spark_stage import (
    footer_stats,
    partition_values,
    remove_side_files,
    unique_names,
)
from headrace.errors import DefinitionError


def test_models_transpile_to_spark() -> None:
    sql = to_spark_sql("select a, count(*) as n from t group by all qualify n > 1", where="m")
    assert sql == "SELECT a, n FROM (SELECT a, COUNT(*) AS n FROM t GROUP BY ALL) AS _t WHERE n > 1"
    assert to_spark_sql("select x::date as d from t", where="m") == "SELECT CAST(x AS DATE) AS d FROM t"


def test_untranslatable_construct_names_model_and_construct() -> None:
    with pytest.raises(DefinitionError) as info:
        to_spark_sql("select arg_max(x, y, 3) from t", where="table 'silver.top'")
    assert "silver.top" in info.value.message and "ArgMax" in info.value.message


def test_bad_sql_and_several_statements_are_definition_errors() -> None:
    with pytest.raises(DefinitionError, match="does not parse"):
        to_spark_sql("select from where", where="m")
    with pytest.raises(DefinitionError, match="one SQL statement"):
        to_spark_sql("select 1; select 2", where="m")


def test_audit_sql_rewrites_duckdb_only_constructs() -> None:
    duck = (
        "SELECT count(*) FILTER (WHERE f) AS c, "
        "arg_min(struct_pack(id := id), row(id), 5) FILTER (WHERE f) AS s, "
        "arg_max(struct_pack(a := a), __hr_n, 5) FILTER (WHERE g) AS u, "
        "epoch_ns(max(ts)) AS e, GROUPING(a, b) AS gid, "
        "NOT regexp_full_match(CAST(email AS VARCHAR), '[a-z]+') AS r, __hr_t AS __hr_row "
        "FROM t AS __hr_t"
    )
    spark = audit_to_spark_sql(duck)
    assert "ARG_MIN" not in spark and "ARG_MAX" not in spark
    assert "SLICE(ARRAY_SORT(COLLECT_LIST(CASE WHEN f THEN" in spark
    assert "-(__hr_n)" in spark  # arg_max sorts on the negated order
    assert "UNIX_MICROS(CAST(MAX(ts) AS TIMESTAMP_LTZ)) * 1000" in spark
    assert "GROUPING_ID(a, b)" in spark
    assert "RLIKE '^(?:[a-z]+)$'" in spark
    assert "STRUCT(__hr_t.*) AS __hr_row" in spark


def test_partition_values_from_spark_paths() -> None:
    rel = Path("day=2026-01-01/city=New%20York%2FNY/part-1.parquet")
    assert partition_values(rel, ("day", "city")) == {"day": "2026-01-01", "city": "New York/NY"}
    rel = Path("day=__HIVE_DEFAULT_PARTITION__/part-1.parquet")
    assert partition_values(rel, ("day",)) == {"day": None}


def test_footer_stats_and_file_hygiene(tmp_path: Path) -> None:
    table = pa.table({"id": pa.array([3, 1, None], pa.int64()), "name": ["b", "a", "c"],
                      "amount": pa.array([1.5, 2.5, 0.5])})
    stage = tmp_path / "stage-x" / "day=2026-01-01"
    stage.mkdir(parents=True)
    path = stage / "part-00000-same.c000.zstd.parquet"
    pq.write_table(table, path)
    (stage / ".part-00000-same.c000.zstd.parquet.crc").write_bytes(b"x")
    (tmp_path / "stage-x" / "_SUCCESS").write_bytes(b"")
    stats = json.loads(footer_stats(pq.ParquetFile(path).metadata, table.schema, ()))
    assert stats["numRecords"] == 3
    assert stats["minValues"] == {"id": 1, "name": "a"} and stats["maxValues"] == {"id": 3, "name": "c"}
    assert stats["nullCount"] == {"id": 1, "name": 0, "amount": 0}  # no float bounds: not exact
    remove_side_files(tmp_path / "stage-x")
    unique_names(tmp_path / "stage-x")
    left = sorted(p.name for p in (tmp_path / "stage-x").rglob("*") if p.is_file())
    assert len(left) == 1 and left[0].startswith("part-") and "same" not in left[0]


def test_spark_errors_are_shown_by_their_cause() -> None:
    from headrace.engines.spark_engine import _first_line

    py4j = Exception(
        "An error occurred while calling o90.parquet.\n"
        ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 8.0 failed 1 "
        "times, most recent failure: Lost task 0.0: org.apache.spark.SparkException: "
        "[MALFORMED_RECORD_IN_PARSING] Malformed records are detected in record parsing: [8,x].\n"
        "\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:2856)")
    assert _first_line(py4j) == "[MALFORMED_RECORD_IN_PARSING] Malformed records are detected in record parsing: [8,x]."
    udf = Exception("An exception was thrown from the Python worker. Please see the stack trace below.\n"
                    "Traceback (most recent call last):\n  File \"p.py\", line 9, in boom\n"
                    "RuntimeError: executor lost\n\tat org.apache.spark.api.python.X.y(X.scala:1)")
    assert _first_line(udf) == "RuntimeError: executor lost"


def test_small_work_goes_to_the_drivers_duckdb() -> None:
    """``[spark] local_threshold``: below it a contract, merge or SCD2 publish runs on the
    driver's DuckDB session (its jobs cost milliseconds, Spark's seconds); at it, on Spark."""
    from headrace.engines.duckdb_engine import DuckDBEngine
    from headrace.engines.spark_engine import SparkTaskSession

    local = DuckDBEngine().session()
    session = SparkTaskSession(None, local, local_threshold=1000)
    assert session.for_input(999) is local
    assert session.for_input(1000) is session
    assert SparkTaskSession(None, local, local_threshold=0).for_input(0) is not local
    assert local.for_input(10**12) is local
