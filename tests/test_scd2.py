"""SCD Type 2 write mode on real projects (DuckDB + Delta): exact histories, one commit per run,
idempotent replays, late rows, duplicate keys, the SQL header form, and files left alone."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from deltalake import DeltaTable

from headrace.errors import DefinitionError
from headrace.spec.write_modes import Scd2, write_mode_from_config

from conftest import read_table, run_project, table_version, write_files

TABLE = "dim.customers"


def pipeline(mode: str, *, partition_by: str | None = None, extra: str = "") -> str:
    part = f", partition_by={partition_by!r}" if partition_by else ""
    return f'''
import headrace as hr
from headrace.spec.write_modes import Scd2
src = hr.files("data/customers.csv", format="csv")

@hr.table("{TABLE}", source=src, write={mode}{part}{extra})
def customers(raw):
    return raw
'''


def csv(*rows: str, header: str = "id,name,city") -> str:
    return header + "\n" + "".join(r + "\n" for r in rows)


def history(root: Path, *cols: str, name: str = TABLE) -> list[tuple]:
    """(id, *cols, valid_from, valid_to, is_current) by id and valid_from; run times become
    t1, t2, ... in order, so histories written at the run's time compare exactly."""
    rows = read_table(root, name, order_by="id, valid_from")
    times = sorted({t for r in rows for t in (r["valid_from"], r["valid_to"]) if t is not None})
    label = {t: f"t{i + 1}" for i, t in enumerate(times)}
    return [
        (r["id"], *(r[c] for c in cols), label[r["valid_from"]], label.get(r["valid_to"]), r["is_current"])
        for r in rows
    ]


def dated(root: Path, *cols: str, name: str = TABLE) -> list[tuple]:
    """(id, *cols, valid_from, valid_to) with dates, for updated_at histories."""
    rows = read_table(root, name, order_by="id, valid_from")
    out = []
    for r in rows:
        vt = r["valid_to"].date().isoformat() if r["valid_to"] else None
        assert r["is_current"] == (vt is None)
        out.append((r["id"], *(r[c] for c in cols), r["valid_from"].date().isoformat(), vt))
    return out


def file_names(root: Path, name: str = TABLE) -> set[str]:
    dt_ = DeltaTable(str(root / "lake" / name.replace(".", "/")))
    return {Path(u).parent.name + "/" + Path(u).name for u in dt_.file_uris()}


def ok(result) -> None:
    assert result.status == "success", [t.error for t in result.tasks]


# ---- snapshot semantics (no updated_at) ---------------------------------------------------

def test_changes_inserts_and_deletes_close_in_one_commit(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"])'),
        "data/customers.csv": csv("1,ann,paris", "2,bob,rome", "3,cy,oslo"),
    })
    ok(run_project(root))
    assert table_version(root, TABLE) == 0
    assert history(root, "city") == [
        (1, "paris", "t1", None, True), (2, "rome", "t1", None, True), (3, "oslo", "t1", None, True)]
    rows = read_table(root, TABLE, order_by="id")
    assert list(rows[0]) == ["id", "name", "city", "valid_from", "valid_to", "is_current", "row_hash"]
    assert all(len(r["row_hash"]) == 32 for r in rows) and len({r["row_hash"] for r in rows}) == 3
    assert abs(rows[0]["valid_from"] - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(minutes=5)

    # day 2: 1 unchanged, 2 changed, 3 gone, 4 new
    write_files(root, {"data/customers.csv": csv("1,ann,paris", "2,bob,milan", "4,dee,lima")})
    r = run_project(root)
    ok(r)
    assert r.tasks[0].operation == "scd2"
    assert table_version(root, TABLE) == 1  # one commit for the whole run
    assert history(root, "city") == [
        (1, "paris", "t1", None, True),
        (2, "rome", "t1", "t2", False),
        (2, "milan", "t2", None, True),
        (3, "oslo", "t1", "t2", False),
        (4, "lima", "t2", None, True),
    ]
    meta = DeltaTable(str(root / "lake/dim/customers")).history(1)[0]
    assert meta["headrace.mode"] == "scd2"
    assert (meta["headrace.scd2_inserted"], meta["headrace.scd2_closed"]) == ("2", "2")

    # the same snapshot again, even forced through the engine: no version, no commit
    before = read_table(root, TABLE, order_by="id, valid_from")
    r = run_project(root, force=True)
    ok(r)
    assert r.tasks[0].status == "unchanged" and "no changes" in r.tasks[0].message
    assert table_version(root, TABLE) == 1
    assert read_table(root, TABLE, order_by="id, valid_from") == before
    # the same content in a new file (a new input batch) is also a no-op
    write_files(root, {"data/customers.csv": csv("4,dee,lima", "2,bob,milan", "1,ann,paris")})
    r = run_project(root)
    assert r.tasks[0].status == "unchanged" and table_version(root, TABLE) == 1

    # a deleted key comes back: a new current version after the gap
    write_files(root, {"data/customers.csv": csv("1,ann,paris", "2,bob,milan", "3,cy,oslo", "4,dee,lima")})
    ok(run_project(root))
    assert table_version(root, TABLE) == 2
    assert [h for h in history(root, "city") if h[0] == 3] == [
        (3, "oslo", "t1", "t2", False), (3, "oslo", "t3", None, True)]


def test_deletes_ignore_keeps_absent_keys_current(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"], deletes="ignore")'),
        "data/customers.csv": csv("1,ann,paris", "2,bob,rome"),
    })
    ok(run_project(root))
    write_files(root, {"data/customers.csv": csv("2,bob,milan")})
    ok(run_project(root))
    assert history(root, "city") == [
        (1, "paris", "t1", None, True), (2, "rome", "t1", "t2", False), (2, "milan", "t2", None, True)]
    # only key 1 absent again: nothing to do
    r = run_project(root, force=True)
    assert r.tasks[0].status == "unchanged" and table_version(root, TABLE) == 1


