"""On Spark, ``[write] target_file_size`` sizes the data files as it does on DuckDB.

Spark alone writes a file per task and partition value; the engine rebalances the write (AQE
REBALANCE, advisory partition size derived from the target) so files come out near the target
whatever the plan's partitioning. The advisory size counts shuffle bytes and the files are
Parquet, so a file's size also follows how well its data compresses: the engine assumes 4
shuffle bytes per file byte; this fixture's orders-like data measured 3.4-3.5, repetitive
data up to 12 (files down to ~0.35x the target), incompressible data 1.3 (up to ~3x).
AQE's granularity adds its own spread: a file cut from a big partition is 0.5 to 1.5 advisory
sizes, a file of coalesced small ones 0.5 to 1. Hence the band asserted for this fixture, 0.4x
to 1.6x the target; Spark's own layouts here fall outside it (2 files of 1.9x for the
unpartitioned table, 32 of 0.18x for the partitioned one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import pytest

from conftest import BASE_TOML, open_ws, write_files

pytestmark = [pytest.mark.spark, pytest.mark.slow]

if not os.environ.get("CI"):
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'headrace[spark]')")

SPARK = {"engine": "spark", "spark.master": "local[2]"}
MB = 1024 * 1024
ROWS = 360_000
DAYS = 2
COLUMNS = ["order_id", "customer_id", "product_id", "quantity", "amount", "channel", "email", "order_ts",
           "order_date"]
BAND = (0.4, 1.6)  # a file's size over the target, see the module docstring

PIPELINE = '''
import headrace as hr

orders = hr.files("data/*.parquet", format="parquet")


@hr.table("bronze.flat", source=orders, write="overwrite")
def flat(raw):
    return raw


@hr.table("bronze.by_day", source=orders, write="overwrite", partition_by="order_date")
def by_day(raw):
    return raw.repartition(16)  # a plan of many tasks, as after a join (Spark's API: Spark only)


@hr.table("gold.daily", inputs={"o": "bronze.by_day"}, write="overwrite")
def daily(o):
    return "SELECT order_date, count(*) AS n, CAST(sum(amount) AS DECIMAL(18, 2)) AS total FROM o GROUP BY order_date"
'''


def _orders(rows: int) -> str:
    """Orders-like rows: pseudo-random ids, amounts and channels (hash of the row number), an
    e-mail, a timestamp, days interleaved so every input file holds every day."""
    return f"""
        SELECT i AS order_id,
               CAST(1 + hash(i) % 5000 AS BIGINT) AS customer_id,
               CAST(101 + hash(i, 1) % 48 AS BIGINT) AS product_id,
               CAST(1 + hash(i, 2) % 5 AS INTEGER) AS quantity,
               CAST(CAST(hash(i, 3) % 40000 AS BIGINT) / 100 AS DECIMAL(12, 2)) AS amount,
               ['web', 'app', 'store'][CAST(1 + hash(i, 4) % 3 AS INTEGER)] AS channel,
               'user' || CAST(1 + hash(i) % 5000 AS BIGINT) || '@example.com' AS email,
               TIMESTAMP '2026-11-01' + to_seconds(CAST(i * 2 + hash(i, 5) % 2 AS BIGINT)) AS order_ts,
               DATE '2026-11-01' + CAST(i % {DAYS} AS INTEGER) AS order_date
        FROM range({rows}) t(i)"""


def _write_source(folder: Path, rows: int, files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"CREATE TABLE src AS {_orders(rows)}")
    for k in range(files):
        con.execute(f"COPY (SELECT * FROM src WHERE order_id // {DAYS} % {files} = {k} ORDER BY order_id) "
                    f"TO '{folder / f'part{k}.parquet'}' (FORMAT parquet, ROW_GROUP_SIZE 50000)")


def _digest(sql_from: str, con: Any) -> tuple[int, int]:
    cols = ", ".join(COLUMNS)
    return con.sql(f"SELECT count(*), coalesce(sum(hash({cols}))::HUGEINT, 0) FROM {sql_from}").fetchall()[0]


def _files(root: Path, name: str) -> list[tuple[dict[str, Any], int]]:
    """(partition values, size) of each file in the table's current version."""
    import pyarrow as pa
    from deltalake import DeltaTable

    table = pa.table(DeltaTable(str(root / "lake" / name.replace(".", "/"))).get_add_actions(flatten=True)).to_pydict()
    parts = [k for k in table if k.startswith("partition.")]
    return [({k.removeprefix("partition."): table[k][i] for k in parts}, int(table["size_bytes"][i]))
            for i in range(len(table["size_bytes"]))]


def _run(root: Path, **overrides: Any) -> Any:
    ws = open_ws(root, overrides={**SPARK, **overrides})
    try:
        result = ws.run([])
        assert result.ok, [(t.table, t.error) for t in result.tasks if t.error]
        return result
    finally:
        ws.close()


def _one_commit(root: Path, name: str, run_id: str) -> None:
    from headrace.delta.catalog import Lake

    history = Lake(root / "lake").history(name)
    assert [c.run_id for c in history].count(run_id) == 1, history
    assert len(history) == 1


