"""Contracts validated in Spark tasks quarantine exactly what the DuckDB engine quarantines.

The batch is split into groups of files, one Spark task each; what depends on every file (the
union of CSV headers, the NDJSON keys, duplicate keys) must come out as if one process had read
the whole batch. The fixture puts the hard cases in different groups: headers that differ in
order, case and width, a duplicated key in two groups, CRLF and invalid UTF-8 files, an extra
JSON key in only one file (so the optimistic NDJSON pass must discover keys and redo), blank
lines, malformed records, a header-only file.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import pytest

from headrace.engines.spark_contracts import file_groups, file_header
from headrace.quality.contracts import probe_file
from headrace.spec.sources import FileSource

from conftest import write_files

if not os.environ.get("CI"):
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'headrace[spark]')")


# ---- without a JVM -----------------------------------------------------------------------------

def _sized(tmp_path: Path, sizes: list[int]) -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}.csv"
        path.write_bytes(b"x" * size)
        paths.append(path)
    return paths


def test_file_groups_keep_order_and_spread_over_the_cores(tmp_path: Path) -> None:
    files = _sized(tmp_path, [10, 10, 10, 10, 10])
    groups = file_groups(files, 2)
    assert [len(g) for g in groups] == [3, 2]
    assert [p for g in groups for p in g] == files  # every file once, in order
    assert file_groups(files[:1], 8) == [(files[0],)]
    assert [len(g) for g in file_groups(files, 8)] == [1, 1, 1, 1, 1]  # never more groups than files
    assert file_groups([], 4) == []


def test_file_groups_follow_the_bytes(tmp_path: Path) -> None:
    files = _sized(tmp_path, [100, 1, 1, 1, 100, 1])
    groups = file_groups(files, 2)
    assert [p for g in groups for p in g] == files
    assert [sum(p.stat().st_size for p in g) for g in groups] == [102, 102]  # a share of the bytes each


@pytest.mark.parametrize("content", [
    b"id,name\n1,a\n", b"\xef\xbb\xbfid,name\r\n1,a\r\n", b"id,na\xffme\n1,a\n", b"id,name", b"",
    b"\nid\n", b"a" * 70_000 + b"\nrest\n",
])
def test_file_header_is_the_probes_first_line(tmp_path: Path, content: bytes) -> None:
    plain = tmp_path / "a.csv"
    plain.write_bytes(content)
    packed = tmp_path / "a.csv.gz"
    packed.write_bytes(gzip.compress(content))
    spec = FileSource(path="*.csv", format="csv")
    for path in (plain, packed):
        assert file_header(spec, path) == probe_file(spec, path, count_lines=False).header


# ---- on Spark local[2], against the DuckDB engine ----------------------------------------------

PIPELINE = '''
import headrace as hr

orders = hr.files("data/orders/*.csv", format="csv")
events = hr.files("data/events/*.ndjson", format="ndjson")

ORDERS = hr.Contract({
    "id": hr.Int64(key=True),
    "amount": hr.Decimal(10, 2, min=0),
    "when": hr.Date(nullable=False),
    "note": hr.String(max_length=12),
}, on_violation="quarantine", max_quarantine_ratio=0.9)

EVENTS = {
    "event_id": hr.Int64(key=True),
    "kind": hr.String(accepted=["view", "buy"]),
    "at": hr.Timestamp(),
}


@hr.table("bronze.orders", source=orders, write="append", contract=ORDERS)
def bronze_orders(raw):
    return raw


@hr.table("bronze.events", source=events, write="append",
          contract=hr.Contract(EVENTS, on_violation="quarantine", max_quarantine_ratio=0.9))
def bronze_events(raw):
    return raw


@hr.table("bronze.events_strict", source=events, write="append",
          contract=hr.Contract(EVENTS, schema="discard", on_violation="quarantine", max_quarantine_ratio=0.9))
def bronze_events_strict(raw):
    return raw
'''


def _fixture(root: Path) -> None:
    event = '{{"event_id": {0}, "kind": "{1}", "at": "2026-03-0{2} 10:00:00"}}'
    write_files(root, {
        "headrace.toml": 'name = "groups"\n',
        "pipelines/p.py": PIPELINE,
        "data/orders/a.csv": "id,amount,when,note\n1,10.50,2026-01-01,first\n2,3,2026-01-02,\n\n"
                             "7,1,2026-01-03,dup here\n3,4,2026-01-04\n4,-2,2026-01-05,negative\n",
        "data/orders/b.csv": b"ID,when,amount\r\n5,2026-02-01,7.25\r\n6,not a date,1\r\n8,2026-02-03,99999999999\r\n",
        "data/orders/c.csv": b"id,amount,when,note,extra\n7,2,2026-03-01,dup there,x\n"
                             b"9,1,2026-03-02,\"unterminated,y\n10,5,2026-03-03,way too long a note,z\n"
                             + b"11,6,2026-03-04,caf\xe9,w\n12,6,2026-03-05,ok,\n",
        "data/orders/d.csv": "id,amount,when,note\n",
        "data/events/e1.ndjson": "\n".join([event.format(1, "view", 1), event.format(2, "buy", 2),
                                            '{"event_id": 3, "kind": "refund"}', "   ",
                                            '{"event_id": 4, "kind": ']) + "\n",
        "data/events/e2.ndjson": "\n".join([event.format(5, "buy", 3), "[1, 2]",
                                            '{"event_id": "six", "kind": "view", "at": "soon"}']) + "\n",
        "data/events/e3.ndjson": "\n".join([event.format(2, "view", 4),  # the key of e1 again
                                            '{"event_id": 7, "kind": "buy", "at": "2026-03-05 01:02:03", '
                                            '"channel": "web"}', event.format(8, "view", 6)]) + "\n",
    })


def _spied(monkeypatch: pytest.MonkeyPatch, name: str, files_at: int) -> list[Any]:
    """Record each call of ``spark_contracts.<name>`` as (its files, parallelism, result)."""
    from headrace.engines import spark_contracts

    calls: list[Any] = []
    real = getattr(spark_contracts, name)

    def spy(*args: Any, **kw: Any) -> Any:
        done = real(*args, **kw)
        calls.append((list(args[files_at]), kw["parallelism"], done))
        return done

    monkeypatch.setattr(spark_contracts, name, spy)
    return calls


@pytest.mark.spark
@pytest.mark.slow
def test_groups_of_files_quarantine_what_one_pass_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_spark_engine import SPARK, _both, _digest

    monkeypatch.setitem(SPARK, "spark.local_threshold", 0)
    calls = _spied(monkeypatch, "validate_on_spark", 4)
    root = tmp_path / "groups"
    _fixture(root)
    _both(root)  # same task summaries, tables, quarantine tables; one commit per table
    assert len(calls) == 3  # every source validated in Spark tasks, none on the driver
    for files, parallelism, done in calls:
        assert len(file_groups(sorted(files), parallelism)) == 2
        assert len({p.parent.parent for p in done.stored}) == 2  # rows stored by two tasks
    lake = root / "lake-spark"
    # orders: 11 records; quarantined: the duplicated id 7 twice, a missing field, a negative
    # amount, a bad date, an amount too wide, malformed quoting, a note too long, invalid UTF-8
    assert _digest(lake, "bronze.orders")[1] == 4
    assert _digest(lake, "bronze.orders__quarantine")[1] == 9
    # events: 10 records (and a blank line); the key 2 in e1 and e3, refund, truncated, array, bad id and time
    assert _digest(lake, "bronze.events")[1] == 4
    assert _digest(lake, "bronze.events__quarantine")[1] == 6
    import duckdb

    from headrace.delta.catalog import Lake

    con = duckdb.connect()
    con.register("q", Lake(lake).snapshot("bronze.orders__quarantine").dataset())
    con.register("e", Lake(lake).snapshot("bronze.events").dataset())
    lines = con.sql("SELECT regexp_extract(source_file, '[a-z]+[.]csv$'), source_line FROM q ORDER BY ALL").fetchall()
    assert lines == [("a.csv", 5), ("a.csv", 6), ("a.csv", 7), ("b.csv", 3), ("b.csv", 4),
                     ("c.csv", 2), ("c.csv", 3), ("c.csv", 4), ("c.csv", 5)]
    assert "channel" in [c for c in con.sql("SELECT * FROM e LIMIT 0").columns]  # discovered after the redo


@pytest.mark.spark
@pytest.mark.slow
def test_unreadable_file_in_a_task_is_a_clear_source_error(make_project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_spark_engine import SPARK, _run

    monkeypatch.setitem(SPARK, "spark.local_threshold", 0)

    root = make_project({
        "data/a.csv": "id\n1\n",
        "pipelines/p.py": 'import headrace as hr\nsrc = hr.files("data/*.csv", format="csv", compression="gzip")\n'
                          '@hr.table("bronze.a", source=src, contract=hr.Contract({"id": hr.Int64()}))\n'
                          'def a(raw):\n    return raw\n',
    })
    result = _run(root, "spark")[0]
    task = result.tasks[0]
    assert task.status == "failed"
    assert "a.csv" in task.error and "cannot read" in task.error
    assert "Traceback" not in task.error and "py4j" not in task.error.lower()


DERIVED = '''
import headrace as hr

@hr.table("bronze.a", source=hr.files("data/a/*.csv", format="csv"), write="overwrite")
def a(raw):
    return raw


@hr.table("bronze.b", source=hr.files("data/b/*.csv", format="csv"), write="overwrite")
def b(raw):
    return raw


@hr.table("silver.items", inputs={"a": "bronze.a", "b": "bronze.b"}, write="overwrite",
          contract=hr.Contract({"id": hr.Int64(key=True), "qty": hr.Int32(min=0),
                                "label": hr.String(max_length=5)},
                               on_violation="quarantine", max_quarantine_ratio=0.5))
def items(a, b):
    return "SELECT id, qty, label FROM a UNION ALL SELECT id, qty, label FROM b"
'''


@pytest.mark.spark
@pytest.mark.slow
def test_derived_table_contract_is_validated_in_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A contract on a table fed by other tables: Spark tasks validate groups of the result's
    files; a key held in two groups, a broken rule and a too-long text are quarantined as on
    DuckDB (a derived row's line is its ordinal in the result, which no engine orders: its
    values may differ, each row still gets its own)."""
    import test_spark_engine
    from test_spark_engine import SPARK, _both, _digest

    calls = _spied(monkeypatch, "validate_result_on_spark", 2)
    monkeypatch.setitem(SPARK, "spark.local_threshold", 0)
    monkeypatch.setattr(test_spark_engine, "RUN_DEPENDENT", test_spark_engine.RUN_DEPENDENT | {"source_line"})
    root = tmp_path / "derived"
    a = "id,qty,label\n" + "\n".join(f"{i},{-1 if i == 7 else i},a{i}" for i in range(1, 31)) + "\n"
    b = "id,qty,label\n" + "\n".join(f"{i},{i},{'toolong' if i == 40 else f'b{i}'}" for i in [*range(31, 61), 5]) + "\n"
    write_files(root, {"headrace.toml": 'name = "derived"\n', "pipelines/p.py": DERIVED,
                       "data/a/a.csv": a, "data/b/b.csv": b})
    _both(root)
    assert len(calls) == 1
    files, parallelism, done = calls[0]
    assert len(file_groups(files, parallelism)) == 2  # the result's files, validated by two tasks
    assert (done.rows, done.quarantined) == (61, 4)
    lake = root / "lake-spark"
    assert _digest(lake, "silver.items")[1] == 57
    quarantine = _digest(lake, "silver.items__quarantine")
    assert quarantine[1] == 4 and quarantine[3]["source_line"] == 4
    import duckdb

    from headrace.delta.catalog import Lake

    con = duckdb.connect()
    con.register("q", Lake(lake).snapshot("silver.items__quarantine").dataset())
    reasons = con.sql("SELECT json_extract_string(raw_record, '$.id')::INT, list_sort(list_transform(errors, "
                      "lambda v: v.rule)) FROM q ORDER BY ALL").fetchall()
    assert reasons == [(5, ["key"]), (5, ["key"]), (7, ["min"]), (40, ["max_length"])]