def test_only_tracked_columns_make_versions(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"], track=["city"])'),
        "data/customers.csv": csv("1,ann,paris", "2,bob,rome"),
    })
    ok(run_project(root))
    write_files(root, {"data/customers.csv": csv("1,ANN,paris", "2,bob,milan")})
    ok(run_project(root))
    # the name change of key 1 is not tracked: its version (and its old name) stay
    assert history(root, "name", "city") == [
        (1, "ann", "paris", "t1", None, True),
        (2, "bob", "rome", "t1", "t2", False),
        (2, "bob", "milan", "t2", None, True),
    ]


def test_changing_track_rehashes_once_without_new_versions(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"], track=["city"])'),
        "data/customers.csv": csv("1,ann,paris", "2,bob,rome"),
    })
    ok(run_project(root))
    hashes = {r["id"]: r["row_hash"] for r in read_table(root, TABLE)}
    write_files(root, {"pipelines/p.py": pipeline('Scd2(key=["id"], track=["city", "name"])')})
    r = run_project(root)
    ok(r)
    # the stored hashes are recomputed for the new tracked columns: no key gets a version
    assert table_version(root, TABLE) == 1
    assert history(root, "city") == [(1, "paris", "t1", None, True), (2, "rome", "t1", None, True)]
    rehashed = {r["id"]: r["row_hash"] for r in read_table(root, TABLE)}
    assert rehashed[1] != hashes[1]
    r = run_project(root, force=True)
    assert r.tasks[0].status == "unchanged" and table_version(root, TABLE) == 1
    write_files(root, {"data/customers.csv": csv("1,ANN,paris", "2,bob,rome")})
    ok(run_project(root))
    assert [h[:2] for h in history(root, "name")] == [(1, "ann"), (1, "ANN"), (2, "bob")]


def test_untouched_files_are_not_rewritten(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"])'),
        "data/customers.csv": csv("1,ann,paris", "2,bob,rome"),
    })
    ok(run_project(root))
    first = file_names(root)
    # new keys only: the existing file stays, one file is added
    write_files(root, {"data/customers.csv": csv("1,ann,paris", "2,bob,rome", "3,cy,oslo", "4,dee,lima")})
    ok(run_project(root))
    second = file_names(root)
    assert first < second and len(second - first) == 1
    added = second - first
    # a change to key 3: only the file holding its current version is rewritten
    write_files(root, {"data/customers.csv": csv("1,ann,paris", "2,bob,rome", "3,cy,bergen", "4,dee,lima")})
    ok(run_project(root))
    third = file_names(root)
    assert first <= third  # keys 1 and 2's file is untouched
    assert not (added & third)  # the file with key 3's version was replaced
    assert table_version(root, TABLE) == 2
    assert history(root, "city") == [
        (1, "paris", "t1", None, True), (2, "rome", "t1", None, True),
        (3, "oslo", "t2", "t3", False), (3, "bergen", "t3", None, True), (4, "lima", "t2", None, True),
    ]


