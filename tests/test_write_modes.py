"""Every write mode on real DuckDB + Delta: contents, versions, and idempotent re-runs."""

from __future__ import annotations

import json
from pathlib import Path

from deltalake import DeltaTable

from conftest import read_table, run_project, table_version, write_files

PIPE_APPEND = '''
import headrace as hr
events = hr.files("data/events/*.csv", format="csv")

@hr.table("bronze.events", source=events, write="append")
def events_t(raw):
    return raw
'''


def test_append_is_idempotent_per_input_batch(make_project):
    root = make_project({
        "pipelines/p.py": PIPE_APPEND,
        "data/events/a.csv": "id,v\n1,a\n2,b\n",
    })
    r1 = run_project(root)
    assert r1.status == "success"
    assert [t.status for t in r1.tasks] == ["success"]
    assert table_version(root, "bronze.events") == 0
    r2 = run_project(root)
    assert [t.status for t in r2.tasks] == ["unchanged"]
    assert table_version(root, "bronze.events") == 0
    assert len(read_table(root, "bronze.events")) == 2
    # a new file is appended alone: files already appended are never read again
    write_files(root, {"data/events/b.csv": "id,v\n3,c\n"})
    r3 = run_project(root)
    assert r3.tasks[0].status == "success" and r3.tasks[0].rows_out == 1
    assert table_version(root, "bronze.events") == 1
    assert sorted(r["id"] for r in read_table(root, "bronze.events")) == [1, 2, 3]
    r4 = run_project(root)
    assert r4.tasks[0].status == "unchanged"
    assert table_version(root, "bronze.events") == 1
    # a file that changed after it was appended is refused: appending it again would duplicate
    # the rows it already added; a full refresh rebuilds the table from the current files
    write_files(root, {"data/events/a.csv": "id,v\n1,a\n2,b\n4,d\n"})
    r5 = run_project(root)
    assert r5.status == "failed" and "already-appended file(s) changed" in r5.tasks[0].error
    assert "data/events/a.csv" in r5.tasks[0].error and "--full-refresh" in (r5.tasks[0].hint or "")
    assert table_version(root, "bronze.events") == 1
    r6 = run_project(root, full_refresh=True)
    assert r6.status == "success"
    assert sorted(r["id"] for r in read_table(root, "bronze.events")) == [1, 2, 3, 4]
    assert run_project(root).tasks[0].status == "unchanged"
    write_files(root, {"data/events/c.csv": "id,v\n5,e\n"})  # after a refresh, appends go on
    assert run_project(root).tasks[0].rows_out == 1
    assert sorted(r["id"] for r in read_table(root, "bronze.events")) == [1, 2, 3, 4, 5]


def test_append_app_transaction_recorded_in_delta_log(make_project):
    root = make_project({"pipelines/p.py": PIPE_APPEND, "data/events/a.csv": "id,v\n1,a\n"})
    run_project(root)
    dt = DeltaTable(str(root / "lake/bronze/events"))
    meta = dt.history(1)[0]
    assert meta["headrace.mode"] == "append"
    from headrace.delta.writer import append_app_id
    from headrace.sources.batches import file_digest

    digest = file_digest(root / "data/events/a.csv")
    assert dt.transaction_version(append_app_id("bronze.events", f"file:data/events/a.csv:{digest}")) == 1
    assert dt.transaction_version(append_app_id("bronze.events", "file:data/events/a.csv:other")) is None


PIPE_OVERWRITE = '''
import headrace as hr
src = hr.files("data/items.csv", format="csv")

@hr.table("bronze.items", source=src, write="overwrite")
def items(raw):
    return raw.filter("qty > 0")
'''


def test_overwrite_replaces_and_reruns_change_nothing(make_project):
    root = make_project({"pipelines/p.py": PIPE_OVERWRITE, "data/items.csv": "id,qty\n1,5\n2,0\n3,7\n"})
    assert run_project(root).status == "success"
    assert sorted(r["id"] for r in read_table(root, "bronze.items")) == [1, 3]
    assert table_version(root, "bronze.items") == 0
    r = run_project(root)
    assert r.tasks[0].status == "unchanged"
    assert table_version(root, "bronze.items") == 0
    write_files(root, {"data/items.csv": "id,qty\n9,1\n"})
    r = run_project(root)
    assert r.tasks[0].status == "success" and r.tasks[0].version == 1
    assert read_table(root, "bronze.items") == [{"id": 9, "qty": 1}]


