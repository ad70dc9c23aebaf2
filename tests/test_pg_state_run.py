"""A whole run, failure and `retry RUN_ID` with the state store on the real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from conftest import BASE_TOML, open_ws, read_table, require_pg, write_files
from test_runner import BROKEN


@pytest.fixture
def pg_db_url():
    import psycopg

    url = require_pg()
    db = f"headrace_run_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"CREATE DATABASE {db}")
    yield url.rsplit("/", 1)[0] + "/" + db
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.mark.postgres
def test_run_and_retry_with_postgres_state(make_project, pg_db_url):
    toml = BASE_TOML.replace('state = "sqlite:///.headrace/state.db"', f'state = "{pg_db_url}"')
    root = make_project({"pipelines/p.py": BROKEN, "data/a.csv": "x\n1\n2\n", "data/b.csv": "x,y\n1,10\n2,20\n"},
                        toml=toml)
    ws = open_ws(root)
    assert ws.store.dialect == "postgresql"
    first = ws.run([])
    assert first.status == "failed"
    tasks = {t.table: t for t in ws.store.tasks(first.run_id)}
    assert tasks["bronze.bad"].status == "failed" and tasks["bronze.bad"].error_kind == "ValueError"
    assert tasks["silver.joined"].status == "skipped"
    assert tasks["bronze.good"].rows_out == 2 and tasks["bronze.good"].delta_version == 0
    write_files(root, {"fixed.flag": "1"})
    second = ws.retry(first.run_id)
    assert second.status == "success"
    assert ws.store.get_run(second.run_id).parent_run_id == first.run_id
    assert [r.run_id for r in ws.store.list_runs(2)] == [second.run_id, first.run_id]
    assert ws.store.writes_by_version("gold.final") == {0: second.run_id}
    ws.close()
    assert len(read_table(root, "gold.final")) == 2