def test_files_follow_target_file_size(tmp_path: Path) -> None:
    """A 1 MiB target and 360k rows (~4 MiB of Parquet) in each of two tables, written at once
    (each task's AQE settings live in its own session). Measured: the unpartitioned table in 4
    files of ~1.02 MiB (Spark alone: a file per input split, 2 of 1.9 MiB), the partitioned one
    in 2 files of ~0.96 MiB a day (Spark alone: a file per task and day, 32 of 0.18 MiB)."""
    root = tmp_path / "sized"
    write_files(root, {"headrace.toml": BASE_TOML, "pipelines/p.py": PIPELINE})
    _write_source(root / "data", ROWS, 2)
    result = _run(root, **{"write.target_file_size": "1MB"})

    from headrace.delta.catalog import Lake

    con = duckdb.connect()
    source = _digest(f"read_parquet('{root / 'data'}/*.parquet')", con)
    assert source[0] == ROWS
    lake = Lake(root / "lake")
    for name in ("bronze.flat", "bronze.by_day"):
        _one_commit(root, name, result.run_id)
        con.register("t", lake.snapshot(name).dataset())
        assert _digest("t", con) == source, name
        sizes = sorted(size / MB for _, size in _files(root, name))
        assert all(BAND[0] <= s <= BAND[1] for s in sizes), (name, sizes)
        total = sum(sizes)
        assert total / BAND[1] <= len(sizes) <= total / BAND[0] + DAYS, (name, len(sizes), total)
    per_day: dict[str, list[int]] = {}
    for values, size in _files(root, "bronze.by_day"):
        per_day.setdefault(str(values["order_date"]), []).append(size)
    assert sorted(per_day) == [f"2026-11-0{d + 1}" for d in range(DAYS)]
    for day, sizes in per_day.items():  # ~2 MiB a day: about two files, not one per task
        assert 1 <= len(sizes) <= 4, (day, sizes)
    assert len(_files(root, "bronze.flat")) >= 3  # ~4 MiB: not the 2 files of its 2 tasks


def test_small_results_make_one_file_per_partition(tmp_path: Path) -> None:
    """The default 128 MiB target and 5000 rows: the unpartitioned table is one file (Spark
    alone: one per input split, 2), the partitioned one a file per day (Spark alone: one per
    task and day, 32), an aggregate (8 shuffle partitions) one file."""
    root = tmp_path / "small"
    write_files(root, {"headrace.toml": BASE_TOML, "pipelines/p.py": PIPELINE})
    _write_source(root / "data", 5_000, 4)
    result = _run(root)
    assert len(_files(root, "bronze.flat")) == 1
    by_day = _files(root, "bronze.by_day")
    assert sorted(str(v["order_date"]) for v, _ in by_day) == [f"2026-11-0{d + 1}" for d in range(DAYS)]
    assert len(_files(root, "gold.daily")) == 1
    for name in ("bronze.flat", "bronze.by_day", "gold.daily"):
        _one_commit(root, name, result.run_id)
    from headrace.delta.catalog import Lake

    con = duckdb.connect()
    source = _digest(f"read_parquet('{root / 'data'}/*.parquet')", con)
    for name in ("bronze.flat", "bronze.by_day"):
        con.register("t", Lake(root / "lake").snapshot(name).dataset())
        assert _digest("t", con) == source, name


def test_write_settings_stay_in_the_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AQE settings a write needs are set for that write only: the task session's own
    values (set or unset) are back afterwards, so its later queries (checks) plan as before.
    A setting the server refuses is skipped: sizing is best effort, the write still happens."""
    from headrace.engines.base import StageTarget
    from headrace.engines.registry import create_engine

    engine = create_engine("spark", master="local[2]")
    session = engine.session()
    try:
        conf = session.spark.conf
        conf.set("spark.sql.adaptive.advisoryPartitionSizeInBytes", "7m")
        conf.unset("spark.sql.execution.sortBeforeRepartition")
        frame = session.spark.range(1000).selectExpr("id", "id % 3 AS k")
        for partition_by in ((), ("k",)):
            staged = session._write(frame, StageTarget(tmp_path / "t", partition_by, target_file_size=MB))
            assert staged.rows == 1000
            assert len(staged.files) == (3 if partition_by else 1)
            assert conf.get("spark.sql.adaptive.advisoryPartitionSizeInBytes") == "7m"
            assert conf.get("spark.sql.execution.sortBeforeRepartition", None) is None

        real_set = conf.set

        def refusing(key: str, value: Any) -> None:
            if key == "spark.sql.execution.sortBeforeRepartition":
                raise RuntimeError(f"cannot modify the value of {key}")
            real_set(key, value)

        monkeypatch.setattr(conf, "set", refusing)
        staged = session._write(frame, StageTarget(tmp_path / "t", (), target_file_size=MB))
        assert staged.rows == 1000 and len(staged.files) == 1
        assert conf.get("spark.sql.adaptive.advisoryPartitionSizeInBytes") == "7m"
    finally:
        session.close()
        engine.close()