def _orders_file(day: str, ids: list[int], amount: float) -> str:
    return "".join(json.dumps({"order_id": i, "order_ts": f"{day}T10:00:00", "amount": amount}) + "\n" for i in ids)


PIPE_PARTITIONS = '''
import headrace as hr
landing = hr.files("landing/*.ndjson", format="ndjson")

@hr.table("bronze.orders", source=landing, write="overwrite_partitions", partition_by="order_date")
def orders(raw):
    return raw.select("order_id, amount, CAST(order_ts AS DATE) AS order_date")
'''


def _files_by_partition(root: Path) -> dict[str, set[str]]:
    dt = DeltaTable(str(root / "lake/bronze/orders"))
    out: dict[str, set[str]] = {}
    for path in dt.file_uris():
        part = Path(path).parent.name
        out.setdefault(part, set()).add(Path(path).name)
    return out


def test_overwrite_partitions_replaces_only_touched_partitions(make_project):
    root = make_project({
        "pipelines/p.py": PIPE_PARTITIONS,
        "landing/d1.ndjson": _orders_file("2026-01-01", [1, 2], 10.0),
        "landing/d2.ndjson": _orders_file("2026-01-02", [3, 4, 5], 20.0),
        "landing/d3.ndjson": _orders_file("2026-01-03", [6], 30.0),
    })
    assert run_project(root).status == "success"
    before = _files_by_partition(root)
    assert set(before) == {"order_date=2026-01-01", "order_date=2026-01-02", "order_date=2026-01-03"}
    # landing now holds only a corrected day 2
    for f in ("d1", "d2", "d3"):
        (root / "landing" / f"{f}.ndjson").unlink()
    write_files(root, {"landing/d2.ndjson": _orders_file("2026-01-02", [3, 4], 25.0)})
    r = run_project(root)
    assert r.tasks[0].status == "success" and r.tasks[0].version == 1
    after = _files_by_partition(root)
    assert after["order_date=2026-01-01"] == before["order_date=2026-01-01"]
    assert after["order_date=2026-01-03"] == before["order_date=2026-01-03"]
    assert after["order_date=2026-01-02"].isdisjoint(before["order_date=2026-01-02"])
    rows = read_table(root, "bronze.orders", order_by="order_id")
    assert [(r["order_id"], r["amount"]) for r in rows] == [(1, 10.0), (2, 10.0), (3, 25.0), (4, 25.0), (6, 30.0)]
    # one commit for the run, and the re-run is a no-op
    dt = DeltaTable(str(root / "lake/bronze/orders"))
    assert dt.history(1)[0]["operation"] == "WRITE"
    r = run_project(root)
    assert r.tasks[0].status == "unchanged" and table_version(root, "bronze.orders") == 1


def test_overwrite_partitions_with_null_and_string_partitions(make_project):
    pipe = '''
import headrace as hr
src = hr.files("data/x.csv", format="csv")

@hr.table("bronze.x", source=src, write="overwrite_partitions", partition_by=["region"])
def x(raw):
    return raw
'''
    root = make_project({"pipelines/p.py": pipe, "data/x.csv": "id,region\n1,eu\n2,\n3,o'hare\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/x.csv": "id,region\n4,\n5,o'hare\n"})
    r = run_project(root)
    assert r.status == "success", r.tasks[0].error
    rows = read_table(root, "bronze.x", order_by="id")
    assert [(r["id"], r["region"]) for r in rows] == [(1, "eu"), (4, None), (5, "o'hare")]


PIPE_MERGE = '''
import headrace as hr
src = hr.files("data/customers.csv", format="csv")

@hr.table("bronze.customers", source=src, write=hr.Merge(keys=["id"], delete_when="s.op = 'D'"))
def customers(raw):
    return raw
'''


def test_merge_upserts_deletes_and_is_idempotent(make_project):
    root = make_project({"pipelines/p.py": PIPE_MERGE,
                         "data/customers.csv": "id,name,op\n1,ann,U\n2,bob,U\n3,cy,U\n4,dee,D\n"})
    assert run_project(root).status == "success"
    assert [r["id"] for r in read_table(root, "bronze.customers", order_by="id")] == [1, 2, 3]
    write_files(root, {"data/customers.csv": "id,name,op\n2,bobby,U\n3,cy,D\n5,eve,U\n"})
    r = run_project(root)
    assert r.status == "success", r.tasks[0].error
    rows = read_table(root, "bronze.customers", order_by="id")
    assert [(x["id"], x["name"]) for x in rows] == [(1, "ann"), (2, "bobby"), (5, "eve")]
    v = table_version(root, "bronze.customers")
    assert v == 1
    r = run_project(root)
    assert r.tasks[0].status == "unchanged" and table_version(root, "bronze.customers") == v


