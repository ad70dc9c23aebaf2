"""Incremental loads from real databases through `headrace run`: only new rows are read, the
watermark is committed with the data, a failed run does not move it."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from deltalake import DeltaTable

from conftest import read_table, require_pg, run_project, table_version, write_files

PIPE = '''
import headrace as hr
src = hr.database("{url}", table="{table}", cursor="updated_at", lookback="{lookback}")

@hr.table("bronze.customers", source=src, write="merge", keys=["id"])
def customers(raw, ctx):
    import os
    if os.path.exists(ctx.project_root / "fail.flag"):
        raise ValueError("transform broke")
    return raw
'''


@pytest.fixture
def pg_table():
    import psycopg

    url = require_pg()
    name = f"hr_inc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"CREATE TABLE {name} (id int primary key, name text, updated_at timestamp)")
        con.execute(f"INSERT INTO {name} VALUES (1, 'ann', '2026-01-01 10:00'), (2, 'bob', '2026-01-01 11:00')")
    yield url, name
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"DROP TABLE IF EXISTS {name}")


def _pg(url, sql):
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        con.execute(sql)


@pytest.mark.postgres
def test_postgres_incremental_merge_with_watermark(make_project, pg_table):
    url, name = pg_table
    root = make_project({"pipelines/p.py": PIPE.format(url=url, table=name, lookback="0s")})
    first = run_project(root)
    assert first.status == "success", first.tasks[0].error
    assert first.tasks[0].rows_in == 2
    dt = DeltaTable(str(root / "lake/bronze/customers"))
    assert '"2026-01-01T11:00:00"' in dt.history(1)[0]["headrace.cursor.raw"]
    again = run_project(root)
    assert again.tasks[0].status == "unchanged" and "no new rows" in again.tasks[0].message
    _pg(url, f"UPDATE {name} SET name = 'bobby', updated_at = '2026-01-02 09:00' WHERE id = 2")
    _pg(url, f"INSERT INTO {name} VALUES (3, 'cy', '2026-01-02 10:00')")
    third = run_project(root)
    assert third.status == "success" and third.tasks[0].rows_in == 2  # only the changed rows were read
    rows = sorted((r["id"], r["name"]) for r in read_table(root, "bronze.customers"))
    assert rows == [(1, "ann"), (2, "bobby"), (3, "cy")]
    # a failing run does not move the watermark: the next good run reads the same rows
    _pg(url, f"INSERT INTO {name} VALUES (4, 'dee', '2026-01-03 10:00')")
    write_files(root, {"fail.flag": "1"})
    version = table_version(root, "bronze.customers")
    assert run_project(root).status == "failed"
    assert table_version(root, "bronze.customers") == version
    (root / "fail.flag").unlink()
    fixed = run_project(root)
    assert fixed.status == "success" and fixed.tasks[0].rows_in == 1
    assert sorted(r["id"] for r in read_table(root, "bronze.customers")) == [1, 2, 3, 4]


@pytest.mark.postgres
def test_cursor_going_backwards_is_an_error(make_project, pg_table):
    url, name = pg_table
    root = make_project({"pipelines/p.py": PIPE.format(url=url, table=name, lookback="0s")})
    assert run_project(root).status == "success"
    _pg(url, f"UPDATE {name} SET updated_at = '2025-01-01 00:00'")
    _pg(url, f"INSERT INTO {name} VALUES (9, 'zed', '2025-06-01 00:00')")
    # nothing is newer than the watermark: no rows, nothing to do
    assert run_project(root).tasks[0].status == "unchanged"


def test_sqlite_source_and_database_down(make_project, tmp_path):
    db = tmp_path / "src.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE c (id INTEGER, name TEXT, updated_at TEXT)")
    con.executemany("INSERT INTO c VALUES (?, ?, ?)", [(1, "a", "2026-01-01 00:00:00"), (2, "b", "2026-01-02 00:00:00")])
    con.commit()
    con.close()
    root = make_project({"pipelines/p.py": PIPE.format(url=f"sqlite:///{db}", table="c", lookback="0s")})
    result = run_project(root)
    assert result.status == "success", result.tasks[0].error
    assert sorted(r["id"] for r in read_table(root, "bronze.customers")) == [1, 2]
    down = make_project({"pipelines/p.py": PIPE.format(url="postgresql://postgres:pw@127.0.0.1:1/x", table="t",
                                                         lookback="0s")}, name="down")
    failed = run_project(down)
    t = failed.tasks[0]
    assert t.status == "failed" and t.attempts == 3  # transient: retried, then a clear error
    assert "127.0.0.1:1" in t.error and "pw" not in t.error
    assert not (down / "lake/bronze/customers/_delta_log").exists()


def test_dag_and_show_with_a_database_source(make_project, tmp_path):
    """`headrace dag` renders a database input (it has no path) with its masked URL."""
    import json

    from conftest import cli

    db = tmp_path / "d.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE c (id INTEGER, name TEXT, updated_at TEXT)")
    con.commit()
    con.close()
    root = make_project({"pipelines/p.py": PIPE.format(url=f"sqlite:///{db}", table="c", lookback="0s")})
    proc = cli(root, "dag")
    assert proc.returncode == 0, proc.stderr
    assert "bronze.customers" in proc.stdout and "database:" in proc.stdout and "c at sqlite" in proc.stdout
    data = json.loads(cli(root, "dag", "--json").stdout)
    assert "sqlite" in next(iter(data[0]["sources"].values()))