def test_partitioned_table_rewrites_only_touched_partitions(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"])', partition_by="region"),
        "data/customers.csv": csv("1,ann,eu", "2,bob,us", "3,cy,eu", header="id,name,region"),
    })
    ok(run_project(root))
    first = file_names(root)
    assert {n.split("/")[0] for n in first} == {"region=eu", "region=us"}
    # key 2 changes its name; key 3 moves from eu to us
    write_files(root, {"data/customers.csv": csv("1,ann,eu", "2,bobby,us", "3,cy,us", header="id,name,region")})
    ok(run_project(root))
    rows = read_table(root, TABLE, order_by="id, valid_from")
    got = [(r["id"], r["name"], r["region"], r["is_current"]) for r in rows]
    assert got == [(1, "ann", "eu", True), (2, "bob", "us", False), (2, "bobby", "us", True),
                   (3, "cy", "eu", False), (3, "cy", "us", True)]
    # a name-only change in us leaves eu alone
    write_files(root, {"data/customers.csv": csv("1,ann,eu", "2,bobby,us", "3,cyd,us", header="id,name,region")})
    before = {n for n in file_names(root) if n.startswith("region=eu")}
    ok(run_project(root))
    assert {n for n in file_names(root) if n.startswith("region=eu")} == before
    assert table_version(root, TABLE) == 2


# ---- updated_at: version times from the data, late rows -----------------------------------

PIPE_TS = pipeline('Scd2(key=["id"], track=["city"], updated_at="updated_at", deletes="ignore")')


def test_updated_at_versions_and_late_rows_split_history(make_project):
    root = make_project({
        "pipelines/p.py": PIPE_TS,
        # two versions of key 1 in one batch; an identical row twice is one version
        "data/customers.csv": csv("1,a,2024-01-01", "1,c,2024-01-10", "2,x,2024-01-01", "2,x,2024-01-01",
                                  header="id,city,updated_at"),
    })
    ok(run_project(root))
    assert dated(root, "city") == [
        (1, "a", "2024-01-01", "2024-01-10"), (1, "c", "2024-01-10", None), (2, "x", "2024-01-01", None)]
    # a late update for key 1 falls inside its first version: split it
    write_files(root, {"data/customers.csv": csv("1,b,2024-01-05", header="id,city,updated_at")})
    ok(run_project(root))
    assert table_version(root, TABLE) == 1
    assert dated(root, "city") == [
        (1, "a", "2024-01-01", "2024-01-05"), (1, "b", "2024-01-05", "2024-01-10"),
        (1, "c", "2024-01-10", None), (2, "x", "2024-01-01", None)]
    # late rows equal to the version they fall into, and a replay: nothing to do
    write_files(root, {"data/customers.csv": csv("1,a,2024-01-03", "1,c,2024-01-10", "2,x,2024-01-02",
                                                 header="id,city,updated_at")})
    r = run_project(root)
    assert r.tasks[0].status == "unchanged" and table_version(root, TABLE) == 1
    # earlier than everything: a first version before the existing ones; and a newer version
    write_files(root, {"data/customers.csv": csv("2,w,2023-12-01", "2,y,2024-02-01",
                                                 header="id,city,updated_at")})
    ok(run_project(root))
    assert [h for h in dated(root, "city") if h[0] == 2] == [
        (2, "w", "2023-12-01", "2024-01-01"), (2, "x", "2024-01-01", "2024-02-01"), (2, "y", "2024-02-01", None)]
    # a new value at an existing version's time corrects that version
    write_files(root, {"data/customers.csv": csv("2,xx,2024-01-01", header="id,city,updated_at")})
    ok(run_project(root))
    assert [h for h in dated(root, "city") if h[0] == 2] == [
        (2, "w", "2023-12-01", "2024-01-01"), (2, "xx", "2024-01-01", "2024-02-01"),
        (2, "y", "2024-02-01", None)]
    assert table_version(root, TABLE) == 3


