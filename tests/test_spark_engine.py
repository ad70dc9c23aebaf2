"""The same project on DuckDB and on Spark local[2] makes the same Delta tables.

Each project runs twice (day one, then day two with changed and new data) on both engines into
two lakes; every table, quarantine table and check result is compared by schema and by an
order-insensitive content checksum. Columns that hold the run's own identity or clock (run id,
quarantine time, SCD2 validity times) differ between any two runs and are compared by shape
only. Spark runs must make exactly one Delta commit per table per run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from conftest import cli, open_ws, write_files

pytestmark = [pytest.mark.spark, pytest.mark.slow]

if not os.environ.get("CI"):
    pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'headrace[spark]')")

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo"
RUN_DEPENDENT = {"run_id", "quarantined_at", "valid_from", "valid_to"}
SPARK = {"spark.master": "local[2]"}


def _ws(root: Path, engine: str) -> Any:
    overrides: dict[str, Any] = {"engine": engine, "lake": f"lake-{engine}",
                                 "state": f"sqlite:///.headrace/{engine}.db"}
    if engine == "spark":
        overrides.update(SPARK)
    return open_ws(root, overrides=overrides)


def _run(root: Path, engine: str) -> tuple[Any, list[Any]]:
    ws = _ws(root, engine)
    try:
        result = ws.run([])
        checks = ws.store.check_results(run_id=result.run_id)
        return result, checks
    finally:
        ws.close()


def _digest(lake: Path, name: str) -> tuple[list[tuple[str, str]], int, Any, dict[str, int]]:
    """Schema, row count, order-insensitive checksum of the comparable columns, and the number
    of distinct values of each run-dependent column (its shape)."""
    from headrace.delta.catalog import Lake

    snap = Lake(lake).snapshot(name)
    schema = pa.schema(snap.table.schema().to_arrow())
    con = duckdb.connect()
    con.register("t", snap.dataset())
    cols = [f'"{c}"' for c in schema.names if c not in RUN_DEPENDENT]
    count, checksum = con.sql(
        f"SELECT count(*), coalesce(sum(hash(({', '.join(cols)}))::HUGEINT), 0) FROM t").fetchall()[0]
    shape = {c: con.sql(f'SELECT count(DISTINCT "{c}") FROM t').fetchall()[0][0]
             for c in schema.names if c in RUN_DEPENDENT}
    return [(f.name, str(f.type)) for f in schema], count, checksum, shape


def _compare_lakes(root: Path) -> list[str]:
    from headrace.delta.catalog import Lake

    duck, spark = root / "lake-duckdb", root / "lake-spark"
    names = Lake(duck).list_tables()
    assert names == Lake(spark).list_tables()
    differences = []
    for name in names:
        a, b = _digest(duck, name), _digest(spark, name)
        if a != b:
            differences.append(f"{name}: duckdb {a} != spark {b}")
    return differences


def _one_commit_per_table(root: Path, run_id: str, tables: list[str]) -> None:
    from headrace.delta.catalog import Lake

    lake = Lake(root / "lake-spark")
    for name in tables:
        commits = [c for c in lake.history(name) if c.run_id == run_id]
        assert len(commits) == 1, f"{name}: {len(commits)} commits in run {run_id}"


def _check_summary(checks: list[Any]) -> list[tuple[Any, ...]]:
    """Every check's verdict, counts and failing-row sample (samples are ordered by key)."""
    import json

    return sorted((c.table, c.name, c.passed, c.failing, c.total, c.ratio, c.metric,
                   json.dumps(c.sample, sort_keys=True, default=str)) for c in checks)


def _written(result: Any) -> list[str]:
    return [t.table for t in result.tasks if t.status == "success"]


def _both(root: Path) -> None:
    duck, duck_checks = _run(root, "duckdb")
    spark, spark_checks = _run(root, "spark")
    assert duck.ok, [(t.table, t.error) for t in duck.tasks]
    assert spark.ok, "\n".join(f"{t.table}: {t.error}" for t in spark.tasks if t.error)
    assert sorted(_written(duck)) == sorted(_written(spark))
    summary = {t.table: (t.status, t.rows_in, t.rows_out, t.rows_quarantined) for t in duck.tasks}
    assert summary == {t.table: (t.status, t.rows_in, t.rows_out, t.rows_quarantined) for t in spark.tasks}
    assert _check_summary(duck_checks) == _check_summary(spark_checks)
    _one_commit_per_table(root, spark.run_id, _written(spark))
    assert _compare_lakes(root) == []


