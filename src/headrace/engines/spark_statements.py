"""headrace's own multi-statement SQL (SCD2 change sets), run on Spark.

The SCD2 publish is a sequence of DuckDB statements over temp tables. On Spark each statement
is transpiled with sqlglot and a temp table becomes a temp view over rows materialised on the
executors (a local checkpoint; a persisted plan over Spark Connect), which is what a DuckDB
temp table is: a result computed once and read many times. ``INSERT INTO`` a temp table becomes a new checkpoint
of the old rows plus the new ones. Queries that return rows to the driver return counts and
file names only.

Row hashes are computed by DuckDB inside the Spark tasks (:func:`hash_batches`): an SCD2
table's ``row_hash`` is an md5 over DuckDB's JSON text of the tracked values, and a table
written by one engine is updated by the other, so both must produce the very same text.
Spark's ``to_json`` renders timestamps, doubles and escapes differently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from headrace.errors import EngineError


def internal_to_spark_sql(sql: str) -> str:
    """Transpile one of headrace's own DuckDB statements. ``timezone('UTC', t)`` (an instant
    as UTC wall-clock time) is a cast to TIMESTAMP_NTZ on Spark, whose session zone is UTC."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and node.name.lower() == "timezone":
            zone, value = node.expressions
            if isinstance(zone, exp.Literal) and zone.this.upper() == "UTC":
                return exp.cast(value, exp.DataType.build("TIMESTAMP_NTZ", dialect="spark"))
        return node

    return tree.transform(rewrite).sql(dialect="spark")


def run_statement(spark: Any, sql: str, keep: list[Any]) -> list[tuple[Any, ...]]:
    """Run one DuckDB statement on Spark (see the module docstring); rows for a query.

    ``keep`` holds the checkpointed DataFrames behind the temp views for as long as the caller
    needs them: Spark Connect releases a checkpoint when its DataFrame object is collected,
    and a view over it would then point at nothing."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")
    try:
        if isinstance(tree, exp.Create) and str(tree.args.get("kind", "")).upper() == "TABLE":
            target = tree.this
            if isinstance(target, exp.Schema):  # CREATE TEMP TABLE t (column type, ...)
                ddl = ", ".join(f"`{c.name}` {c.args['kind'].sql(dialect='spark')}" for c in target.expressions)
                frame = spark.createDataFrame([], ddl)
                name = target.this.name
            else:
                frame = spark.sql(internal_to_spark_sql(tree.expression.sql(dialect="duckdb")))
                name = target.name
            _keep_view(frame, name, keep)
            return []
        if isinstance(tree, exp.Insert):
            name = tree.this.name
            current = spark.table(name)
            added = spark.sql(internal_to_spark_sql(tree.expression.sql(dialect="duckdb")))
            renamed = added.toDF(*current.columns)
            added = renamed.select(*[renamed[c].cast(current.schema[c].dataType) for c in current.columns])
            _keep_view(current.union(added), name, keep)
            return []
        if isinstance(tree, exp.Drop):
            spark.catalog.dropTempView(tree.this.name)
            return []
        from headrace.engines.spark_engine import _plain

        return [tuple(_plain(v) for v in row) for row in spark.sql(internal_to_spark_sql(sql)).collect()]
    except EngineError:
        raise
    except Exception as exc:
        from headrace.engines.spark_engine import _first_line

        raise EngineError(f"Spark: {_first_line(exc)}") from exc


def _keep_view(frame: Any, name: str, keep: list[Any]) -> None:
    """Materialise ``frame`` once and bind ``name`` to it. Classic Spark: a local checkpoint
    (computed now, lineage cut). Spark Connect: a persisted plan, counted now; Connect's
    checkpoints are server-side relations released as soon as the client lets go of them,
    which a temp view over one does not prevent."""
    if type(frame).__module__.startswith("pyspark.sql.connect"):
        frame = frame.persist()
        frame.count()
    else:
        frame = frame.localCheckpoint()
    frame.createOrReplaceTempView(name)
    keep.append(frame)


def release(keep: list[Any]) -> None:
    """Drop what ``_keep_view`` materialised (a task's SCD2 temp tables)."""
    for frame in keep:
        try:
            frame.unpersist()
        except Exception:  # cleanup only: the session goes next
            pass
    keep.clear()


def bind_hashed(spark: Any, name: str, sql: str, hash_sql: str, column: str, keep: list[Any]) -> None:
    """Bind ``name`` to the rows of ``sql`` (DuckDB dialect, transpiled) plus ``column``, the
    DuckDB expression ``hash_sql`` evaluated by DuckDB in the tasks over each Arrow batch."""
    from pyspark.sql.types import StringType, StructField, StructType

    from headrace.engines.spark_engine import _arrow_schema

    frame = spark.sql(internal_to_spark_sql(sql))
    schema = StructType([*frame.schema.fields, StructField(column, StringType(), True)])
    arrow = _arrow_schema(schema)
    hashed = frame.mapInArrow(hash_batches(hash_sql, column, arrow), schema)
    _keep_view(hashed, name, keep)


def hash_batches(hash_sql: str, column: str, schema: pa.Schema
                 ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A ``mapInArrow`` function adding ``column`` = ``hash_sql`` computed by DuckDB."""
    quoted = '"' + column.replace('"', '""') + '"'

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import duckdb

        con = duckdb.connect(":memory:", config={"threads": 1})
        try:
            for batch in batches:
                con.register("__hr_batch", pa.Table.from_batches([batch]))
                out = con.sql(f"SELECT *, {hash_sql} AS {quoted} FROM __hr_batch").to_arrow_table()
                con.unregister("__hr_batch")
                yield from out.cast(schema).to_batches()
        finally:
            con.close()

    return run
