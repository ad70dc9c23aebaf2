"""Schema evolution per table: evolve adds columns (one commit), freeze refuses, discard drops;
a type change is never applied silently."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable

from conftest import read_table, run_project, table_version, write_files


def _pipe(mode: str, policy: str) -> str:
    extra = ', partition_by="d"' if mode == "overwrite_partitions" else (', keys=["id"]' if mode == "merge" else "")
    return f'''
import headrace as hr
src = hr.files("data/*.csv", format="csv")

@hr.table("bronze.t", source=src, write="{mode}", schema="{policy}"{extra})
def t(raw):
    return raw
'''


@pytest.mark.parametrize("mode", ["append", "overwrite_partitions", "merge"])
def test_evolve_adds_new_columns_in_one_commit(make_project, mode):
    root = make_project({"pipelines/p.py": _pipe(mode, "evolve"), "data/a.csv": "id,d,v\n1,2026-01-01,x\n"})
    assert run_project(root).status == "success"
    # append: a new file (a changed appended file is refused); other modes: the file changes
    name = "data/b.csv" if mode == "append" else "data/a.csv"
    write_files(root, {name: "id,d,v,extra\n2,2026-01-02,y,new\n"})
    result = run_project(root)
    assert result.status == "success", result.tasks[0].error
    assert table_version(root, "bronze.t") == 1
    dt = DeltaTable(str(root / "lake/bronze/t"))
    assert "extra" in [f.name for f in dt.schema().fields]
    rows = {r["id"]: r for r in read_table(root, "bronze.t")}
    assert rows[2]["extra"] == "new"
    assert rows.get(1, {"extra": None})["extra"] is None


def test_evolve_fills_missing_columns_with_null(make_project):
    root = make_project({"pipelines/p.py": _pipe("append", "evolve"), "data/a.csv": "id,d,v\n1,2026-01-01,x\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/b.csv": "id,d\n2,2026-01-02\n"})
    result = run_project(root)
    assert result.status == "success", result.tasks[0].error
    rows = sorted(read_table(root, "bronze.t"), key=lambda r: r["id"])
    assert [(r["id"], r["v"]) for r in rows] == [(1, "x"), (2, None)]


def test_freeze_refuses_new_columns(make_project):
    root = make_project({"pipelines/p.py": _pipe("append", "freeze"), "data/a.csv": "id,d,v\n1,2026-01-01,x\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/b.csv": "id,d,v,extra\n2,2026-01-02,y,new\n"})
    result = run_project(root)
    assert result.status == "failed"
    assert "new columns ['extra']" in result.tasks[0].error and "'freeze'" in (result.tasks[0].hint or "")
    assert table_version(root, "bronze.t") == 0
    assert len(list((root / "lake/bronze/t").rglob("*.parquet"))) == 1  # staged files removed


def test_discard_drops_new_columns(make_project):
    root = make_project({"pipelines/p.py": _pipe("append", "discard"), "data/a.csv": "id,d,v\n1,2026-01-01,x\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/b.csv": "id,d,v,extra\n2,2026-01-02,y,new\n"})
    assert run_project(root).status == "success"
    dt = DeltaTable(str(root / "lake/bronze/t"))
    assert [f.name for f in dt.schema().fields] == ["id", "d", "v"]
    assert sorted(r["id"] for r in read_table(root, "bronze.t")) == [1, 2]


def test_type_change_is_never_silent(make_project):
    root = make_project({"pipelines/p.py": _pipe("append", "evolve"), "data/a.csv": "id,d,v\n1,2026-01-01,10\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/b.csv": "id,d,v\n2,2026-01-02,ten\n"})
    result = run_project(root)
    assert result.status == "failed"
    assert "changed types" in result.tasks[0].error and "v int64 -> string" in result.tasks[0].error
    assert table_version(root, "bronze.t") == 0


def test_overwrite_replaces_the_schema(make_project):
    root = make_project({"pipelines/p.py": _pipe("overwrite", "freeze"), "data/a.csv": "id,d,v\n1,2026-01-01,10\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/a.csv": "id,w\n2,x\n"})
    assert run_project(root).status == "success"
    assert read_table(root, "bronze.t") == [{"id": 2, "w": "x"}]