def test_demo_makes_the_same_tables_on_duckdb_and_spark(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    shutil.copytree(DEMO, root, ignore=shutil.ignore_patterns("data", "lake", ".headrace"))
    generate = [sys.executable, str(root / "generate.py"), "--out", str(root / "data")]
    subprocess.run(generate, check=True, capture_output=True)
    _both(root)
    subprocess.run([*generate, "--day-two"], check=True, capture_output=True)
    _both(root)
    # the day-two SCD2 run closed versions on both engines alike
    digest = _digest(root / "lake-spark", "silver.dim_customers")
    assert digest[1] > 5000


FIXTURE_TOML = 'name = "modes"\n'
FIXTURE = '''
import headrace as hr

events = hr.files("data/events/*.ndjson", format="ndjson")
people = hr.files("data/people/*.csv", format="csv")

CONTRACT = hr.Contract({
    "event_id": hr.Int64(key=True),
    "person_id": hr.Int64(nullable=False),
    "kind": hr.String(accepted=["view", "buy"]),
    "amount": hr.Decimal(10, 2, min=0, max=1000),
    "code": hr.String(regex=r"^[A-Z]{3}$", max_length=3),
    "seen_at": hr.Timestamp(nullable=False),
}, on_violation="quarantine", max_quarantine_ratio=0.5)


@hr.table("bronze.events", source=events, write="append", contract=CONTRACT,
          checks=[hr.check.not_null("kind"), hr.check.unique("event_id"),
                  hr.check.accepted_values("kind", ["view", "buy"]),
                  hr.check.range("amount", min=0, max=1000), hr.check.regex("code", r"[A-Z]+"),
                  hr.check.row_count(min=1), hr.check.expression("amount >= 0", name="non_negative"),
                  hr.check.relationships("person_id", to="bronze.people", severity="warn"),
                  # failing on purpose (warn), so failing counts and samples are compared too
                  hr.check.range("amount", max=200, severity="warn"),
                  hr.check.unique("person_id", "kind", severity="warn"),
                  hr.check.expression("kind = 'buy'", name="only_buys", severity="warn"),
                  hr.check.freshness("seen_at", max_age="3650 days", severity="warn"),
                  hr.check.volume_anomaly(metric="sum(amount)", method="pct_change", threshold=0.1,
                                          min_history=1, severity="warn")])
def bronze_events(raw):
    return "SELECT *, CAST(seen_at AS DATE) AS day FROM raw"


@hr.table("bronze.people", source=people, write=hr.Merge(keys=("person_id",), delete_when="s.op = 'D'"))
def bronze_people(raw):
    return raw


@hr.table("silver.events_by_day", inputs={"e": "bronze.events"}, write="overwrite_partitions",
          partition_by="day")
def by_day(e):
    return ("SELECT day, kind, count(*) AS n, CAST(sum(amount) AS DECIMAL(18, 2)) AS total "
            "FROM e GROUP BY day, kind")


@hr.table("silver.people_history", inputs={"p": "bronze.people"},
          write=hr.Scd2(key=("person_id",), track=("name", "tier")))
def history(p):
    return "SELECT person_id, name, tier FROM p"


@hr.table("gold.totals", inputs={"d": "silver.events_by_day"}, write="overwrite")
def totals(d):
    return "SELECT kind, CAST(sum(n) AS BIGINT) AS n, CAST(sum(total) AS DECIMAL(18, 2)) AS total FROM d GROUP BY kind"
'''


def _fixture_day(root: Path, day: int) -> None:
    lines = []
    for i in range(1, 41):
        eid = day * 1000 + i
        kind = "buy" if i % 3 else "view"
        amount = f"{(i * 7.25) % 900:.2f}"
        lines.append(f'{{"event_id": {eid}, "person_id": {1 + i % 6}, "kind": "{kind}", "amount": {amount}, '
                     f'"code": "ABC", "seen_at": "2026-0{day}-0{1 + i % 3} 10:00:0{i % 10}"}}')
    bad = [
        f'{{"event_id": {day * 1000 + 901}, "person_id": 1, "kind": "refund", "amount": 5, "code": "ABC", "seen_at": "2026-01-01 00:00:00"}}',
        f'{{"event_id": {day * 1000 + 902}, "person_id": 2, "kind": "buy", "amount": -1, "code": "abcd", "seen_at": "2026-01-01 00:00:00"}}',
        f'{{"event_id": {day * 1000 + 903}, "person_id": null, "kind": "view", "amount": "x", "code": "ABC", "seen_at": "later"}}',
        '{"event_id": 5, "truncated": ',
        f'{{"event_id": {day * 1000 + 1}, "person_id": 3, "kind": "buy", "amount": 1, "code": "ABC", "seen_at": "2026-01-01 00:00:00"}}',
    ]
    people = ["person_id,name,tier,op"] + [f"{p},Person {p}{'x' if day == 2 and p % 2 else ''},"
                                           f"{'gold' if p % 2 else 'silver'},{'D' if day == 2 and p == 6 else 'U'}"
                                           for p in range(1, 7)]
    if day == 2:
        people.append("7,Person 7,silver,U")
    people.append('8,"Person 8, of two\nlines",silver,U')  # a quoted field with a comma and a line break
    write_files(root, {f"data/events/day{day}.ndjson": "\n".join(lines + bad) + "\n",
                       f"data/people/people{day}.csv": "\n".join(people) + "\n"})
    if day == 2:
        (root / "data/people/people1.csv").unlink()


def test_every_write_mode_contract_rule_and_check_kind_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SPARK, "spark.local_threshold", 0)  # contracts and SCD2 on Spark, however small
    root = tmp_path / "modes"
    write_files(root, {"headrace.toml": FIXTURE_TOML, "pipelines/modes.py": FIXTURE})
    for day in (1, 2):
        _fixture_day(root, day)
        _both(root)
    from headrace.delta.catalog import Lake

    lake = Lake(root / "lake-spark")
    ws = _ws(root, "spark")
    try:
        failing = {c.name: c for c in ws.store.check_results(table="bronze.events") if not c.passed}
    finally:
        ws.close()
    assert {"range(amount, max=200)", "only_buys", "unique(person_id, kind)"} <= set(failing)
    assert all(c.sample for c in failing.values())
    assert "bronze.events__quarantine" in lake.list_tables()
    assert _digest(root / "lake-spark", "bronze.events__quarantine")[1] == 12  # 4 bad records and a duplicated key pair a day


