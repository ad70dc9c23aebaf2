"""File-level incremental processing for overwrite_partitions and merge tables (real DuckDB +
Delta): only new and changed files are read; a partition overwrite rewrites exactly the
partitions they touch, recomputed from every file feeding them; the Delta log records which
files the table holds and which partitions they fed."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest
from deltalake import DeltaTable

from conftest import read_table, run_project, table_version, write_files

PIPE = '''
import headrace as hr
landing = hr.files("landing/*.ndjson", format="ndjson")

@hr.table("bronze.orders", source=landing, write="overwrite_partitions", partition_by="order_date")
def orders(raw):
    return raw.select("order_id, amount, CAST(order_ts AS DATE) AS order_date")

@hr.table("gold.daily", source=landing, write="overwrite_partitions", partition_by="order_date")
def daily(raw):
    return "select CAST(order_ts AS DATE) AS order_date, count(*) AS n, sum(amount) AS total from raw group by all"

@hr.table("bronze.latest", source=landing, write="merge", keys=["order_id"])
def latest(raw):
    return raw.select("order_id, amount")
'''

TABLES = ("bronze.orders", "gold.daily", "bronze.latest")


def _orders(day: str, ids: list[int], amount: float = 10.0) -> str:
    return "".join(json.dumps({"order_id": i, "order_ts": f"{day}T10:00:00", "amount": amount}) + "\n" for i in ids)


def _actions(root: Path, table: str, version: int) -> tuple[set[str], set[str]]:
    """The partitions a commit added files to and removed files from (from the Delta log)."""
    log = root / "lake" / table.replace(".", "/") / "_delta_log" / f"{version:020d}.json"
    added, removed = set(), set()
    for line in log.read_text().splitlines():
        action = json.loads(line)
        for kind, into in (("add", added), ("remove", removed)):
            if kind in action:
                into.add(",".join(f"{k}={v}" for k, v in sorted(action[kind]["partitionValues"].items())))
    return added, removed


def _state(root: Path, table: str) -> dict:
    history = DeltaTable(str(root / "lake" / table.replace(".", "/"))).history(1)[0]
    return json.loads(history["headrace.inputs"])


def _task(result, table: str):
    task = next(t for t in result.tasks if t.table == table)
    print(table, task.status, task.message)  # shown when a test fails
    return task


def _versions(root: Path) -> dict[str, int]:
    return {t: table_version(root, t) for t in TABLES}


def _daily(root: Path) -> dict[str, tuple[int, float]]:
    return {str(r["order_date"]): (r["n"], r["total"]) for r in read_table(root, "gold.daily")}


def _project(make_project):
    return make_project({
        "pipelines/p.py": PIPE,
        "landing/a.ndjson": _orders("2026-01-01", [1, 2]),
        "landing/b.ndjson": _orders("2026-01-02", [3, 4]),
    })


def test_new_changed_unchanged_and_removed_files(make_project):
    root = _project(make_project)
    first = run_project(root)
    assert first.status == "success", [t.error for t in first.tasks]
    assert _versions(root) == dict.fromkeys(TABLES, 0)
    state = _state(root, "bronze.orders")
    assert sorted(state["files"]) == ["landing/a.ndjson", "landing/b.ndjson"]
    assert state["groups"] == [[["2026-01-01"], ["2026-01-02"]]]  # read together: one group

    # a new file for a new day: only it is read, only its partition is written
    write_files(root, {"landing/c.ndjson": _orders("2026-01-03", [5], 30.0)})
    second = run_project(root)
    assert second.status == "success"
    assert _versions(root) == dict.fromkeys(TABLES, 1)  # one commit per table
    orders = _task(second, "bronze.orders")
    assert orders.rows_in == 1 and orders.rows_out == 1
    assert "incremental: 1 new, 0 changed, 0 removed, 2 unchanged of 3 file(s)" in orders.message
    assert _actions(root, "bronze.orders", 1) == ({"order_date=2026-01-03"}, set())
    assert _actions(root, "gold.daily", 1) == ({"order_date=2026-01-03"}, set())
    assert _task(second, "bronze.latest").rows_in == 1
    assert _daily(root) == {"2026-01-01": (2, 20.0), "2026-01-02": (2, 20.0), "2026-01-03": (1, 30.0)}

    # a new file for an existing day: that day is recomputed from every file feeding it (a and
    # b were read together, so both are read again), and only that day is rewritten
    write_files(root, {"landing/d.ndjson": _orders("2026-01-01", [6], 5.0)})
    third = run_project(root)
    assert third.status == "success"
    assert _versions(root) == dict.fromkeys(TABLES, 2)
    assert _actions(root, "bronze.orders", 2) == ({"order_date=2026-01-01"}, {"order_date=2026-01-01"})
    assert _actions(root, "gold.daily", 2) == ({"order_date=2026-01-01"}, {"order_date=2026-01-01"})
    assert _task(third, "bronze.orders").rows_in == 5  # a, b and d; not c
    assert _daily(root)["2026-01-01"] == (3, 25.0)  # the aggregate covers all files of the day
    # the day-2 rows computed on the way were never committed and are gone from disk
    day2 = root / "lake/bronze/orders/order_date=2026-01-02"
    committed = {Path(u).name for u in DeltaTable(str(root / "lake/bronze/orders")).file_uris()}
    assert {p.name for p in day2.iterdir()} <= committed
    assert _task(third, "bronze.latest").rows_in == 1  # a merge reads only the new file

    # a changed file: its old partition and the partitions of its new content are recomputed
    write_files(root, {"landing/c.ndjson": _orders("2026-01-03", [5], 33.0) + _orders("2026-01-04", [7], 40.0)})
    fourth = run_project(root)
    assert fourth.status == "success"
    assert _actions(root, "bronze.orders", 3) == ({"order_date=2026-01-03", "order_date=2026-01-04"},
                                                  {"order_date=2026-01-03"})
    assert _task(fourth, "bronze.orders").rows_in == 2  # c alone feeds days 3 and 4
    assert _daily(root) == {"2026-01-01": (3, 25.0), "2026-01-02": (2, 20.0), "2026-01-03": (1, 33.0),
                            "2026-01-04": (1, 40.0)}
    latest = {r["order_id"]: r["amount"] for r in read_table(root, "bronze.latest")}
    assert latest == {1: 10.0, 2: 10.0, 3: 10.0, 4: 10.0, 5: 33.0, 6: 5.0, 7: 40.0}

    # unchanged inputs: no commit anywhere
    fifth = run_project(root)
    assert {t.status for t in fifth.tasks} == {"unchanged"}
    assert _versions(root) == dict.fromkeys(TABLES, 3)

    # a removed file: its rows leave the partitions other files still feed
    (root / "landing/d.ndjson").unlink()
    sixth = run_project(root)
    assert sixth.status == "success"
    assert _actions(root, "bronze.orders", 4) == ({"order_date=2026-01-01"}, {"order_date=2026-01-01"})
    assert sorted(r["order_id"] for r in read_table(root, "bronze.orders")) == [1, 2, 3, 4, 5, 7]
    assert _daily(root)["2026-01-01"] == (2, 20.0)
    assert "landing/d.ndjson" not in _state(root, "bronze.orders")["files"]
    # a merge cannot tell which rows a file brought: they stay, and the run says so
    assert _task(sixth, "bronze.latest").status == "unchanged"
    assert "rows merged from removed file(s) are kept (landing/d.ndjson)" in _task(sixth, "bronze.latest").message
    assert 6 in {r["order_id"] for r in read_table(root, "bronze.latest")}


def test_removed_file_alone_in_its_partitions_is_reported_and_full_refresh_drops_it(make_project):
    root = _project(make_project)
    assert run_project(root).status == "success"
    write_files(root, {"landing/c.ndjson": _orders("2026-01-03", [5])})
    assert run_project(root).status == "success"
    (root / "landing/c.ndjson").unlink()
    result = run_project(root, "bronze.orders")
    task = result.tasks[0]
    # as a recompute from all files would: a partition nothing produces any more is left as it
    # is (a landing folder may be cleared after loading), and the run says so
    assert task.status == "unchanged"
    assert "kept 1 partition(s) as they were" in task.message and "order_date=2026-01-03" in task.message
    assert table_version(root, "bronze.orders") == 1
    refreshed = run_project(root, "bronze.orders", full_refresh=True)
    assert refreshed.status == "success" and refreshed.tasks[0].operation == "overwrite"
    assert sorted(r["order_id"] for r in read_table(root, "bronze.orders")) == [1, 2, 3, 4]
    assert sorted(_state(root, "bronze.orders")["files"]) == ["landing/a.ndjson", "landing/b.ndjson"]
    assert run_project(root, "bronze.orders").tasks[0].status == "unchanged"


def test_changed_definition_and_force_recompute_from_all_files(make_project):
    root = _project(make_project)
    assert run_project(root).status == "success"
    write_files(root, {"pipelines/p.py": PIPE.replace("sum(amount) AS total", "sum(amount) * 2 AS total"),
                       "landing/c.ndjson": _orders("2026-01-03", [5])})
    result = run_project(root, "gold.daily")
    task = result.tasks[0]
    assert task.status == "success" and task.rows_in == 5
    assert "recomputed from all files: the table's definition changed" in task.message
    assert _daily(root) == {"2026-01-01": (2, 40.0), "2026-01-02": (2, 40.0), "2026-01-03": (1, 20.0)}
    forced = run_project(root, "gold.daily", force=True)
    assert forced.tasks[0].status == "success" and forced.tasks[0].rows_in == 5


def test_unchanged_files_are_not_read_again(make_project, monkeypatch):
    """A file whose size and modification time match the record keeps its digest: it is not
    hashed again (files modified within 2 s of being listed are always hashed again)."""
    root = _project(make_project)
    old = 1_700_000_000
    for name in ("a", "b"):
        os.utime(root / f"landing/{name}.ndjson", (old, old))
    assert run_project(root, "bronze.orders").status == "success"
    import headrace.sources.files as files

    hashed: list[str] = []
    real = files.file_digest
    monkeypatch.setattr(files, "file_digest", lambda p: hashed.append(p.name) or real(p))
    write_files(root, {"landing/c.ndjson": _orders("2026-01-03", [5])})
    assert run_project(root, "bronze.orders").tasks[0].rows_in == 1
    assert hashed == ["c.ndjson"]
    # a rewrite changes the modification time: the file is hashed and reprocessed
    write_files(root, {"landing/a.ndjson": _orders("2026-01-01", [1, 2], 11.0)})
    hashed.clear()
    result = run_project(root, "bronze.orders")
    assert "a.ndjson" in hashed and "b.ndjson" not in hashed
    assert "1 changed" in result.tasks[0].message


CONTRACT_PIPE = '''
import headrace as hr
landing = hr.files("landing/*.ndjson", format="ndjson")

@hr.table("bronze.orders", source=landing, write="overwrite_partitions", partition_by="order_date",
          contract=hr.Contract({"order_id": hr.Int64(), "amount": hr.Decimal(12, 2, min=0),
                                "order_ts": hr.Timestamp()}, on_violation="quarantine"))
def orders(raw):
    return raw.select("order_id, amount, CAST(order_ts AS DATE) AS order_date")
'''


def test_rejects_are_quarantined_once_per_file(make_project):
    bad = json.dumps({"order_id": 99, "order_ts": "2026-01-01T09:00:00", "amount": -1}) + "\n"
    root = make_project({"pipelines/p.py": CONTRACT_PIPE,
                         "landing/a.ndjson": _orders("2026-01-01", [1, 2]) + bad})
    first = run_project(root)
    assert first.status == "success" and first.tasks[0].rows_quarantined == 1
    # b feeds a's day: a is validated again to recompute the day, its reject is not kept twice
    write_files(root, {"landing/b.ndjson": _orders("2026-01-01", [3]) + bad.replace("99", "98")})
    second = run_project(root)
    assert second.status == "success", second.tasks[0].error
    assert sorted(r["order_id"] for r in read_table(root, "bronze.orders")) == [1, 2, 3]
    rejects = read_table(root, "bronze.orders__quarantine")
    assert sorted(json.loads(r["raw_record"])["order_id"] for r in rejects) == [98, 99]


@pytest.mark.parametrize("logical", [True, False])
def test_backfill_dates_read_all_files(make_project, logical):
    """A logical date changes what the transform does with the same files: such runs read
    every file and record no file state, so the next plain run recomputes from all files."""
    pipe = PIPE.replace('def daily(raw):\n    return "select', 'def daily(raw, ctx):\n    return "select')
    root = make_project({"pipelines/p.py": pipe, "landing/a.ndjson": _orders("2026-01-01", [1])})
    kw = {"logical_date": dt.date(2026, 1, 1)} if logical else {}
    result = run_project(root, "gold.daily", **kw)
    assert result.status == "success", result.tasks[0].error
    history = DeltaTable(str(root / "lake/gold/daily")).history(1)[0]
    assert ("headrace.inputs" in history) is not logical


def test_file_state_plan_and_advance():
    """Pure logic: the plan against the record, provenance groups, and size+mtime trust."""
    from headrace.sources.batches import (
        FileEntry,
        FileState,
        ProcessedFile,
        advance_state,
        plan_files,
    )

    now = 10_000_000_000_000
    old = now - 60_000_000_000

    def entry(name: str, digest: str, mtime: int = old) -> FileEntry:
        return FileEntry(path=Path(name), size=1, mtime_ns=mtime, digest=digest)

    state = FileState(key="raw", config="c1", files={
        "a": ProcessedFile("da", 1, old, 0), "b": ProcessedFile("db", 1, -1, 0), "c": ProcessedFile("dc", 1, old, 1),
    }, groups=(frozenset({("1",), ("2",)}), frozenset({("3",)})))
    assert FileState.loads(state.dumps()) == state
    assert FileState.loads('{"v": 99}') is None and FileState.loads("not json") is None
    assert state.known() == {"a": (1, old, "da"), "c": (1, old, "dc")}  # b's mtime is not trusted
    assert state.partitions_of(["c"]) == {("3",)} and state.feeding(["a", "b", "c"], {("2",)}) == ["a", "b"]

    plan = plan_files(state, [entry("a", "da"), entry("b", "db2"), entry("d", "dd", mtime=now)], str)
    assert ([e.path.name for e in plan.new], [e.path.name for e in plan.changed],
            [e.path.name for e in plan.unchanged], plan.removed) == (["d"], ["b"], ["a"], ("c",))
    after = advance_state(state, plan, str, config="c1", listed_at_ns=now, produced={("2",), ("4",)},
                          unfed={("1",)})
    # c's group is gone with c; b and d form a new group; ("1",) is fed by nobody now
    assert after.groups == (frozenset({("2",)}), frozenset({("2",), ("4",)}))
    assert after.files == {"a": ProcessedFile("da", 1, old, 0), "b": ProcessedFile("db2", 1, old, 1),
                           "d": ProcessedFile("dd", 1, -1, 1)}  # d changed just before listing: racy
