"""Personal data under ``mask=``: tables hold hashed, masked or redacted values, whatever the
transform does with the column; quarantined records show ``***`` in their place; the hashing
key comes from the environment and a new key recomputes the tables."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from headrace.errors import DefinitionError

from conftest import read_table, run_project

KEY = "a-secret-of-some-length"

PIPE = '''
import headrace as hr

people = hr.files("data/people.csv", format="csv")

CONTRACT = hr.Contract({
    "id": hr.Int64(key=True, min=1),
    "email": hr.String(pii="email", mask="hash"),
    "name": hr.String(pii="name", mask="mask"),
    "phone": hr.String(pii="phone", mask="redact"),
    "city": hr.String(),
}, on_violation="quarantine", max_quarantine_ratio=0.5)

@hr.table("bronze.people", source=people, write="overwrite", contract=CONTRACT)
def bronze_people(raw):
    # the transform renames the email: it is protected before the transform reads it
    return "SELECT id, email AS contact, name, phone, city, CAST(length(email) AS BIGINT) AS email_length FROM raw"

@hr.table("silver.labels", inputs={"p": "bronze.people"}, write="overwrite",
          contract=hr.Contract({"id": hr.Int64(key=True), "label": hr.String(mask="mask")},
                               on_violation="quarantine", max_quarantine_ratio=0.5))
def labels(p):
    return "SELECT id, city || '-' || CAST(id AS VARCHAR) AS label FROM p"
'''

PEOPLE = ("id,email,name,phone,city\n"
          "1,ann@example.com,Ann Smith,+49 151 1234567,Berlin\n"
          "2,bob@example.org,Bo,555-0100,Paris\n"
          "3,,Carla Jones,,Rome\n"
          "-4,dora@secret.net,Dora Secretname,+1 202 555 0199,Oslo\n")


def _digest(value: str, key: str = KEY) -> str:
    return hashlib.sha256(f"{key}:{value}".encode()).hexdigest()


def _every_text(root: Path) -> str:
    """Every value of every lake table (quarantine included) as one text."""
    from headrace.delta.catalog import Lake

    lake = Lake(root / "lake")
    con = duckdb.connect()
    texts = []
    for name in lake.list_tables():
        con.register("t", lake.snapshot(name).dataset())
        texts += [json.dumps(row, default=str) for row in con.sql("SELECT * FROM t").fetchall()]
    return "\n".join(texts)


def test_tables_hold_protected_values_and_quarantine_shows_stars(make_project: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADRACE_PII_KEY", KEY)
    root = make_project({"pipelines/p.py": PIPE, "data/people.csv": PEOPLE})
    result = run_project(root)
    assert result.ok, [(t.table, t.error) for t in result.tasks]
    rows = {r["id"]: r for r in read_table(root, "bronze.people")}
    assert set(rows) == {1, 2, 3}  # id -4 breaks min=1: quarantined
    assert rows[1]["contact"] == _digest("ann@example.com") and rows[2]["contact"] == _digest("bob@example.org")
    assert rows[3]["contact"] is None  # NULL stays NULL
    assert rows[1]["email_length"] == 64  # the transform itself saw the hash
    assert (rows[1]["name"], rows[2]["name"]) == ("*****mith", "**")
    assert all(r["phone"] is None for r in rows.values())
    assert rows[1]["city"] == "Berlin"  # unmarked columns as they were
    labels = {r["id"]: r["label"] for r in read_table(root, "silver.labels")}
    assert labels == {1: "****in-1", 2: "***is-2", 3: "**me-3"}  # a derived table's contract masks too

    quarantine = read_table(root, "bronze.people__quarantine")
    assert len(quarantine) == 1
    raw = quarantine[0]["raw_record"]
    assert raw == "-4,***,***,***,Oslo"  # the line, with each marked value starred
    everything = _every_text(root)
    for secret in ("ann@example.com", "Ann Smith", "151 1234567", "dora@secret.net", "Secretname", "555 0199"):
        assert secret not in everything, secret
    assert not list((root / ".headrace" / "tmp").rglob("*.parquet"))  # no raw rows left in the work folder


def test_the_key_is_required_and_a_new_key_recomputes(make_project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project({"pipelines/p.py": PIPE, "data/people.csv": PEOPLE})
    monkeypatch.delenv("HEADRACE_PII_KEY", raising=False)
    failed = run_project(root, "bronze.people")
    task = failed.tasks[0]
    assert task.status == "failed" and "HEADRACE_PII_KEY" in task.error and "email" in task.error
    assert not (root / "lake" / "bronze" / "people").exists()  # nothing written without the key
    monkeypatch.setenv("HEADRACE_PII_KEY", "short")
    assert "shorter than 16" in run_project(root, "bronze.people").tasks[0].error

    monkeypatch.setenv("HEADRACE_PII_KEY", KEY)
    assert run_project(root, "bronze.people").tasks[0].status == "success"
    assert run_project(root, "bronze.people").tasks[0].status == "unchanged"
    other = "another-secret-for-hashing"
    monkeypatch.setenv("HEADRACE_PII_KEY", other)
    assert run_project(root, "bronze.people").tasks[0].status == "success"  # another key, other hashes
    rows = {r["id"]: r["contact"] for r in read_table(root, "bronze.people")}
    assert rows[1] == _digest("ann@example.com", other)


@pytest.mark.parametrize(("options", "words"), [
    ({"mask": "hash"}, "String columns only"),
    ({"mask": "blur"}, "'hash', 'mask' or 'redact'"),
])
def test_mask_options_are_checked(options: dict[str, str], words: str) -> None:
    import headrace as hr

    with pytest.raises(DefinitionError) as info:
        hr.Int64(**options) if options["mask"] == "hash" else hr.String(**options)
    assert words in info.value.message
    with pytest.raises(DefinitionError, match="key column can only be masked with 'hash'"):
        hr.String(key=True, mask="redact")


@pytest.mark.spark
@pytest.mark.slow
def test_spark_protects_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both engines store the same hashes, masks and quarantine (validation in Spark tasks)."""
    pytest.importorskip("pyspark")
    from test_spark_engine import SPARK, _both

    from conftest import write_files

    monkeypatch.setenv("HEADRACE_PII_KEY", KEY)
    monkeypatch.setitem(SPARK, "spark.local_threshold", 0)
    root = tmp_path / "pii"
    write_files(root, {"headrace.toml": 'name = "pii"\n', "pipelines/p.py": PIPE, "data/people.csv": PEOPLE})
    _both(root)  # the same tables and quarantine on both engines
    from headrace.delta.catalog import Lake

    con = duckdb.connect()
    con.register("t", Lake(root / "lake-spark").snapshot("bronze.people").dataset())
    assert dict(con.sql("SELECT id, contact FROM t").fetchall())[1] == _digest("ann@example.com")


def test_quarantine_replay_refuses_starred_records(make_project: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import cli

    monkeypatch.setenv("HEADRACE_PII_KEY", KEY)
    root = make_project({"pipelines/p.py": PIPE, "data/people.csv": PEOPLE})
    assert run_project(root, "bronze.people").ok
    done = cli(root, "quarantine", "replay", "bronze.people", env={"HEADRACE_PII_KEY": KEY})
    assert done.returncode != 0
    assert "*** for personal data (email, name, phone)" in done.stdout + done.stderr
    assert len(read_table(root, "bronze.people__quarantine")) == 1  # the evidence stays