def test_untranslatable_sql_names_the_model_and_construct(make_project: Any) -> None:
    root = make_project({
        "data/a.csv": "x,y\n1,2\n",
        "pipelines/p.py": 'import headrace as hr\nsrc = hr.files("data/a.csv", format="csv")\n'
                          '@hr.table("bronze.a", source=src)\ndef a(raw):\n    return raw\n',
        "models/silver/top.sql": "select arg_max(x, y, 3) as top from ref('bronze.a')\n",
    })
    result = _run(root, "spark")[0]
    failed = {t.table: t for t in result.tasks}
    assert failed["bronze.a"].status == "success"
    top = failed["silver.top"]
    assert top.status == "failed"
    assert "silver.top" in top.error and "Spark SQL" in top.error and "ArgMax" in top.error


def test_python_transform_gets_a_spark_dataframe(make_project: Any) -> None:
    root = make_project({
        "data/a.csv": "x,y\n1,2\n3,4\n",
        "pipelines/p.py": (
            'import headrace as hr\nsrc = hr.files("data/a.csv", format="csv")\n'
            '@hr.table("bronze.a", source=src)\n'
            'def a(raw):\n'
            '    from pyspark.sql import functions as F\n'
            '    return raw.withColumn("z", F.col("x") * 10).filter("y > 2")\n'),
    })
    result = _run(root, "spark")[0]
    assert result.ok, [t.error for t in result.tasks]
    from headrace.delta.catalog import Lake

    con = duckdb.connect()
    con.register("t", Lake(root / "lake-spark").snapshot("bronze.a").dataset())
    assert con.sql("SELECT x, y, z FROM t").fetchall() == [(3, 4, 30)]


