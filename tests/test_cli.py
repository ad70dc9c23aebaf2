"""The CLI as a user runs it: real subprocesses, exit codes, JSON output, init, inspection."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import cli, write_files

PIPE = '''
import headrace as hr
src = hr.files("data/*.ndjson", format="ndjson")

@hr.table("bronze.orders", source=src, write="overwrite_partitions", partition_by="order_date")
def orders(raw):
    return raw.select("*, CAST(order_ts AS DATE) AS order_date")
'''
MODEL = """/* headrace
write = "overwrite"
*/
select order_date, count(*) as n, sum(amount) as total from ref('bronze.orders') group by all
"""


def _rows(day: str, start: int, n: int) -> str:
    return "".join(json.dumps({"id": i, "amount": 1.5, "order_ts": f"{day}T01:02:03"}) + "\n"
                   for i in range(start, start + n))


@pytest.fixture
def project(make_project):
    return make_project({
        "pipelines/p.py": PIPE,
        "models/gold/daily.sql": MODEL,
        "data/d1.ndjson": _rows("2026-02-01", 0, 5),
        "data/d2.ndjson": _rows("2026-02-02", 5, 3),
    })


@pytest.mark.slow
def test_run_exits_cleanly_every_time(project):
    """deltalake + pyarrow may abort at interpreter exit after reads (delta-rs#2184); we must not."""
    codes = []
    for i in range(6):
        if i == 3:
            write_files(project, {"data/d3.ndjson": _rows("2026-02-03", 8, 2)})
        proc = cli(project, "run")
        codes.append(proc.returncode)
        assert "terminate called" not in proc.stderr
    for args in (("show", "bronze.orders"), ("query", "select count(*) from gold.daily"), ("runs",)):
        proc = cli(project, *args)
        codes.append(proc.returncode)
    assert codes == [0] * len(codes)


def test_run_json_and_rerun_unchanged(project):
    first = json.loads(cli(project, "run", "--json").stdout)
    assert first["status"] == "success"
    by = {t["table"]: t for t in first["tables"]}
    assert by["bronze.orders"]["rows_out"] == 8 and by["bronze.orders"]["version"] == 0
    assert by["gold.daily"]["rows_out"] == 2
    second = json.loads(cli(project, "run", "--json").stdout)
    assert {t["status"] for t in second["tables"]} == {"unchanged"}


def test_inspection_commands_json(project):
    assert cli(project, "run").returncode == 0
    show = json.loads(cli(project, "show", "bronze.orders", "--json").stdout)
    assert show["rows"] == 8 and show["version"] == 0 and show["partition_by"] == ["order_date"]
    assert [p["rows"] for p in show["partitions"]] == [5, 3]
    assert show["history"][0]["mode"] == "overwrite_partitions" and show["history"][0]["run_id"]
    assert {c["name"] for c in show["schema"]} == {"id", "amount", "order_ts", "order_date"}
    q = json.loads(cli(project, "query", "select order_date::varchar d, n from gold.daily order by d", "--json").stdout)
    assert q["rows"] == [{"d": "2026-02-01", "n": 5}, {"d": "2026-02-02", "n": 3}]
    runs = json.loads(cli(project, "runs", "--json").stdout)
    assert len(runs) == 1 and runs[0]["status"] == "success"
    one = json.loads(cli(project, "runs", runs[0]["run_id"], "--json").stdout)
    assert [t["table"] for t in one["tables"]] == ["bronze.orders", "gold.daily"]
    dag = json.loads(cli(project, "dag", "--json").stdout)
    assert dag[1] == {**dag[1], "table": "gold.daily", "parents": ["bronze.orders"], "write": "overwrite"}
    conf = json.loads(cli(project, "config", "--json").stdout)
    assert conf["run.workers"] == {"value": 2, "origin": "headrace.toml"}


def test_human_output(project):
    proc = cli(project, "run")
    assert proc.returncode == 0
    assert "bronze.orders" in proc.stdout and "success" in proc.stdout and "run " in proc.stdout
    show = cli(project, "show", "bronze.orders")
    assert "2026-02-01" in show.stdout and "history" in show.stdout
    dag = cli(project, "dag")
    assert "gold.daily" in dag.stdout and "<- bronze.orders" in dag.stdout


def test_query_error_is_short(project):
    assert cli(project, "run").returncode == 0
    proc = cli(project, "query", "select * from bronze.nope")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bronze.orders" in proc.stderr


def test_show_unknown_table(project):
    assert cli(project, "run").returncode == 0
    proc = cli(project, "show", "bronze.order")
    assert proc.returncode == 2 and "Did you mean 'bronze.orders'" in proc.stderr


def test_init_scaffolds_a_project_that_runs(tmp_path):
    target = tmp_path / "newproj"
    proc = subprocess.run([sys.executable, "-m", "headrace", "init", str(target)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    run = cli(target, "run", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert result["status"] == "success"
    assert {t["table"]: t["rows_out"] for t in result["tables"]}["bronze.orders"] == 150
    again = subprocess.run([sys.executable, "-m", "headrace", "init", str(target)], capture_output=True, text=True)
    assert again.returncode == 2 and "already holds" in again.stderr


def test_help_imports_nothing_heavy():
    code = ("import sys, time; t=time.perf_counter(); from headrace.cli.main import app; "
            "print(sorted(m for m in ('duckdb','deltalake','pyarrow','sqlalchemy','pydantic','sqlglot') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]"
    help_proc = subprocess.run([sys.executable, "-m", "headrace", "--help"], capture_output=True, text=True)
    assert help_proc.returncode == 0 and "backfill" in help_proc.stdout  # speed: bench/ingest.py