PARQUET = '''
import headrace as hr

@hr.table("bronze.sales", source=hr.files("data/sales/*.parquet", format="parquet"), write="append",
          contract=hr.Contract({"id": hr.Int64(key=True), "amount": hr.Decimal(10, 2, min=0),
                                "label": hr.String(max_length=6)},
                               on_violation="quarantine", max_quarantine_ratio=0.5))
def sales(raw):
    return raw
'''


@pytest.mark.spark
@pytest.mark.slow
def test_parquet_source_contract_is_validated_in_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parquet files with different columns and types (read as one batch would: the union of
    columns, each in its type over the batch), a key in two groups, a negative amount and a
    too-long label: tables and quarantine (file and row number included) equal DuckDB's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from test_spark_engine import SPARK, _both, _digest

    calls = _spied(monkeypatch, "validate_parquet_source_on_spark", 3)
    monkeypatch.setitem(SPARK, "spark.local_threshold", 0)
    root = tmp_path / "parquet"
    write_files(root, {"headrace.toml": 'name = "pq"\n', "pipelines/p.py": PARQUET})
    folder = root / "data" / "sales"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": pa.array(range(1, 21), pa.int64()),
                             "amount": [-1.0 if i == 3 else i * 1.5 for i in range(1, 21)],
                             "label": [f"a{i}" for i in range(1, 21)]}), folder / "p1.parquet")
    pq.write_table(pa.table({"id": pa.array(range(21, 41), pa.int32()),
                             "amount": [float(i) for i in range(21, 41)]}), folder / "p2.parquet")
    pq.write_table(pa.table({"id": pa.array([*range(41, 51), 5], pa.int64()),
                             "amount": pa.array([float(i) for i in [*range(41, 51), 5]], pa.float32()),
                             "label": ["toolong!" if i == 45 else f"c{i}" for i in [*range(41, 51), 5]]}),
                     folder / "p3.parquet")
    _both(root)  # same tables and quarantine (file, line, raw record, reasons), one commit each
    assert len(calls) == 1
    files, parallelism, done = calls[0]
    assert len(file_groups(sorted(files), parallelism)) == 2
    assert (done.rows, done.quarantined) == (51, 4)
    lake = root / "lake-spark"
    assert _digest(lake, "bronze.sales")[1] == 47
    import duckdb

    from headrace.delta.catalog import Lake

    con = duckdb.connect()
    con.register("q", Lake(lake).snapshot("bronze.sales__quarantine").dataset())
    rows = con.sql("SELECT regexp_extract(source_file, 'p[0-9]'), source_line, "
                   "list_sort(list_transform(errors, lambda v: v.rule)) FROM q ORDER BY ALL").fetchall()
    assert rows == [("p1", 3, ["min"]), ("p1", 5, ["key"]), ("p3", 5, ["max_length"]), ("p3", 11, ["key"])]
