"""``headrace optimize``: small files compacted in one commit per table that changes no rows;
runs afterwards see their inputs unchanged, append tables still skip what they hold, SCD2
history continues as it would have without the compaction."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from conftest import cli, read_table, run_project, table_version

PIPE = '''
import headrace as hr

events = hr.files("data/events/*.csv", format="csv")

@hr.table("bronze.events", source=events, write="append", partition_by="day")
def bronze_events(raw):
    return "SELECT id, CAST(day AS DATE) AS day, kind, amount FROM raw"

@hr.table("silver.kinds", inputs={"e": "bronze.events"}, write=hr.Scd2(key=("id",), track=("kind",)))
def kinds(e):
    return "SELECT id, arg_max(kind, day) AS kind FROM e GROUP BY id"

@hr.table("gold.totals", inputs={"e": "bronze.events"}, write="overwrite")
def totals(e):
    return "SELECT day, CAST(sum(amount) AS BIGINT) AS amount, count(*) AS n FROM e GROUP BY day"
'''


def _events(root: Path, n: int) -> None:
    """The n-th delivery: 6 rows over two days; ids 1-4 change kind now and then."""
    lines = ["id,day,kind,amount"]
    for i in range(6):
        ident = 1 + (n * 6 + i) % 9
        lines.append(f"{ident},2026-01-0{1 + i % 2},{'buy' if (n + ident) % 3 else 'view'},{n * 10 + i}")
    path = root / "data" / "events" / f"e{n}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _files(root: Path, name: str) -> int:
    return len(DeltaTable(str(root / "lake" / name.replace(".", "/"))).file_uris())


def _rows(root: Path, name: str) -> Counter[str]:
    return Counter(json.dumps(r, sort_keys=True, default=str) for r in read_table(root, name))


def _history(root: Path) -> list[tuple[int, str, bool]]:
    return sorted((r["id"], r["kind"], r["is_current"]) for r in read_table(root, "silver.kinds"))


def _deliver(root: Path, n: int) -> None:
    _events(root, n)
    result = run_project(root)
    assert result.ok, [(t.table, t.error) for t in result.tasks]


def test_compaction_changes_files_not_rows_and_runs_carry_on(make_project) -> None:
    root = make_project({"pipelines/p.py": PIPE})
    control = make_project({"pipelines/p.py": PIPE}, name="control")  # the same deliveries, never compacted
    for n in range(4):
        _deliver(root, n)
        _deliver(control, n)
    tables = ["bronze.events", "silver.kinds", "gold.totals"]
    rows = {t: _rows(root, t) for t in tables}
    versions = {t: table_version(root, t) for t in tables}
    assert _files(root, "bronze.events") == 8  # a file per day per delivery

    done = cli(root, "optimize", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = {r["table"]: r for r in json.loads(done.stdout)}
    events = report["bronze.events"]
    assert (events["files_before"], events["files_after"], events["partitions"]) == (8, 2, 2)
    assert events["version"] == versions["bronze.events"] + 1
    assert _files(root, "bronze.events") == 2
    history = DeltaTable(str(root / "lake/bronze/events")).history(1)[0]
    assert history["operation"] == "OPTIMIZE" and history["headrace.maintenance"] == "optimize"
    for t in tables:  # the same rows, whatever was compacted
        assert _rows(root, t) == rows[t]
    assert report["gold.totals"]["files_after"] == 1
    again = json.loads(cli(root, "optimize", "--json").stdout)  # compact already: no commit at all
    assert [(r["table"], r["version"]) for r in again] == [(r["table"], None) for r in again]
    versions = {t: table_version(root, t) for t in tables}

    # the next run finds every input unchanged: a compaction is no new data
    rerun = run_project(root)
    assert {t.table: t.status for t in rerun.tasks} == dict.fromkeys(tables, "unchanged")
    assert {t: table_version(root, t) for t in tables} == versions
    # new data: the append ledger and the SCD2 history go on as without the compaction
    _deliver(root, 4)
    _deliver(control, 4)
    assert len(read_table(root, "bronze.events")) == 5 * 6  # each delivery once
    assert _history(root) == _history(control)
    assert read_table(root, "gold.totals", order_by="day") == read_table(control, "gold.totals", order_by="day")


def test_dry_run_zorder_and_bad_requests(make_project) -> None:
    root = make_project({"pipelines/p.py": PIPE})
    for n in range(3):
        _deliver(root, n)
    before = table_version(root, "bronze.events")
    dry = cli(root, "optimize", "bronze.events", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    (planned,) = json.loads(dry.stdout)
    assert (planned["files_rewritten"], planned["partitions"], planned["version"]) == (6, 2, None)
    assert table_version(root, "bronze.events") == before  # nothing written

    rows = sorted(map(str, read_table(root, "bronze.events")))
    zorder = cli(root, "optimize", "bronze.events", "--zorder", "kind,id", "--json")
    assert zorder.returncode == 0, zorder.stderr
    assert json.loads(zorder.stdout)[0]["files_after"] == 2
    assert sorted(map(str, read_table(root, "bronze.events"))) == rows
    assert DeltaTable(str(root / "lake/bronze/events")).history(1)[0]["headrace.zorder"] == "kind,id"
    text = cli(root, "optimize", "bronze.events")  # already compact: said so, no commit
    assert text.returncode == 0 and "nothing to compact" in text.stdout
    assert table_version(root, "bronze.events") == before + 1

    for args, words in [
        (["bronze.event"], ["does not exist", "bronze.events"]),
        (["bronze.events", "--zorder", "knd"], ["no column 'knd'", "kind"]),
        (["bronze.events", "--zorder", "day"], ["partition column"]),
        (["--target-size", "big"], ["not a size"]),
    ]:
        bad = cli(root, "optimize", *args)
        assert bad.returncode != 0, args
        message = bad.stdout + bad.stderr
        assert all(w in message for w in words), message
        assert "Traceback" not in message


@pytest.mark.parametrize("size", ["1KB"])
def test_target_size_limits_what_is_merged(make_project, size: str) -> None:
    """Files already at the target size are left alone."""
    root = make_project({"pipelines/p.py": PIPE})
    for n in range(3):
        _deliver(root, n)
    done = cli(root, "optimize", "bronze.events", "--target-size", size, "--json")
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert result["files_rewritten"] == 0 and result["version"] is None  # each file is over 1 KB already