def test_executor_failure_mid_write_publishes_nothing_and_vacuum_cleans(make_project: Any) -> None:
    root = make_project({
        "data/a.csv": "x\n" + "\n".join(str(i) for i in range(1, 201)) + "\n",
        "pipelines/p.py": (
            'import headrace as hr\nsrc = hr.files("data/a.csv", format="csv")\n'
            '@hr.table("bronze.a", source=src, retries=0)\n'
            'def a(raw, ctx):\n'
            '    import os\n'
            '    from pyspark.sql import functions as F\n'
            '    from pyspark.sql.types import LongType\n'
            '    fail = os.environ.get("HR_FAIL_AT")\n'
            '    def boom(x):\n'
            '        if fail and x == int(fail):\n'
            '            raise RuntimeError("executor lost")\n'
            '        return x\n'
            '    return raw.repartition(4).withColumn("x", F.udf(boom, LongType())("x"))\n'),
    })
    assert _run(root, "spark")[0].ok
    from headrace.delta.catalog import Lake

    lake = Lake(root / "lake-spark")
    assert lake.open("bronze.a").version() == 0
    os.environ["HR_FAIL_AT"] = "150"
    try:
        ws = _ws(root, "spark")
        try:
            failed = ws.run([], force=True)
        finally:
            ws.close()
    finally:
        del os.environ["HR_FAIL_AT"]
    assert not failed.ok and "executor lost" in (failed.tasks[0].error or "")
    assert lake.open("bronze.a").version() == 0  # nothing published
    table_dir = lake.path("bronze.a")
    assert len(list(table_dir.glob("stage-*"))) == 1  # the committed one; the failed stage is gone
    # a driver killed mid-write leaves attempt files behind: vacuum removes them
    crashed = table_dir / "stage-crashed" / "_temporary" / "0" / "task_1"
    crashed.mkdir(parents=True)
    (crashed / "part-00000.parquet").write_bytes(b"PAR1 partial")
    (table_dir / "stage-crashed" / ".part-00000.parquet.crc").write_bytes(b"x")
    from headrace.delta.maintenance import vacuum

    cleaned = vacuum(lake, "bronze.a", retention_hours=168, dry_run=False)
    assert "stage-crashed/.part-00000.parquet.crc" in cleaned.files
    assert not (table_dir / "stage-crashed").exists()
    assert lake.open("bronze.a").version() == 0
    assert len(list(table_dir.glob("stage-*"))) == 1