def test_updated_at_with_deletes_close_and_late_row_before_the_delete(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"], updated_at="updated_at")'),
        "data/customers.csv": csv("1,a,2024-01-01", "2,x,2024-01-01", header="id,city,updated_at"),
    })
    ok(run_project(root))
    # key 2 is gone from the snapshot: closed at the run's time
    write_files(root, {"data/customers.csv": csv("1,a,2024-01-01", header="id,city,updated_at")})
    ok(run_project(root))
    rows = read_table(root, TABLE, order_by="id, valid_from")
    closed = rows[1]
    assert closed["id"] == 2 and closed["is_current"] is False
    deleted_at = closed["valid_to"]
    assert abs(deleted_at - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(minutes=5)
    # a late change of key 2 from before its deletion: inserted, still ending at the deletion
    write_files(root, {"data/customers.csv": csv("1,a,2024-01-01", "2,z,2024-01-05", header="id,city,updated_at")})
    ok(run_project(root))
    rows = [r for r in read_table(root, TABLE, order_by="id, valid_from") if r["id"] == 2]
    assert [(r["city"], r["valid_from"], r["valid_to"], r["is_current"]) for r in rows] == [
        ("x", dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 5), False),
        ("z", dt.datetime(2024, 1, 5), deleted_at, False),
    ]


# ---- bad input -------------------------------------------------------------------------

def test_duplicate_keys_without_updated_at_fail_and_publish_nothing(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"])'),
        "data/customers.csv": csv("1,ann,paris"),
    })
    ok(run_project(root))
    write_files(root, {"data/customers.csv": csv("1,ann,rome", "1,ann,oslo", "2,bob,rome", "7,g,x", "7,g,x")})
    r = run_project(root)
    assert r.status == "failed"
    err = r.tasks[0].error
    assert "not unique" in err and "2 duplicated key(s)" in err and "(id=1)" in err and "(id=7)" in err
    assert r.tasks[0].attempts == 1  # a data problem is not retried
    assert table_version(root, TABLE) == 0
    assert history(root, "city") == [(1, "paris", "t1", None, True)]
    lake_dir = root / "lake/dim/customers"
    committed = {Path(u).name for u in DeltaTable(str(lake_dir)).file_uris()}
    assert {p.name for p in lake_dir.glob("*.parquet")} == committed  # staged files discarded


def test_same_key_and_updated_at_with_different_values_fails(make_project):
    root = make_project({
        "pipelines/p.py": PIPE_TS,
        "data/customers.csv": csv("1,a,2024-01-01", "1,b,2024-01-01", "2,x,2024-01-01",
                                  header="id,city,updated_at"),
    })
    r = run_project(root)
    assert r.status == "failed"
    assert "same 'updated_at' but different tracked values" in r.tasks[0].error
    assert "id=1" in r.tasks[0].error
    assert not (root / "lake/dim/customers/_delta_log").exists()


def test_null_keys_fail(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"])'),
        "data/customers.csv": csv("1,ann,paris", ",bob,rome"),
    })
    r = run_project(root)
    assert r.status == "failed" and "NULL scd2 key" in r.tasks[0].error


def test_new_column_is_refused_with_a_hint_and_discard_drops_it(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"])'),
        "data/customers.csv": csv("1,ann,paris"),
    })
    ok(run_project(root))
    write_files(root, {"data/customers.csv": csv("1,ann,paris,x", header="id,name,city,extra")})
    r = run_project(root)
    assert r.status == "failed" and "new columns ['extra']" in r.tasks[0].error
    write_files(root, {"pipelines/p.py": pipeline('Scd2(key=["id"])', extra=', schema="discard"')})
    r = run_project(root)
    assert r.tasks[0].status == "unchanged" and table_version(root, TABLE) == 0


def test_reserved_and_missing_columns(make_project):
    root = make_project({
        "pipelines/p.py": pipeline('Scd2(key=["id"])'),
        "data/customers.csv": csv("1,ann,true", header="id,name,is_current"),
    })
    r = run_project(root)
    assert r.status == "failed" and "which an scd2 table writes itself" in r.tasks[0].error
    write_files(root, {"pipelines/p.py": pipeline('Scd2(key=["id"], track=["nope"])'),
                       "data/customers.csv": csv("1,ann,paris")})
    r = run_project(root)
    assert r.status == "failed" and "track column(s) ['nope'] are not in the result" in r.tasks[0].error


# ---- definitions -------------------------------------------------------------------------

