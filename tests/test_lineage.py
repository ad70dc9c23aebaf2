"""OpenLineage events: a real run reported to a local HTTP server and a JSON-lines file, with
the datasets, versions, row counts and check results the lake and the state store hold."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from headrace.errors import ConfigError
from headrace.observe.lineage import database_dataset, run_uuid

from conftest import Hook, cli, open_ws, run_project

PIPE = '''
import headrace as hr

orders = hr.files("data/orders/*.csv", format="csv")
people = hr.database("sqlite:///people.db", table="people")

@hr.table("bronze.orders", source=orders, write="overwrite",
          contract=hr.Contract({"id": hr.Int64(key=True), "amount": hr.Decimal(10, 2, min=0)},
                               on_violation="quarantine", max_quarantine_ratio=0.5),
          checks=[hr.check.unique("id"), hr.check.row_count(min=1)])
def bronze_orders(raw):
    return raw

@hr.table("bronze.people", source=people, write="overwrite")
def bronze_people(raw):
    return raw

@hr.table("gold.broken", inputs={"o": "bronze.orders"}, write="overwrite")
def broken(o):
    raise ValueError("this table is broken on purpose")

@hr.table("gold.after_broken", inputs={"b": "gold.broken"}, write="overwrite")
def after_broken(b):
    return b
'''

MODEL = """/* headrace
write = "overwrite"
*/
select count(*) as n, sum(amount) as total from ref('bronze.orders')
"""


def _project(make_project: Any, lineage: str) -> Path:
    toml = 'name = "shop"\nlake = "lake"\nstate = "sqlite:///.headrace/state.db"\n' + lineage
    root = make_project({"pipelines/p.py": PIPE, "models/silver/totals.sql": MODEL,
                         "data/orders/a.csv": "id,amount\n1,10.50\n2,-3\n3,4\n4,5\n"}, toml=toml)
    con = sqlite3.connect(root / "people.db")
    con.execute("CREATE TABLE people (id INTEGER, name TEXT)")
    con.executemany("INSERT INTO people VALUES (?, ?)", [(1, "ann"), (2, "bob")])
    con.commit()
    con.close()
    return root


def _facets_are_stamped(value: Any) -> None:
    """Every facet (a dict under a "facets"/"outputFacets" key) names its producer and schema."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("facets", "outputFacets", "inputFacets"):
                for name, one in item.items():
                    assert one["_producer"].startswith("https://"), name
                    assert one["_schemaURL"].startswith("https://"), name
            _facets_are_stamped(item)
    elif isinstance(value, list):
        for item in value:
            _facets_are_stamped(item)


def test_a_run_reports_its_jobs_datasets_versions_and_checks(make_project: Any, hook: Hook) -> None:
    url = hook.url.split("/hook/")[0]
    root = _project(make_project, f'[lineage]\nurl = "{url}"\nendpoint = "/api/v1/lineage"\napi_key = "s3cret"\n'
                                  'file = ".headrace/lineage.ndjson"\nnamespace = "analytics"\n')
    result = run_project(root)
    assert result.status == "failed"  # gold.broken fails, gold.after_broken is skipped
    lines = (root / ".headrace/lineage.ndjson").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    posted = [r for r in hook.requests]
    assert [r["body"] for r in posted] == events  # both transports got every event, in order
    assert {r["path"] for r in posted} == {"/api/v1/lineage"}
    assert {r["headers"]["Authorization"] for r in posted} == {"Bearer s3cret"}
    for event in events:
        assert event["eventTime"].endswith("Z") and event["producer"].startswith("https://")
        assert event["schemaURL"].endswith("#/$defs/RunEvent")
        _facets_are_stamped(event)

    run_id = run_uuid("shop", result.run_id)
    assert (events[0]["eventType"], events[0]["job"]) == ("START", {"namespace": "analytics", "name": "shop",
                                                                    "facets": events[0]["job"]["facets"]})
    assert events[-1]["eventType"] == "FAIL" and "gold.broken" in events[-1]["run"]["facets"]["errorMessage"]["message"]
    assert events[0]["run"]["runId"] == events[-1]["run"]["runId"] == run_id

    by_job: dict[str, list[dict[str, Any]]] = {}
    for event in events[1:-1]:
        by_job.setdefault(event["job"]["name"], []).append(event)
    assert set(by_job) == {"shop.bronze.orders", "shop.bronze.people", "shop.silver.totals", "shop.gold.broken"}
    for job, (start, end) in by_job.items():  # a START and an end per table; a skipped one has none
        assert start["eventType"] == "START" and start["run"]["runId"] == end["run"]["runId"]
        assert start["run"]["facets"]["parent"]["run"]["runId"] == run_id
        assert start["job"]["namespace"] == "analytics", job

    orders = by_job["shop.bronze.orders"][1]
    assert orders["eventType"] == "COMPLETE"
    assert orders["inputs"][0]["namespace"] == "file"
    assert orders["inputs"][0]["name"] == str((root / "data" / "orders").resolve())
    table, quarantine = orders["outputs"]
    assert (table["namespace"], table["name"]) == ("file", str(root / "lake" / "bronze" / "orders"))
    assert table["facets"]["version"]["datasetVersion"] == str(DeltaTable(str(root / "lake/bronze/orders")).version())
    assert [f["name"] for f in table["facets"]["schema"]["fields"]] == ["id", "amount"]
    assert table["outputFacets"]["outputStatistics"]["rowCount"] == 3
    assert quarantine["name"].endswith("bronze/orders__quarantine")
    assert quarantine["outputFacets"]["outputStatistics"]["rowCount"] == 1
    assertions = {a["assertion"]: a["success"] for a in table["facets"]["dataQualityAssertions"]["assertions"]}
    assert assertions == {"unique(id)": True, "row_count(min=1)": True}

    people = by_job["shop.bronze.people"][1]
    assert (people["inputs"][0]["namespace"], people["inputs"][0]["name"]) == (
        "file", f"{(root / 'people.db').resolve()}/people")

    totals_start, totals = by_job["shop.silver.totals"]
    assert totals_start["job"]["facets"]["sql"]["query"].startswith("select count(*)")  # the header is left out
    assert totals["inputs"][0]["name"] == str(root / "lake" / "bronze" / "orders")
    # column lineage (sqlglot over the model): total from bronze.orders.amount; count(*) from no column
    assert totals["outputs"][0]["facets"]["columnLineage"]["fields"] == {"total": {"inputFields": [
        {"namespace": "file", "name": str(root / "lake" / "bronze" / "orders"), "field": "amount"}]}}

    broken = by_job["shop.gold.broken"][1]
    assert broken["eventType"] == "FAIL"
    assert "broken on purpose" in broken["run"]["facets"]["errorMessage"]["message"]


