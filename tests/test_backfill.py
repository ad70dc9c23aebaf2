"""Backfills: {{ ds }} / ctx.ds, one idempotent partition overwrite per date, resumable, --missing."""

from __future__ import annotations

import json

from deltalake import DeltaTable

from conftest import cli, read_table, run_project

EVENTS = "".join(json.dumps({"id": i, "day": f"2026-03-0{1 + i % 5}", "v": i}) + "\n" for i in range(50))

PIPE = '''
import headrace as hr
src = hr.files("data/events.ndjson", format="ndjson")

@hr.table("bronze.events", source=src, write="overwrite")
def events(raw):
    return raw
'''

MODEL = """/* headrace
write = "overwrite_partitions"
partition_by = ["day"]
*/
select CAST(day AS DATE) as day, count(*) as n, sum(v) as total
from ref('bronze.events')
where CAST(day AS DATE) = DATE '{{ ds }}'
group by all
"""

PY_DAILY = '''

@hr.table("gold.py_daily", inputs={"e": "bronze.events"}, write="overwrite_partitions", partition_by="day")
def py_daily(e, ctx):
    return e.filter(f"CAST(day AS DATE) = DATE '{ctx.ds}'").aggregate("CAST(day AS DATE) AS day, count(*) AS n")
'''


def _project(make_project):
    return make_project({"pipelines/p.py": PIPE + PY_DAILY, "models/gold/daily.sql": MODEL,
                         "data/events.ndjson": EVENTS})


def test_backfill_runs_each_date_as_its_own_partition_overwrite(make_project):
    root = _project(make_project)
    assert run_project(root, "bronze.events").status == "success"
    proc = cli(root, "backfill", "--start", "2026-03-01", "--end", "2026-03-03", "-s", "gold.daily", "-s", "gold.py_daily",
               "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outcomes = json.loads(proc.stdout)
    assert [(o["ds"], o["status"]) for o in outcomes] == [("2026-03-01", "success"), ("2026-03-02", "success"),
                                                           ("2026-03-03", "success")]
    rows = sorted((str(r["day"]), r["n"]) for r in read_table(root, "gold.daily"))
    assert rows == [("2026-03-01", 10), ("2026-03-02", 10), ("2026-03-03", 10)]
    assert sorted((str(r["day"]), r["n"]) for r in read_table(root, "gold.py_daily")) == rows
    dt = DeltaTable(str(root / "lake/gold/daily"))
    intervals = [h.get("headrace.interval") for h in dt.history()]
    assert sorted(i for i in intervals if i) == ["2026-03-01", "2026-03-02", "2026-03-03"]


def test_backfill_resumes_and_missing_skips_done_dates(make_project):
    root = _project(make_project)
    assert run_project(root, "bronze.events").status == "success"
    first = json.loads(cli(root, "backfill", "--start", "2026-03-01", "--end", "2026-03-02", "-s", "gold.daily",
                           "--json").stdout)
    assert [o["status"] for o in first] == ["success", "success"]
    version = DeltaTable(str(root / "lake/gold/daily")).version()
    # "crash" after two dates, then run the whole range: done dates are not recomputed
    again = cli(root, "backfill", "--start", "2026-03-01", "--end", "2026-03-04", "-s", "gold.daily", "--json")
    assert again.returncode == 0
    assert DeltaTable(str(root / "lake/gold/daily")).version() == version + 2
    ids = [o["run_id"] for o in json.loads(again.stdout)]
    from conftest import open_ws

    ws = open_ws(root)
    statuses = [ws.store.tasks(i)[0].status for i in ids]
    ws.close()
    assert statuses == ["unchanged", "unchanged", "success", "success"]
    missing = json.loads(cli(root, "backfill", "--start", "2026-03-01", "--end", "2026-03-05", "-s", "gold.daily",
                             "--missing", "--json").stdout)
    assert [(o["ds"], o["status"]) for o in missing] == [
        ("2026-03-01", "skipped"), ("2026-03-02", "skipped"), ("2026-03-03", "skipped"),
        ("2026-03-04", "skipped"), ("2026-03-05", "success")]
    assert len(read_table(root, "gold.daily")) == 5


def test_run_with_ds_and_bad_range(make_project):
    root = _project(make_project)
    assert run_project(root, "bronze.events").status == "success"
    proc = cli(root, "run", "-s", "gold.daily", "--ds", "2026-03-05", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(str(r["day"]), r["n"]) for r in read_table(root, "gold.daily")] == [("2026-03-05", 10)]
    bad = cli(root, "backfill", "--start", "2026-03-05", "--end", "2026-03-01")
    assert bad.returncode == 2 and "before --start" in bad.stderr
    worse = cli(root, "run", "--ds", "yesterday")
    assert worse.returncode == 2 and "--ds must be a date" in (worse.stderr + worse.stdout)
