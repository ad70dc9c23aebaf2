"""MariaDB incremental loads through `headrace run`: the first run loads every row, the next
only the rows past the watermark committed with the data, a run with nothing new commits nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from deltalake import DeltaTable

from test_db_sources import require_mariadb

from conftest import read_table, run_project, table_version

PIPE = '''
import headrace as hr
src = hr.database("{url}", table="{table}", cursor="updated_at", chunk_rows=2)

@hr.table("bronze.orders", source=src, write="{write}"{keys})
def orders(raw):
    return raw
'''


@pytest.fixture
def maria_table() -> Iterator[tuple[str, str, object]]:
    import pymysql

    from headrace.sources.database import _my_connect_args

    url = require_mariadb()
    name = f"hr_inc_{uuid.uuid4().hex[:8]}"
    con = pymysql.connect(**_my_connect_args(url), autocommit=True, init_command="SET time_zone = '+00:00'")

    def execute(sql: str, rows: list[tuple] | None = None) -> None:
        with con.cursor() as cur:
            if rows is None:
                cur.execute(sql)
            else:
                cur.executemany(sql, rows)

    execute(f"CREATE TABLE {name} (id bigint PRIMARY KEY, item varchar(40), amount decimal(12,2), "
            "updated_at datetime(6))")
    execute(f"INSERT INTO {name} VALUES (%s, %s, %s, %s)",
            [(i, f"item-{i}", f"{i}.50", f"2026-01-01 10:00:0{i}") for i in range(1, 6)])
    try:
        yield url, name, execute
    finally:
        execute(f"DROP TABLE IF EXISTS {name}")
        con.close()


def _project(make_project, url: str, table: str, *, write: str = "append", keys: str = ""):
    return make_project({"pipelines/p.py": PIPE.format(url=url, table=table, write=write, keys=keys)})


def _watermark(root) -> dict:
    """The watermark the newest commit carries, as written: {"type": ..., "value": ...}."""
    return json.loads(DeltaTable(str(root / "lake/bronze/orders")).history(1)[0]["headrace.cursor.raw"])


def test_mariadb_append_loads_only_new_rows(make_project, maria_table):
    url, name, execute = maria_table
    root = _project(make_project, url, name)

    first = run_project(root)
    assert first.status == "success", first.tasks[0].error
    assert first.tasks[0].rows_in == 5 and first.tasks[0].rows_out == 5
    assert sorted(r["id"] for r in read_table(root, "bronze.orders")) == [1, 2, 3, 4, 5]
    assert _watermark(root) == {"type": "timestamp", "value": "2026-01-01T10:00:05"}
    v1 = table_version(root, "bronze.orders")

    execute(f"INSERT INTO {name} VALUES (%s, %s, %s, %s)",
            [(6, "item-6", "6.50", "2026-01-02 08:00:00"), (7, "item-7", "7.50", "2026-01-02 09:30:00")])
    second = run_project(root)
    assert second.status == "success", second.tasks[0].error
    assert second.tasks[0].rows_in == 2 and second.tasks[0].rows_out == 2  # only the new rows were read
    assert table_version(root, "bronze.orders") == v1 + 1
    rows = read_table(root, "bronze.orders", order_by="id")
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]  # each row once: no re-read of old rows
    assert [(r["item"], str(r["amount"])) for r in rows[5:]] == [("item-6", "6.50"), ("item-7", "7.50")]
    assert _watermark(root) == {"type": "timestamp", "value": "2026-01-02T09:30:00"}
    # the newest commit holds exactly the two new rows
    assert DeltaTable(str(root / "lake/bronze/orders")).history(1)[0]["headrace.rows"] == "2"

    third = run_project(root)
    task = third.tasks[0]
    assert third.status == "success" and task.status == "unchanged", task.message
    assert "no new rows" in task.message
    assert table_version(root, "bronze.orders") == v1 + 1  # nothing committed
    assert len(read_table(root, "bronze.orders")) == 7


def test_mariadb_merge_picks_up_updates_past_the_watermark(make_project, maria_table):
    url, name, execute = maria_table
    root = _project(make_project, url, name, write="merge", keys=', keys=["id"]')
    assert run_project(root).status == "success"
    version = table_version(root, "bronze.orders")

    execute(f"UPDATE {name} SET item = 'changed', updated_at = '2026-01-03 00:00:00' WHERE id = 2")
    execute(f"INSERT INTO {name} VALUES (8, 'item-8', 8.50, '2026-01-03 00:00:01')")
    result = run_project(root)
    assert result.status == "success", result.tasks[0].error
    assert result.tasks[0].rows_in == 2
    rows = {r["id"]: r["item"] for r in read_table(root, "bronze.orders")}
    assert rows == {1: "item-1", 2: "changed", 3: "item-3", 4: "item-4", 5: "item-5", 8: "item-8"}
    assert _watermark(root) == {"type": "timestamp", "value": "2026-01-03T00:00:01"}
    assert table_version(root, "bronze.orders") == version + 1

    again = run_project(root)
    assert again.tasks[0].status == "unchanged"
    assert table_version(root, "bronze.orders") == version + 1