def test_a_lineage_server_that_is_down_does_not_stop_the_run(make_project: Any) -> None:
    root = _project(make_project, '[lineage]\nurl = "http://127.0.0.1:9"\ntimeout_seconds = 2\n'
                                  'file = "lineage.ndjson"\n')
    started = time.monotonic()
    done = cli(root, "run", "-s", "bronze.orders", "-s", "silver.totals")
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 60
    assert done.stderr.count("cannot send events to http://127.0.0.1:9/api/v1/lineage") == 1  # said once
    events = [json.loads(line) for line in (root / "lineage.ndjson").read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "START", "COMPLETE", "START", "COMPLETE", "COMPLETE"]


def test_lineage_settings_are_checked(make_project: Any) -> None:
    for text, words in [('[lineage]\nnamespace = "x"\n', ["neither url nor file"]),
                        ('[lineage]\nurl = "marquez:5000"\n', ["not an http(s) URL"])]:
        root = make_project({"pipelines/p.py": "import headrace as hr\n"}, toml=f'name = "p"\n{text}',
                            name=f"p{len(text)}")
        with pytest.raises(ConfigError) as info:
            open_ws(root).config  # noqa: B018
        assert all(w in info.value.message for w in words), info.value.message
    root = make_project({"pipelines/p.py": "import headrace as hr\n"},
                        toml='name = "p"\n[lineage]\nurl = "${NO_SUCH_LINEAGE_URL:-}"\n', name="off")
    assert open_ws(root).config.lineage is None  # an empty URL from the environment switches it off


@pytest.mark.parametrize(("url", "table", "expected"), [
    ("postgresql://u:p@db.internal/shop", "orders", ("postgres://db.internal:5432", "shop.public.orders")),
    ("postgresql+psycopg://db:6543/shop", "sales.orders", ("postgres://db:6543", "shop.sales.orders")),
    ("mysql://root@127.0.0.1:3307/shop", "orders", ("mysql://127.0.0.1:3307", "shop.orders")),
    ("mariadb://maria/shop", "orders", ("mysql://maria:3306", "shop.orders")),
    ("sqlite:////data/app.db", "users", ("file", "/data/app.db/users")),
])
def test_database_datasets_follow_the_openlineage_naming(url: str, table: str, expected: tuple[str, str]) -> None:
    assert database_dataset(url, table, None, root=Path("/proj")) == expected


def test_a_query_source_is_named_by_its_database_and_text() -> None:
    one = database_dataset("postgresql://db/shop", None, "select 1", root=Path("/p"))
    assert one[0] == "postgres://db:5432" and one[1].startswith("shop.query_")
    assert one == database_dataset("postgresql://db/shop", None, "select 1", root=Path("/p"))
    assert one != database_dataset("postgresql://db/shop", None, "select 2", root=Path("/p"))


def test_a_backfill_date_is_the_runs_nominal_time(make_project: Any) -> None:
    import datetime as dt

    root = make_project({
        "pipelines/p.py": 'import headrace as hr\n'
                          '@hr.table("gold.day", write="overwrite")\n'
                          'def day(ctx):\n    return f"SELECT DATE \'{ctx.ds}\' AS d"\n',
    }, toml='name = "d"\nlake = "lake"\nstate = "sqlite:///.headrace/state.db"\n[lineage]\nfile = "l.ndjson"\n')
    assert run_project(root, logical_date=dt.date(2026, 1, 31)).ok
    events = [json.loads(line) for line in (root / "l.ndjson").read_text().splitlines()]
    table = [e for e in events if e["job"]["name"] == "d.gold.day"]
    assert [e["eventType"] for e in table] == ["START", "COMPLETE"]
    assert {e["run"]["facets"]["nominalTime"]["nominalStartTime"] for e in table} == {"2026-01-31T00:00:00Z"}