def test_merge_rejects_duplicate_keys_and_publishes_nothing(make_project):
    root = make_project({"pipelines/p.py": PIPE_MERGE, "data/customers.csv": "id,name,op\n1,a,U\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/customers.csv": "id,name,op\n1,x,U\n1,y,U\n2,z,U\n"})
    r = run_project(root)
    assert r.status == "failed"
    assert "not unique" in r.tasks[0].error and "1 duplicated key" in r.tasks[0].error
    assert r.tasks[0].attempts == 1  # a data problem is not retried
    assert table_version(root, "bronze.customers") == 0
    assert [x["name"] for x in read_table(root, "bronze.customers")] == ["a"]


def test_every_mode_rerun_keeps_contents_and_version(make_project):
    """The same input twice: for every mode, identical rows and no new Delta version."""
    pipes = {
        "append": 'write="append"',
        "overwrite": 'write="overwrite"',
        "overwrite_partitions": 'write="overwrite_partitions", partition_by="d"',
        "merge": 'write="merge", keys=["id"]',
    }
    body = "import headrace as hr\nsrc = hr.files('data/r.csv', format='csv')\n"
    for mode, args in pipes.items():
        body += f"\n@hr.table('m.{mode}', source=src, {args})\ndef t_{mode}(raw):\n    return raw\n"
    root = make_project({"pipelines/p.py": body, "data/r.csv": "id,d,v\n1,2026-01-01,a\n2,2026-01-02,b\n"})
    first = run_project(root)
    assert first.status == "success"
    snap = {m: (table_version(root, f"m.{m}"), read_table(root, f"m.{m}", order_by="id")) for m in pipes}
    second = run_project(root)
    assert {t.status for t in second.tasks} == {"unchanged"}
    for m in pipes:
        assert (table_version(root, f"m.{m}"), read_table(root, f"m.{m}", order_by="id")) == snap[m], m


def test_full_refresh_rebuilds_an_append_table_once(make_project):
    root = make_project({"pipelines/p.py": PIPE_APPEND, "data/events/a.csv": "id,v\n1,a\n2,b\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/events/b.csv": "id,v\n3,c\n"})
    assert run_project(root).status == "success"
    assert len(read_table(root, "bronze.events")) == 3
    refreshed = run_project(root, full_refresh=True)
    assert refreshed.status == "success" and refreshed.tasks[0].operation == "overwrite"
    assert sorted(r["id"] for r in read_table(root, "bronze.events")) == [1, 2, 3]
    # every file is recorded as appended by the refresh: the next run appends nothing
    assert run_project(root).tasks[0].status == "unchanged"
    assert len(read_table(root, "bronze.events")) == 3


def test_filters_on_columns_without_min_max_stats_read_every_matching_row(make_project):
    """Regression: deltalake's own pyarrow dataset turned missing min/max stats into
    `column >= null`, so a pushed-down filter on a timestamp/decimal/float/bool column
    silently returned nothing. Reads must see every matching row."""
    pipe = '''
import headrace as hr
src = hr.files("data/x.csv", format="csv")

@hr.table("bronze.x", source=src, write="overwrite_partitions", partition_by="region")
def x(raw):
    return "select id, region, CAST(ts AS TIMESTAMP) AS ts, CAST(amount AS DECIMAL(12,2)) AS amount, f, flag from raw"

@hr.table("silver.late", inputs={"x": "bronze.x"})
def late(x):
    return "select id from x where ts >= TIMESTAMP '2026-01-02' and amount > 1.5 and f < 9.5 and flag"
'''
    root = make_project({"pipelines/p.py": pipe, "data/x.csv": (
        "id,region,ts,amount,f,flag\n1,eu,2026-01-01 00:00:00,1.00,1.5,true\n"
        "2,eu,2026-01-03 00:00:00,2.50,2.5,true\n3,us,2026-01-04 00:00:00,3.50,3.5,true\n"
        "4,,2026-01-05 00:00:00,4.50,4.5,false\n")})
    assert run_project(root).status == "success"
    assert sorted(r["id"] for r in read_table(root, "silver.late")) == [2, 3]
    from conftest import cli

    proc = cli(root, "query", "select count(*) as n from bronze.x where ts > TIMESTAMP '2026-01-02' and region is null",
               "--json")
    assert json.loads(proc.stdout)["rows"] == [{"n": 1}]