def test_missing_pyspark_is_a_clear_error(make_project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from headrace.engines.registry import create_engine
    from headrace.errors import EngineError

    for name in [m for m in sys.modules if m == "pyspark" or m.startswith("pyspark.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(EngineError) as info:
        create_engine("spark")
    assert "pyspark" in info.value.message and "headrace[spark]" in (info.value.hint or "")


def test_unreachable_master_is_an_error_not_a_hang(make_project: Any) -> None:
    root = make_project({
        "data/a.csv": "x\n1\n",
        "pipelines/p.py": 'import headrace as hr\nsrc = hr.files("data/a.csv", format="csv")\n'
                          '@hr.table("bronze.a", source=src, retries=0)\ndef a(raw):\n    return raw\n',
    }, toml='name = "p"\nengine = "spark"\n[spark]\nmaster = "spark://127.0.0.1:9"\nstart_timeout_seconds = 20\n')
    out = cli(root, "run", timeout=180)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "spark://127.0.0.1:9" in text and "Traceback" not in text


BACKFILL = '''
import headrace as hr

events = hr.files("data/events.csv", format="csv")


@hr.table("bronze.events", source=events, write="overwrite")
def bronze(raw):
    return raw


@hr.table("silver.daily", inputs={"e": "bronze.events"}, write="overwrite_partitions", partition_by="day")
def daily(e, ctx):
    return (f"SELECT CAST(day AS DATE) AS day, count(*) AS n FROM e "
            f"WHERE CAST(day AS DATE) = DATE '{ctx.ds}' GROUP BY 1")
'''


def test_backfill_behaves_the_same_on_spark(tmp_path: Path) -> None:
    from datetime import date

    from headrace.runner.backfill import backfill

    root = tmp_path / "bf"
    days = [f"2026-01-0{d}" for d in (1, 2, 3)]
    write_files(root, {"headrace.toml": 'name = "bf"\n', "pipelines/p.py": BACKFILL,
                       "data/events.csv": "id,day\n" + "\n".join(f"{i},{days[i % 3]}" for i in range(30)) + "\n"})
    tables = {}
    for engine in ("duckdb", "spark"):
        ws = _ws(root, engine)
        try:
            assert ws.run(["bronze.events"]).ok
            outcomes = list(backfill(ws, ["silver.daily"], date(2026, 1, 1), date(2026, 1, 3)))
            assert [o.status for o in outcomes] == ["success"] * 3
            # resumable: nothing is redone
            again = list(backfill(ws, ["silver.daily"], date(2026, 1, 1), date(2026, 1, 3)))
            assert [o.status for o in again] == ["success"] * 3, [(o.status, o.note) for o in again]
            assert all(t.status == "unchanged" for o in again for t in o.result.tasks), [
                (t.table, t.status, t.message) for o in again for t in o.result.tasks]
        finally:
            ws.close()
        tables[engine] = _digest(root / f"lake-{engine}", "silver.daily")
        from headrace.delta.catalog import Lake

        assert Lake(root / f"lake-{engine}").open("silver.daily").version() == 2  # one commit per date
    assert tables["duckdb"] == tables["spark"]
    assert tables["spark"][1] == 3


MERGE = '''
import headrace as hr

src = hr.files("data/*.csv", format="csv")


@hr.table("bronze.accounts", source=src, write=hr.Merge(keys=("id",), delete_when="s.op = 'D'"),
          partition_by="region")
def accounts(raw):
    return "SELECT id, name, region, op FROM raw"
'''


@pytest.mark.parametrize("threshold", [0, None], ids=["on-spark", "small-on-driver"])
def test_merge_is_a_copy_on_write_rewrite_on_spark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   threshold: int | None) -> None:
    """Updates (one moving to another partition), inserts, deletes and a NULL delete flag
    (an upsert) give the DuckDB engine's table; only the files holding merged keys are
    replaced, in one commit. Under ``[spark] local_threshold`` (default 64 MB) the driver
    merges as the DuckDB engine does (deltalake's MERGE), with the same table."""
    from headrace.delta.catalog import Lake

    if threshold is not None:
        monkeypatch.setitem(SPARK, "spark.local_threshold", threshold)

    root = tmp_path / "merge"
    first = "id,name,region,op\n" + "\n".join(f"{i},n{i},{'eu' if i % 2 else 'us'},U" for i in range(1, 41)) + "\n"
    write_files(root, {"headrace.toml": 'name = "m"\n', "pipelines/p.py": MERGE, "data/a.csv": first})
    _both(root)
    second = "id,name,region,op\n3,changed,us,U\n4,moved,eu,U\n5,x,eu,D\n41,new,us,U\n42,null-op,eu,\n"
    (root / "data" / "a.csv").write_text(second)
    _both(root)
    lake = Lake(root / "lake-spark")
    history = lake.history("bronze.accounts")
    # the engine's rewrite, or on the driver deltalake's merge
    assert (history[0].operation == "MERGE") == (threshold is None)
    con = duckdb.connect()
    con.register("t", lake.snapshot("bronze.accounts").dataset())
    rows = dict(con.sql("SELECT id, name || '/' || region FROM t").fetchall())
    assert len(rows) == 40 + 2 - 1
    assert rows[3] == "changed/us" and rows[4] == "moved/eu" and 5 not in rows
    assert rows[41] == "new/us" and rows[42] == "null-op/eu" and rows[6] == "n6/us"


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Spark Connect server (local[2]) on a free port, stopped by its process group."""
    import signal
    import socket
    import time

    import pyspark

    home = Path(pyspark.__file__).parent
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("connect") / "server.log"
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYSPARK_PYTHON": sys.executable}
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(home / "bin" / "spark-submit"), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
             "--master", "local[2]", "--conf", f"spark.connect.grpc.binding.port={port}",
             "--conf", "spark.ui.enabled=false", "spark-internal"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Spark Connect server started" not in log.read_text(errors="replace"):
            assert server.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the Spark Connect server did not start in 120 s"
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_spark_connect_remote_makes_the_same_tables(tmp_path: Path, connect_server: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``[spark] remote = "sc://..."``: the every-mode fixture through a Spark Connect server."""
    pytest.importorskip("grpc", reason="Spark Connect needs pyspark[connect]")
    monkeypatch.setitem(SPARK, "spark.remote", connect_server)
    monkeypatch.setitem(SPARK, "spark.local_threshold", 0)
    root = tmp_path / "modes"
    write_files(root, {"headrace.toml": FIXTURE_TOML, "pipelines/modes.py": FIXTURE})
    try:
        for day in (1, 2):
            _fixture_day(root, day)
            _both(root)
    finally:
        # pyspark switches the whole process to Connect mode; later tests start a local master
        for name in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE"):
            os.environ.pop(name, None)


def test_rows_in_counted_even_when_the_plan_prunes_the_source(make_project: Any) -> None:
    """A transform whose plan never scans its source (``WHERE false``) must neither hang
    waiting for the source's observed row count nor report a wrong one."""
    root = make_project({
        "data/a.csv": "x\n1\n2\n3\n",
        "pipelines/p.py": 'import headrace as hr\nsrc = hr.files("data/a.csv", format="csv")\n'
                          '@hr.table("bronze.none", source=src)\ndef none(raw):\n'
                          '    return "SELECT x FROM raw WHERE false"\n',
    })
    result = _run(root, "spark")[0]
    assert result.ok, [t.error for t in result.tasks]
    task = result.tasks[0]
    assert (task.rows_in, task.rows_out) == (3, 0)
