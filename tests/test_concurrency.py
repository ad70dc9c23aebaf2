"""Two `headrace run` processes started at once on one project: no duplicated or lost rows,
a clear outcome for each, one commit per table. Also with the PostgreSQL state store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from deltalake import DeltaTable

from conftest import BASE_TOML, read_table, require_pg

PIPE = '''
import time
import headrace as hr
events = hr.files("data/events/*.csv", format="csv")
orders = hr.files("data/orders/*.ndjson", format="ndjson")

@hr.table("bronze.events", source=events, write="append")
def ev(raw):
    time.sleep(0.5)   # widen the window in which both runs are inside the table
    return raw

@hr.table("bronze.orders", source=orders, write="overwrite_partitions", partition_by="day")
def od(raw):
    time.sleep(0.5)
    return raw

@hr.table("silver.customers", inputs={"o": "bronze.orders"}, write="merge", keys=["customer"])
def cu(o):
    return "select customer, count(*) as n from o group by customer"
'''


def _files() -> dict[str, str]:
    files = {"pipelines/p.py": PIPE}
    for f in range(3):
        files[f"data/events/e{f}.csv"] = "id,kind\n" + "".join(f"{f * 100 + i},k{i % 3}\n" for i in range(100))
    for d in range(1, 4):
        files[f"data/orders/o{d}.ndjson"] = "".join(
            json.dumps({"id": d * 1000 + i, "day": f"2026-03-0{d}", "customer": i % 7}) + "\n" for i in range(50)
        )
    return files


def _start(root, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "headrace", "--project", str(root), "run", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )


def _run_twice_at_once(root) -> list[dict]:
    procs = [_start(root), _start(root)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, (out, err)
        results.append(json.loads(out))
    return results


def _check_lake(root, results) -> None:
    assert sorted(r["id"] for r in read_table(root, "bronze.events")) == list(range(300))
    assert sorted(r["id"] for r in read_table(root, "bronze.orders")) == sorted(
        d * 1000 + i for d in range(1, 4) for i in range(50))
    assert sorted((r["customer"], r["n"]) for r in read_table(root, "silver.customers")) == [
        (c, sum(1 for i in range(50) if i % 7 == c) * 3) for c in range(7)]
    for table in ("bronze/events", "bronze/orders", "silver/customers"):
        assert DeltaTable(str(root / "lake" / table)).version() == 0, table
    # each table: exactly one run wrote it, the other found it up to date
    for name in ("bronze.events", "bronze.orders", "silver.customers"):
        statuses = sorted(next(t["status"] for t in r["tables"] if t["table"] == name) for r in results)
        assert statuses == ["success", "unchanged"], (name, statuses)


@pytest.mark.slow
def test_two_runs_at_once_sqlite(make_project):
    root = make_project(_files())
    _check_lake(root, _run_twice_at_once(root))


@pytest.mark.slow
@pytest.mark.postgres
def test_two_runs_at_once_postgres_state(make_project):
    import psycopg

    url = require_pg()
    db = f"headrace_conc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {db}")
    try:
        db_url = url.rsplit("/", 1)[0] + "/" + db
        toml = BASE_TOML.replace('state = "sqlite:///.headrace/state.db"', 'state = "${HR_TEST_STATE}"')
        root = make_project(_files(), toml=toml)
        os.environ["HR_TEST_STATE"] = db_url
        try:
            results = _run_twice_at_once(root)
        finally:
            del os.environ["HR_TEST_STATE"]
        _check_lake(root, results)
        with psycopg.connect(db_url) as con:
            runs = con.execute("SELECT status FROM headrace_runs").fetchall()
            assert sorted(r[0] for r in runs) == ["success", "success"]
            rows = con.execute("SELECT table_name, status FROM headrace_tasks ORDER BY 1, 2").fetchall() \
                if _has_column(con, "headrace_tasks", "table_name") else \
                con.execute("SELECT \"table\", status FROM headrace_tasks ORDER BY 1, 2").fetchall()
            assert len(rows) == 6
    finally:
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _has_column(con, table: str, column: str) -> bool:
    return con.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s", (table, column)
    ).fetchone() is not None
