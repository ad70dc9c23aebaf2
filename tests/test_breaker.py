"""Write-audit-publish on real DuckDB + Delta: checks run on staged rows before they are visible;
a failed error check publishes nothing, skips downstream and keeps the last good version."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from conftest import cli, open_ws, read_table, run_project, table_version, write_files

PIPE = '''
import headrace as hr
src = hr.files("data/orders.csv", format="csv")
customers = hr.files("data/customers.csv", format="csv")

@hr.table("bronze.customers", source=customers, write="overwrite")
def cust(raw):
    return raw

@hr.table(
    "bronze.orders",
    source=src,
    write="overwrite",
    checks=[
        hr.check.unique("order_id"),
        hr.check.not_null("customer_id"),
        hr.check.range("amount", min=0, severity="warn"),
        hr.check.relationships("customer_id", to="bronze.customers"),
    ],
)
def orders(raw):
    return raw

@hr.table("silver.orders", inputs={"o": "bronze.orders"})
def silver(o):
    return o
'''

GOOD = "order_id,customer_id,amount\n1,10,5.0\n2,11,7.5\n3,10,-1.0\n"
CUSTOMERS = "customer_id,name\n10,ann\n11,bob\n"


def _live_files(root: Path, table: str) -> set[str]:
    dt = DeltaTable(str(root / "lake" / table.replace(".", "/")))
    return {Path(u).name for u in dt.file_uris()}


def _disk_files(root: Path, table: str) -> set[str]:
    return {p.name for p in (root / "lake" / table.replace(".", "/")).rglob("*.parquet")}


def test_passing_checks_publish_and_warnings_are_reported(make_project):
    root = make_project({"pipelines/p.py": PIPE, "data/orders.csv": GOOD, "data/customers.csv": CUSTOMERS})
    result = run_project(root)
    assert result.status == "success"
    by = {t.table: t for t in result.tasks}
    assert "checks 3/4 passed" in by["bronze.orders"].message and "range(amount, min=0)" in by["bronze.orders"].message
    ws = open_ws(root)
    records = {r.name: r for r in ws.store.check_results(table="bronze.orders")}
    ws.close()
    assert records["range(amount, min=0)"].passed is False and records["range(amount, min=0)"].failing == 1
    assert records["range(amount, min=0)"].severity == "warn"
    assert records["unique(order_id)"].passed and records["unique(order_id)"].total == 3
    assert records["relationships(customer_id, to=bronze.customers)"].passed


def test_failed_error_check_publishes_nothing_and_skips_downstream(make_project):
    root = make_project({"pipelines/p.py": PIPE, "data/orders.csv": GOOD, "data/customers.csv": CUSTOMERS})
    assert run_project(root).status == "success"
    before_rows = read_table(root, "bronze.orders", order_by="order_id")
    before_files = _live_files(root, "bronze.orders")
    # duplicated key 2, a null customer and an unknown customer 99
    write_files(root, {"data/orders.csv": "order_id,customer_id,amount\n1,10,5\n2,11,6\n2,11,6\n4,,1\n5,99,2\n"})
    result = run_project(root)
    by = {t.table: t for t in result.tasks}
    assert result.status == "failed"
    assert by["bronze.orders"].status == "failed" and by["bronze.orders"].attempts == 1
    error = by["bronze.orders"].error
    assert "3 error check(s) failed" in error and "nothing was published" in error
    assert "unique(order_id)" in error and "2/5" in error  # both rows of the duplicated group
    assert "not_null(customer_id)" in error and "99" in error  # the orphan key is in the sample
    assert by["silver.orders"].status == "skipped"
    assert table_version(root, "bronze.orders") == 0
    assert read_table(root, "bronze.orders", order_by="order_id") == before_rows
    # the staged files of the failed run were removed: only committed files remain on disk
    assert _disk_files(root, "bronze.orders") == before_files
    ws = open_ws(root)
    failed = [r for r in ws.store.check_results(table="bronze.orders", run_id=result.run_id) if not r.passed]
    ws.close()
    assert sorted(r.kind for r in failed) == ["not_null", "relationships", "unique"]  # amounts are >= 0


def test_reader_never_sees_a_version_that_failed_a_check(make_project):
    """Read the table while the failing run is in progress and after it: always the old rows."""
    pipe = PIPE.replace("def orders(raw):\n    return raw", '''def orders(raw, ctx):
    import time
    flag = ctx.project_root / "slow.flag"
    if flag.exists():
        (ctx.project_root / "inside.flag").write_text("1")
        time.sleep(1.5)
    return raw''')
    root = make_project({"pipelines/p.py": pipe, "data/orders.csv": GOOD, "data/customers.csv": CUSTOMERS})
    assert run_project(root).status == "success"
    good = read_table(root, "bronze.orders", order_by="order_id")
    write_files(root, {"slow.flag": "1", "data/orders.csv": "order_id,customer_id,amount\n7,10,1\n7,10,1\n"})
    seen: list[list[dict]] = []
    done = threading.Event()

    def reader() -> None:
        while not (root / "inside.flag").exists() and not done.is_set():
            time.sleep(0.02)
        while not done.is_set():
            seen.append(read_table(root, "bronze.orders", order_by="order_id"))
            time.sleep(0.05)

    t = threading.Thread(target=reader)
    t.start()
    result = run_project(root, "bronze.orders")
    done.set()
    t.join()
    assert result.status == "failed" and "unique(order_id)" in result.tasks[0].error
    assert len(seen) >= 3
    assert all(rows == good for rows in seen)
    assert read_table(root, "bronze.orders", order_by="order_id") == good
    assert table_version(root, "bronze.orders") == 0


def test_thresholds_let_a_few_failures_through(make_project):
    pipe = '''
import headrace as hr
src = hr.files("data/x.csv", format="csv")

@hr.table("bronze.x", source=src, checks=[
    hr.check.not_null("v", max_fail_ratio=0.25),
    hr.check.accepted_values("k", ["a", "b"], max_failures=1),
    hr.check.row_count(min=3),
])
def x(raw):
    return raw
'''
    root = make_project({"pipelines/p.py": pipe, "data/x.csv": "k,v\na,1\nb,\nc,3\na,4\n"})
    result = run_project(root)
    assert result.status == "success", result.tasks[0].error
    write_files(root, {"data/x.csv": "k,v\na,\nz,\nc,3\n"})
    result = run_project(root)
    assert result.status == "failed"
    assert "not_null(v)" in result.tasks[0].error and "accepted_values(k" in result.tasks[0].error
    assert "row_count" not in result.tasks[0].error.split("nothing was published")[0]


def test_volume_anomaly_uses_the_tables_own_history(make_project):
    pipe = '''
import headrace as hr
src = hr.files("data/x.csv", format="csv")

@hr.table("bronze.x", source=src, checks=[hr.check.volume_anomaly(method="pct_change", threshold=0.5, min_history=2)])
def x(raw):
    return raw
'''
    root = make_project({"pipelines/p.py": pipe, "data/x.csv": "v\n" + "1\n" * 10})
    results = []
    for n in (10, 11, 12):
        write_files(root, {"data/x.csv": "v\n" + "1\n" * n})
        results.append(run_project(root))
    assert [r.status for r in results] == ["success"] * 3
    write_files(root, {"data/x.csv": "v\n" + "1\n" * 40})  # +233% vs the last published run
    spike = run_project(root)
    assert spike.status == "failed" and "volume_anomaly" in spike.tasks[0].error
    assert table_version(root, "bronze.x") == 2
    ws = open_ws(root)
    (name,) = {r.name for r in ws.store.check_results(table="bronze.x")}
    # the failed spike is not history: only runs that published count
    assert ws.store.check_history("bronze.x", name) == [10.0, 11.0, 12.0]
    ws.close()


def test_check_on_missing_column_is_a_config_error_before_writing(make_project):
    pipe = '''
import headrace as hr
src = hr.files("data/x.csv", format="csv")

@hr.table("bronze.x", source=src, checks=[hr.check.unique("id_")])
def x(raw):
    return raw
'''
    root = make_project({"pipelines/p.py": pipe, "data/x.csv": "id\n1\n"})
    result = run_project(root)
    assert result.status == "failed"
    assert "'id_'" in result.tasks[0].error and "Did you mean 'id'" in result.tasks[0].error
    assert not (root / "lake/bronze/x").exists() or not list((root / "lake/bronze/x").rglob("*.parquet"))


def test_invalid_regex_is_an_error_at_load(make_project):
    pipe = '''
import headrace as hr
src = hr.files("data/x.csv", format="csv")

@hr.table("bronze.x", source=src, checks=[hr.check.regex("id", "([a-z")])
def x(raw):
    return raw
'''
    root = make_project({"pipelines/p.py": pipe, "data/x.csv": "id\n1\n"})
    proc = cli(root, "run")
    assert proc.returncode == 2 and "regex" in proc.stderr.lower() and "Traceback" not in proc.stderr


def test_checks_command(make_project):
    root = make_project({"pipelines/p.py": PIPE, "data/orders.csv": GOOD, "data/customers.csv": CUSTOMERS})
    assert cli(root, "run").returncode == 0
    data = json.loads(cli(root, "checks", "bronze.orders", "--json").stdout)
    assert {d["name"] for d in data} >= {"unique(order_id)", "not_null(customer_id)", "range(amount, min=0)"}
    human = cli(root, "checks")
    assert "unique(order_id)" in human.stdout and "warn" in human.stdout
    assert cli(root, "run", "--force").returncode == 0
    history = json.loads(cli(root, "checks", "bronze.orders", "--history", "--json").stdout)
    assert sum(1 for d in history if d["name"] == "unique(order_id)") == 2


@pytest.mark.parametrize("severity", ["warn", "error"])
def test_freshness(make_project, severity):
    pipe = f'''
import headrace as hr
src = hr.files("data/x.csv", format="csv")

@hr.table("bronze.x", source=src, checks=[hr.check.freshness("ts", max_age="2h", severity="{severity}")])
def x(raw):
    return raw
'''
    root = make_project({"pipelines/p.py": pipe, "data/x.csv": "ts\n2020-01-01 00:00:00\n"})
    result = run_project(root)
    assert result.status == ("success" if severity == "warn" else "failed")


def test_checks_declared_in_a_sql_model_header(make_project):
    model = """/* headrace
checks = [
  {unique = ["customer_id"]},
  {expression = "n > 0", name = "has_orders"},
  {row_count = {min = 1}, severity = "warn"},
]
*/
select customer_id, count(*) as n from ref('bronze.orders') group by all
"""
    root = make_project({"pipelines/p.py": PIPE, "data/orders.csv": GOOD, "data/customers.csv": CUSTOMERS,
                         "models/gold/per_customer.sql": model})
    result = run_project(root, "+gold.per_customer")
    assert result.status == "success", [t.error for t in result.tasks]
    ws = open_ws(root)
    names = {r.name for r in ws.store.check_results(table="gold.per_customer")}
    ws.close()
    assert {"unique(customer_id)", "has_orders"} <= names
    bad = model.replace("{unique = [\"customer_id\"]}", "{unique = [\"customer_idd\"]}")
    write_files(root, {"models/gold/per_customer.sql": bad})
    result = run_project(root, "gold.per_customer")
    assert result.status == "failed" and "Did you mean 'customer_id'" in result.tasks[0].error