def test_scd2_arguments_are_validated():
    assert Scd2(key="id") == Scd2(key=["id"])
    assert Scd2(key=["id"], track=["a", "b"]).track == ("a", "b")
    assert Scd2(key=["id"]).keys == ("id",)
    cases = [
        ({}, "at least one key"),
        ({"key": ["id"], "deletes": "drop"}, "deletes must be one of close, ignore"),
        ({"key": ["id"], "track": ["id", "a"]}, "also in track"),
        ({"key": ["id"], "track": []}, "track is empty"),
        ({"key": ["id"], "updated_at": "ts", "track": ["ts"]}, "also in track"),
        ({"key": ["valid_from"]}, "written by headrace"),
        ({"key": [1]}, "must be a column name"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DefinitionError, match=message) as info:
            Scd2(**kwargs)
        assert info.value.hint
    assert write_mode_from_config("scd2", {"keys": ["id"]}) == Scd2(key=("id",))
    with pytest.raises(DefinitionError, match="invalid options") as info:
        write_mode_from_config("scd2", {"key": ["id"], "trak": "all"})
    assert "scd2 takes key, track, updated_at and deletes" in (info.value.hint or "")


def test_sql_header_form(make_project):
    model = """\
/* headrace
write = "scd2"
key = ["id"]
track = ["city"]
updated_at = "updated_at"
deletes = "ignore"
*/
select * from source('customers_raw')
"""
    root = make_project({
        "pipelines/sources.py": 'import headrace as hr\ncustomers_raw = hr.files("data/customers.csv", format="csv")\n',
        "models/dim/customers.sql": model,
        "data/customers.csv": csv("1,ann,paris,2024-01-01", "2,bob,rome,2024-01-01", header="id,name,city,updated_at"),
    })
    ok(run_project(root))
    write_files(root, {"data/customers.csv": csv("1,ANN,paris,2024-01-02", "2,bob,milan,2024-01-03",
                                                 header="id,name,city,updated_at")})
    ok(run_project(root))
    assert dated(root, "city") == [
        (1, "paris", "2024-01-01", None), (2, "rome", "2024-01-01", "2024-01-03"), (2, "milan", "2024-01-03", None)]
    import headrace as hr
    from headrace.project.sql_models import parse_model

    sources = {"customers_raw": hr.files("data/customers.csv", format="csv")}
    spec = parse_model(root / "models/dim/customers.sql", models_dir=root / "models", sources=sources)
    assert spec.write == Scd2(key=("id",), track=("city",), updated_at="updated_at", deletes="ignore")


def test_sql_header_rejects_a_bad_deletes(make_project):
    from headrace.project.sql_models import parse_model

    root = make_project({"models/x.sql": '/* headrace\nwrite = "scd2"\nkey = "id"\ndeletes = "never"\n*/\nselect 1 as id\n'})
    with pytest.raises(DefinitionError, match="deletes must be one of") as info:
        parse_model(root / "models/x.sql", models_dir=root / "models", sources={})
    assert "x.sql:2" in info.value.message


def test_builder_keys_shorthand(make_project):
    pipe = '''
import headrace as hr
src = hr.files("data/customers.csv", format="csv")

@hr.table("dim.customers", source=src, write="scd2", keys=["id"])
def customers(raw):
    return raw
'''
    root = make_project({"pipelines/p.py": pipe, "data/customers.csv": csv("1,ann,paris")})
    ok(run_project(root))
    assert history(root, "city") == [(1, "paris", "t1", None, True)]



def test_composite_key_partition_column_in_key_and_timestamptz(make_project):
    pipe = pipeline('Scd2(key=["region", "id"], updated_at="ts", deletes="ignore")', partition_by="region")
    header = "region,id,city,ts"
    root = make_project({
        "pipelines/p.py": pipe,
        "data/customers.csv": csv("eu,1,paris,2024-01-01 10:00:00+02", "us,1,austin,2024-01-01 10:00:00+00",
                                  header=header),
    })
    ok(run_project(root))
    rows = read_table(root, TABLE, order_by="region, id, valid_from")
    # a time zone-aware updated_at is stored as UTC
    assert [(r["region"], r["valid_from"]) for r in rows] == [
        ("eu", dt.datetime(2024, 1, 1, 8)), ("us", dt.datetime(2024, 1, 1, 10))]
    us_files = {n for n in file_names(root) if n.startswith("region=us")}
    write_files(root, {"data/customers.csv": csv("eu,1,lyon,2024-01-02 00:00:00+00", header=header)})
    ok(run_project(root))
    rows = read_table(root, TABLE, order_by="region, id, valid_from")
    assert [(r["region"], r["id"], r["city"], r["valid_to"]) for r in rows] == [
        ("eu", 1, "paris", dt.datetime(2024, 1, 2)), ("eu", 1, "lyon", None), ("us", 1, "austin", None)]
    assert {n for n in file_names(root) if n.startswith("region=us")} == us_files


def _reference(history: dict[int, list[tuple[int, str]]], batch: dict[int, dict[int, str]]) -> None:
    """The updated_at rules in plain Python, on {key: [(day, value)]} (deletes="ignore"): at one
    time a new value replaces the stored one; consecutive equal versions collapse, keeping the
    stored one when there is one (a late row equal to a neighbour is a no-op), else the first."""
    for key, points in batch.items():
        stored = dict(history.get(key, []))
        events = []
        for day in sorted(set(stored) | set(points)):
            if day in points and points[day] != stored.get(day):
                events.append((day, "new", points[day]))
            else:
                events.append((day, "old", stored[day]) if day in stored else (day, "new", points[day]))
        kept: list[tuple[int, str, str]] = []
        run: list[tuple[int, str, str]] = []
        for event in [*events, (0, "end", None)]:
            if run and (event[1] == "end" or event[2] != run[-1][2]):
                olds = [e for e in run if e[1] == "old"]
                kept.extend(olds or run[:1])
                run = []
            run.append(event)
        history[key] = [(day, value) for day, _, value in kept]


def test_updated_at_matches_a_reference_model_on_random_batches(make_project):
    import random

    rng = random.Random(20240601)
    header = "id,city,updated_at"
    root = make_project({"pipelines/p.py": PIPE_TS, "data/customers.csv": csv(header=header)})
    history: dict[int, list[tuple[int, str]]] = {}
    seen: list[tuple[int, int, str]] = []
    for _ in range(12):
        batch: dict[int, dict[int, str]] = {}
        for key in rng.sample(range(1, 7), rng.randint(1, 4)):
            for day in rng.sample(range(1, 21), rng.randint(1, 3)):
                batch.setdefault(key, {})[day] = rng.choice("abc")
        if seen and rng.random() < 0.5:  # replay a point already loaded
            key, day, value = rng.choice(seen)
            batch.setdefault(key, {})[day] = value
        lines = [f"{k},{v},2024-01-{d:02d}" for k, points in batch.items() for d, v in points.items()]
        write_files(root, {"data/customers.csv": csv(*lines, header=header)})
        r = run_project(root)
        assert r.status == "success", r.tasks[0].error
        _reference(history, batch)
        seen += [(k, d, v) for k, points in batch.items() for d, v in points.items()]
        want = []
        for key in sorted(history):
            points = history[key]
            for i, (day, value) in enumerate(points):
                end = f"2024-01-{points[i + 1][0]:02d}" if i + 1 < len(points) else None
                want.append((key, value, f"2024-01-{day:02d}", end))
        assert dated(root, "city") == want


def test_columns_named_like_the_change_sets_own_columns(make_project):
    """Keys and tracked columns may be called kind, t, h, f, r, vf, vt, n...: the change set's
    own columns are all ``__hr_``-prefixed, so they never shadow a user's column."""
    pipe = pipeline('Scd2(key=["kind", "t"], track=["h", "vf"], updated_at="updated_at", deletes="ignore")')
    header = "kind,t,h,vf,updated_at"
    root = make_project({"pipelines/p.py": pipe,
                         "data/customers.csv": csv("a,1,x,p,2024-01-01", "a,1,y,p,2024-01-10", "b,2,x,q,2024-01-01",
                                                   header=header)})
    ok(run_project(root))
    write_files(root, {"data/customers.csv": csv("a,1,z,p,2024-01-05", header=header)})  # late: splits
    ok(run_project(root))
    rows = read_table(root, TABLE, order_by="kind, t, valid_from")
    got = [(r["kind"], r["t"], r["h"], r["valid_from"].date().isoformat(),
            r["valid_to"].date().isoformat() if r["valid_to"] else None) for r in rows]
    assert got == [("a", 1, "x", "2024-01-01", "2024-01-05"), ("a", 1, "z", "2024-01-05", "2024-01-10"),
                   ("a", 1, "y", "2024-01-10", None), ("b", 2, "x", "2024-01-01", None)]
