"""Data contracts: the typed spec, the raw reader that never loses a record, validation.

Real DuckDB over files written to tmp_path; no headrace runs (the runner integrates these).
"""

from __future__ import annotations

import datetime as dt
import decimal
import gzip
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headrace.errors import DataQualityError, DefinitionError
from headrace.quality.contracts import (
    QUARANTINE_COLUMNS,
    check_contract_against_columns,
    check_outcome,
    open_raw_reader,
    plan_validation,
    probe_file,
    validate_files,
    validation_sql,
)
from headrace.spec.contracts import (
    Bool,
    Contract,
    Date,
    Decimal,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    List,
    String,
    Struct,
    Timestamp,
    contract_from_config,
    parse_type,
)
from headrace.spec.sources import FileSource

UTC = dt.UTC
NDJSON = FileSource(path="*.ndjson", format="ndjson")


@pytest.fixture
def con():
    connection = duckdb.connect(config={"threads": 2})
    yield connection
    connection.close()


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def violations(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(v["column"], v["rule"], v["message"]) for v in items]


def raw_rows(con, spec: FileSource, files: list[Path], **kw: Any) -> tuple[tuple[str, ...], list]:
    with open_raw_reader(con, spec, files, **kw) as raw:
        rows = con.execute(f"SELECT * FROM ({raw.sql}) ORDER BY __hr_file, __hr_line").fetchall()
        return raw.fields, rows


def run(con, spec: FileSource, files: list[Path], contract: Contract, *, duplicates="window"):
    """Validate and return (batch, good rows ordered, quarantine rows ordered by file/line)."""
    batch = validate_files(con, spec, files, contract, table="hr_checked", duplicates=duplicates)
    good = con.execute(f"SELECT * FROM ({batch.good_sql()}) ORDER BY ALL").fetchall()
    bad = [
        (Path(f).name, line, raw, violations(v))
        for f, line, raw, v in con.execute(
            f"SELECT * FROM ({batch.quarantine_sql()}) ORDER BY __hr_file, __hr_line"
        ).fetchall()
    ]
    assert batch.rows == len(good) + len(bad)
    assert batch.quarantined == len(bad)
    return batch, good, bad


# ---- the spec --------------------------------------------------------------------------------


def test_duckdb_types_of_every_column_type():
    assert [
        t.duckdb_type()
        for t in (
            Int8(),
            Int16(),
            Int32(),
            Int64(),
            Float32(),
            Float64(),
            Decimal(12, 2),
            String(),
            Bool(),
            Date(),
            Timestamp(),
            Timestamp(tz="UTC"),
            List(Int64()),
            Struct({"a": String(), "b c": List(Decimal(5, 1))}),
        )
    ] == [
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "FLOAT",
        "DOUBLE",
        "DECIMAL(12,2)",
        "VARCHAR",
        "BOOLEAN",
        "DATE",
        "TIMESTAMP",
        "TIMESTAMPTZ",
        "BIGINT[]",
        'STRUCT("a" VARCHAR, "b c" DECIMAL(5,1)[])',
    ]


def test_contract_is_frozen_hashable_and_ordered():
    c = Contract({"b": Int64(key=True), "a": String(accepted=["x", "y"])}, schema="freeze")
    assert c.names == ("b", "a")
    assert c.keys == ("b",)
    assert c == Contract({"b": Int64(key=True), "a": String(accepted=("x", "y"))}, schema="freeze")
    assert hash(c) == hash(Contract({"b": Int64(key=True), "a": String(accepted=("x", "y"))}, schema="freeze"))
    assert repr(Decimal(12, 2, min=0)) == "Decimal(12, 2, min=0)"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Contract({"a": Int64()}, max_quarantine_ratio=1.5), "max_quarantine_ratio must be a number in [0, 1]"),
        (lambda: Contract({"a": Int64()}, max_quarantine_ratio=-0.1), "max_quarantine_ratio"),
        (lambda: Contract({"a": Int64()}, max_quarantine_ratio=True), "max_quarantine_ratio"),
        (lambda: Contract({"a": String(regex="(")}), "regex '(' does not compile"),
        (lambda: Contract({"a": Int64(min=5, max=1)}), "min 5 is greater than max 1"),
        (lambda: Date(min="2024-02-01", max="2024-01-01"), "is greater than max"),
        (lambda: Timestamp(min="2024-01-01 10:00", max="2024-01-01 09:00"), "is greater than max"),
        (lambda: String(accepted=[]), "accepted is empty"),
        (lambda: String(accepted="abc"), "accepted must be a list"),
        (lambda: String(max_length=0), "max_length must be a positive integer"),
        (lambda: Decimal(0, 0), "precision must be an integer in 1..38"),
        (lambda: Decimal(39, 2), "precision must be an integer in 1..38"),
        (lambda: Decimal(10, 11), "scale must be an integer in 0..precision (10)"),
        (lambda: Decimal(10, -1), "scale must be an integer in 0..precision"),
        (lambda: Contract({"a": Int64()}, on_violation="quarantin"), "unknown on_violation 'quarantin'. Did you mean 'quarantine'?"),
        (lambda: Contract({"a": Int64()}, schema="frozen"), "unknown schema 'frozen'. Did you mean 'freeze'?"),
        (lambda: Contract({}), "at least one column"),
        (lambda: Contract({"__hr_line": Int64()}), "reserved"),
        (lambda: Contract({"a": Int64(), "A": String()}), "declared twice"),
        (lambda: Contract({"a": "int64"}), "is not a column type"),
        (lambda: String(min=1), "min/max apply to numbers, dates and timestamps"),
        (lambda: Int64(regex="x"), "regex/max_length apply to String columns"),
        (lambda: Int64(min="ten"), "min 'ten' is not a number"),
        (lambda: Date(min="2024-13-01"), "is not an ISO date"),
        (lambda: Bool(accepted=["yes"]), "is not true/false"),
        (lambda: Timestamp(tz="Mars/Olympus"), "unknown time zone"),
        (lambda: List(Int64(min=0)), "options on nested item types are not checked"),
        (lambda: Struct({}), "at least one field"),
    ],
)
def test_definition_errors(build, message):
    with pytest.raises(DefinitionError) as err:
        build()
    assert message in str(err.value)
    assert err.value.hint is None or err.value.hint


def test_contract_from_config_matches_python_contract():
    config = {
        "on_violation": "quarantine",
        "max_quarantine_ratio": 0.05,
        "schema": "freeze",
        "columns": {
            "order_id": {"type": "int64", "key": True},
            "amount": {"type": "decimal(12,2)", "min": 0},
            "ts": {"type": "timestamp", "tz": "UTC"},
            "tags": {"type": "list<string>"},
            "email": {"type": "string", "regex": "^.+@.+$", "pii": "email"},
        },
    }
    assert contract_from_config(config, where="headrace.toml [sources.orders]") == Contract(
        {
            "order_id": Int64(key=True),
            "amount": Decimal(12, 2, min=0),
            "ts": Timestamp(tz="UTC"),
            "tags": List(String()),
            "email": String(regex="^.+@.+$", pii="email"),
        },
        on_violation="quarantine",
        max_quarantine_ratio=0.05,
        schema="freeze",
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("INT8", Int8()),
        ("Int16", Int16()),
        ("integer", Int32()),
        ("BIGINT", Int64()),
        ("float", Float32()),
        ("Double", Float64()),
        ("float64", Float64()),
        ("Decimal(38, 10)", Decimal(38, 10)),
        ("decimal(5)", Decimal(5, 0)),
        ("TEXT", String()),
        ("varchar", String()),
        ("Boolean", Bool()),
        ("date", Date()),
        ("timestamp", Timestamp()),
        ("TIMESTAMPTZ", Timestamp(tz="UTC")),
        ("list<int64>", List(Int64())),
        ("LIST<list<Date>>", List(List(Date()))),
        ("struct<a: int32, b: list<string>>", Struct({"a": Int32(), "b": List(String())})),
        ('struct<"odd name": bool>', Struct({"odd name": Bool()})),
    ],
)
def test_type_names_are_case_insensitive(name, expected):
    assert parse_type(name) == expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"columns": {"a": {"type": "int65"}}}, "t.toml: column 'a': type 'int65': unknown type 'int65'. Did you mean 'int64'?"),
        ({"columns": {"a": {"type": "strng"}}}, "Did you mean 'string'?"),
        ({"columns": {"a": {"type": "list<int"}}}, "column 'a': type 'list<int': expected >"),
        ({"columns": {"a": {"type": "decimal(40,2)"}}}, "column 'a': type 'decimal(40,2)': decimal precision"),
        ({"columns": {"a": {"type": "int64", "mni": 1}}}, "t.toml: column 'a': unknown setting 'mni'. Did you mean 'min'?"),
        ({"columns": {"a": {"key": True}}}, "column 'a': missing setting 'type'"),
        ({"columns": {"a": {"type": "string", "tz": "UTC"}}}, "column 'a': setting 'tz' applies to timestamp columns only"),
        ({"columns": {"a": {"type": "int64", "key": "yes"}}}, "column 'a': setting 'key' must be true or false"),
        ({"columns": {"a": {"type": "int64", "min": 3, "max": 1}}}, "column 'a': BIGINT: min 3 is greater than max 1"),
        ({"columns": {"a": 5}}, "column 'a': expected a table of settings or a type name"),
        ({"colums": {"a": "int"}}, "t.toml: unknown contract setting 'colums'. Did you mean 'columns'?"),
        ({"columns": {}}, "t.toml: contract needs a non-empty 'columns' table"),
        ({"columns": {"a": "int"}, "schema": "evolv"}, "t.toml: unknown schema 'evolv'. Did you mean 'evolve'?"),
        ({"columns": {"a": "int"}, "on_violation": "fial"}, "unknown on_violation 'fial'. Did you mean 'fail'?"),
        ({"columns": {"a": "int"}, "max_quarantine_ratio": 7}, "t.toml: max_quarantine_ratio must be"),
    ],
)
def test_contract_from_config_errors_name_where_column_and_setting(config, message):
    with pytest.raises(DefinitionError) as err:
        contract_from_config(config, where="t.toml")
    assert message in err.value.message


def test_contract_from_config_accepts_bare_type_names():
    c = contract_from_config({"columns": {"a": "bigint", "b": "timestamptz"}}, where="x")
    assert c == Contract({"a": Int64(), "b": Timestamp(tz="UTC")})


# ---- the raw reader --------------------------------------------------------------------------


def test_ndjson_malformed_records_become_error_rows(con, tmp_path):
    f = write(
        tmp_path,
        "a.ndjson",
        b'{"id": 1, "tags": ["x"], "meta": {"k": 1}, "n": null}\n'
        b'{"id": 2, "name": "tru\n'  # truncated line
        b"\n"  # blank: not a record
        b"[1, 2]\n"  # not an object
        b'"just a string"\n'
        b'{"id": 3, "name": "caf\xe9"}\n'  # latin-1 byte: invalid UTF-8
        b"   \n"  # whitespace only: blank
        b'{"id": 4, "name": "ok"}\n'
        b'{"id": 5,, }\n'
        b"\n",
    )
    fields, rows = raw_rows(con, NDJSON, [f])
    assert fields == ("id", "meta", "n", "name", "tags")
    assert [r[1:] for r in rows] == [
        (1, '{"id": 1, "tags": ["x"], "meta": {"k": 1}, "n": null}', None, "1", '{"k":1}', None, None, '["x"]'),
        (2, '{"id": 2, "name": "tru', "malformed JSON: unexpected end of record (truncated?)", None, None, None, None, None),
        (4, "[1, 2]", "expected a JSON object, found array", None, None, None, None, None),
        (5, '"just a string"', "expected a JSON object, found string", None, None, None, None, None),
        (6, '{"id": 3, "name": "caf\ufffd"}', "invalid UTF-8", None, None, None, None, None),
        (8, '{"id": 4, "name": "ok"}', None, "4", None, None, "ok", None),
        (9, '{"id": 5,, }', "malformed JSON: invalid syntax", None, None, None, None, None),
    ]
    assert {r[0] for r in rows} == {str(f)}


def test_ndjson_crlf_bare_cr_and_no_final_newline(con, tmp_path):
    crlf = write(tmp_path, "crlf.ndjson", b'{"a": 1}\r\n\r\n{"a": 2}\r\n')
    bare = write(tmp_path, "bare.ndjson", b'{"a": 1}\n{"a":\r 2}\n{"a": 3}')
    for f, expected in (
        (crlf, [(1, '{"a": 1}', None, "1"), (3, '{"a": 2}', None, "2")]),
        (bare, [(1, '{"a": 1}', None, "1"), (2, '{"a":\r 2}', None, "2"), (3, '{"a": 3}', None, "3")]),
    ):
        _, rows = raw_rows(con, NDJSON, [f])
        assert [r[1:] for r in rows] == expected
    assert probe_file(NDJSON, bare).why_irregular == "carriage return without line feed"
    assert probe_file(NDJSON, crlf).regular


def test_multi_file_line_numbers_are_per_file(con, tmp_path):
    files = [
        write(tmp_path, "1.ndjson", b'{"a": 1}\n{"a": 2}\n{"a": 3}\n'),
        write(tmp_path, "2.ndjson", b""),
        write(tmp_path, "3.ndjson", b'{"a": 4}\n\n{"a": \xff}\n{"a": 6}\n'),  # irregular
        write(tmp_path, "4.ndjson", b'{"a": 7}\r\n{"a": 8}\r\n'),  # CRLF group
        write(tmp_path, "5.ndjson", b'\n{"a": 9}\n{"a"\n'),
    ]
    _, rows = raw_rows(con, NDJSON, files)
    assert [(Path(r[0]).name, r[1], r[4]) for r in rows] == [
        ("1.ndjson", 1, "1"),
        ("1.ndjson", 2, "2"),
        ("1.ndjson", 3, "3"),
        ("3.ndjson", 1, "4"),
        ("3.ndjson", 3, None),
        ("3.ndjson", 4, "6"),
        ("4.ndjson", 1, "7"),
        ("4.ndjson", 2, "8"),
        ("5.ndjson", 2, "9"),
        ("5.ndjson", 3, None),
    ]


def test_ndjson_gzip(con, tmp_path):
    f = write(tmp_path, "a.ndjson.gz", gzip.compress(b'{"a": 1}\n{"a": 2\n'))
    _, rows = raw_rows(con, NDJSON, [f])
    assert [r[1:] for r in rows] == [
        (1, '{"a": 1}', None, "1"),
        (2, '{"a": 2', "malformed JSON: unexpected end of record (truncated?)", None),
    ]


def test_csv_header_custom_delimiter_quote_escape_and_nulls(con, tmp_path):
    spec = FileSource(path="*.csv", format="csv", delimiter="|", quote="'", escape="\\", null_string="NA")
    f = write(
        tmp_path,
        "a.csv",
        "id|name|note\n"
        "1|'a|b'|NA\n"
        "2|'it\\'s'|\n"
        "3|x\n"
        "4|y|z|w\n"
        "\n"
        "5|'open|q\n"
        "6||''\n",
    )
    fields, rows = raw_rows(con, spec, [f])
    assert fields == ("id", "name", "note")
    assert [r[1:] for r in rows] == [
        (2, "1|'a|b'|NA", None, "1", "a|b", None),
        (3, "2|'it\\'s'|", None, "2", "it's", ""),
        (4, "3|x", "expected 3 fields, found 2", None, None, None),
        (5, "4|y|z|w", "expected 3 fields, found 4", None, None, None),
        (7, "5|'open|q", "malformed CSV quoting (unterminated or stray quote)", None, None, None),
        (8, "6||''", None, "6", "", ""),
    ]


def test_csv_default_dialect_doubled_quotes_crlf_and_empty_is_null(con, tmp_path):
    spec = FileSource(path="*.csv", format="csv")
    f = write(tmp_path, "a.csv", 'a,b\r\n1,"say ""hi"""\r\n,x\r\n"2",\r\n')
    _, rows = raw_rows(con, spec, [f])
    assert [r[1:] for r in rows] == [
        (2, '1,"say ""hi"""', None, "1", 'say "hi"'),
        (3, ",x", None, None, "x"),
        (4, '"2",', None, "2", None),
    ]


def test_csv_files_with_different_headers_and_invalid_utf8(con, tmp_path):
    spec = FileSource(path="*.csv", format="csv")
    files = [
        write(tmp_path, "1.csv", "a,b\n1,2\n"),
        write(tmp_path, "2.csv", b"b,c,a\n3,4,5\n\xff,6,7\n"),
    ]
    fields, rows = raw_rows(con, spec, files)
    assert fields == ("a", "b", "c")
    assert [(Path(r[0]).name, *r[1:]) for r in rows] == [
        ("1.csv", 2, "1,2", None, "1", "2", None),
        ("2.csv", 2, "3,4,5", None, "5", "3", "4"),
        ("2.csv", 3, "\ufffd,6,7", "invalid UTF-8", None, None, None),
    ]


def test_headerless_csv_takes_contract_names(con, tmp_path):
    spec = FileSource(path="*.csv", format="csv", header=False)
    f = write(tmp_path, "a.csv", "1,x\n2,y,z\n")
    contract = Contract({"id": Int64(), "name": String()})
    fields, rows = raw_rows(con, spec, [f], contract=contract)
    assert fields == ("id", "name")
    assert [r[1:] for r in rows] == [
        (1, "1,x", None, "1", "x"),
        (2, "2,y,z", "expected 2 fields, found 3", None, None),
    ]
    fields, _ = raw_rows(con, spec, [f])
    assert fields == ("column0", "column1")


def test_parquet_rows_all_parse_and_raw_is_json(con, tmp_path):
    f = tmp_path / "a.parquet"
    pq.write_table(pa.table({"id": [1, 2], "tags": [["a"], None], "d": [decimal.Decimal("1.50"), None]}), f)
    spec = FileSource(path="*.parquet", format="parquet")
    fields, rows = raw_rows(con, spec, [f])
    assert fields == ("id", "tags", "d")
    assert [r[1:] for r in rows] == [
        (1, '{"id":1,"tags":["a"],"d":1.5}', None, "1", '["a"]', "1.50"),
        (2, '{"id":2,"tags":null,"d":null}', None, "2", None, None),
    ]
    _, good, bad = run(con, spec, [f], Contract({"id": Int64(key=True), "tags": List(String()), "d": Decimal(4, 2)}))
    assert good == [(1, ["a"], decimal.Decimal("1.50")), (2, None, None)]
    assert bad == []


# ---- validation ------------------------------------------------------------------------------


def test_every_failed_rule_of_a_row_is_listed(con, tmp_path):
    contract = Contract(
        {
            "id": Int64(key=True),
            "status": String(accepted=["new", "paid"]),
            "amount": Decimal(12, 2, min=0, max=1000),
            "email": String(regex="^[^@]+@[^@]+$", max_length=10, nullable=False),
            "qty": Int32(),
        }
    )
    f = write(
        tmp_path,
        "a.ndjson",
        '{"id": 1, "status": "new", "amount": 5, "email": "a@b.c", "qty": 1}\n'
        '{"id": 2, "status": "lost", "amount": -1, "email": "nope-too-long", "qty": "3x"}\n'
        '{"status": "paid", "amount": 2000, "email": null}\n'
        '{"id": 1, "status": "paid", "amount": 1.234, "email": "x@y.z"}\n'
        '{"id": 4,\n',
    )
    batch, good, bad = run(con, NDJSON, [f], contract)
    assert good == []
    assert bad == [
        ("a.ndjson", 1, '{"id": 1, "status": "new", "amount": 5, "email": "a@b.c", "qty": 1}', [
            ("id", "key", "duplicate key: 2 rows share this id"),
        ]),
        ("a.ndjson", 2, '{"id": 2, "status": "lost", "amount": -1, "email": "nope-too-long", "qty": "3x"}', [
            ("status", "accepted", "'lost' is not one of: new, paid"),
            ("amount", "min", "'-1' is below the minimum 0"),
            ("email", "regex", "'nope-too-long' does not match ^[^@]+@[^@]+$"),
            ("email", "max_length", "'nope-too-long' is 13 characters long, more than 10"),
            ("qty", "type", "'3x' is not a valid INTEGER"),
        ]),
        ("a.ndjson", 3, '{"status": "paid", "amount": 2000, "email": null}', [
            ("id", "key", "key column id is null"),
            ("amount", "max", "'2000' is above the maximum 1000"),
            ("email", "not_null", "email is null"),
        ]),
        ("a.ndjson", 4, '{"id": 1, "status": "paid", "amount": 1.234, "email": "x@y.z"}', [
            ("amount", "type", "'1.234' is not a valid DECIMAL(12,2)"),
            ("id", "key", "duplicate key: 2 rows share this id"),
        ]),
        ("a.ndjson", 5, '{"id": 4,', [(None, "parse", "malformed JSON: unexpected end of record (truncated?)")]),
    ]
    assert (batch.rows, batch.quarantined) == (5, 5)


@pytest.mark.parametrize("duplicates", ["window", "prepass"])
def test_duplicate_keys_flag_every_row_sharing_the_key(con, tmp_path, duplicates):
    contract = Contract({"a": Int64(key=True), "b": String(key=True), "v": String()})
    f = write(
        tmp_path,
        "a.ndjson",
        '{"a": 1, "b": "x", "v": "first"}\n'
        '{"a": 1, "b": "y"}\n'
        '{"a": 1, "b": "x", "v": "second"}\n'
        '{"a": "1.0", "b": "x", "v": "third, same key as text"}\n'
        '{"a": 2, "b": null}\n'
        '{"a": 2, "b": null}\n',
    )
    _, good, bad = run(con, NDJSON, [f], contract, duplicates=duplicates)
    assert good == [(1, "y", None)]
    dup = ("a, b", "key", "duplicate key: 3 rows share this a, b")
    assert [(line, v) for _, line, _, v in bad] == [
        (1, [dup]),
        (3, [dup]),
        (4, [dup]),
        (5, [("b", "key", "key column b is null")]),
        (6, [("b", "key", "key column b is null")]),
    ]


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        (Int8(), "-128", -128),
        (Int16(), "32767", 32767),
        (Int32(), " 42 ", 42),
        (Int64(), "9007199254740993", 9007199254740993),
        (Int64(), "1e3", 1000),
        (Int64(), "2.0", 2),
        (Float32(), "1.5", 1.5),
        (Float64(), "-2.5e-3", -0.0025),
        (Float64(), "inf", float("inf")),
        (Decimal(12, 2), "1.5", decimal.Decimal("1.50")),
        (Decimal(12, 2), "1.230", decimal.Decimal("1.23")),
        (Decimal(12, 2), "-0.01", decimal.Decimal("-0.01")),
        (Decimal(38, 2), "12345678901234567890123456789012345.67", decimal.Decimal("12345678901234567890123456789012345.67")),
        (String(), "  spaced  ", "  spaced  "),
        (Bool(), "true", True),
        (Bool(), "0", False),
        (Date(), "2024-02-29", dt.date(2024, 2, 29)),
        (Date(), "2024-02-29 00:00:00", dt.date(2024, 2, 29)),
        (Timestamp(), "2024-01-01 10:00:00", dt.datetime(2024, 1, 1, 10)),
        (Timestamp(), "2024-01-01T10:00:00.5", dt.datetime(2024, 1, 1, 10, 0, 0, 500000)),
        (Timestamp(), "2024-01-01 10:00:00+02:00", dt.datetime(2024, 1, 1, 8)),
        (Timestamp(), "2024-01-01T10:00:00Z", dt.datetime(2024, 1, 1, 10)),
        (Timestamp(tz="UTC"), "2024-01-01 10:00:00", dt.datetime(2024, 1, 1, 10, tzinfo=UTC)),
        (Timestamp(tz="Europe/Paris"), "2024-07-01 10:00:00", dt.datetime(2024, 7, 1, 8, tzinfo=UTC)),
        (Timestamp(tz="Europe/Paris"), "2024-07-01 10:00:00-04", dt.datetime(2024, 7, 1, 14, tzinfo=UTC)),
        (Timestamp(tz="America/New_York"), "2024-01-01 10:00:00Z", dt.datetime(2024, 1, 1, 10, tzinfo=UTC)),
        (List(Int64()), "[1, 2, null]", [1, 2, None]),
        (List(List(String())), '[["a"], []]', [["a"], []]),
        (Struct({"a": Int64(), "b": List(String())}), '{"a": 1, "b": ["x"]}', {"a": 1, "b": ["x"]}),
        (Struct({"a": Int64(), "b": String()}), '{"b": "x", "a": null}', {"a": None, "b": "x"}),
    ],
)
def test_each_column_type_casts_good_values(con, tmp_path, kind, text, expected):
    f = write(tmp_path, "a.csv", "v\n" + ('"' + text.replace('"', '""') + '"') + "\n")
    batch, good, bad = run(con, FileSource(path="*.csv", format="csv"), [f], Contract({"v": kind}))
    assert bad == []
    got = good[0][0]
    if isinstance(got, dt.datetime) and got.tzinfo is not None:
        got = got.astimezone(UTC)
    assert got == expected
    assert con.execute(f"SELECT typeof(v) FROM ({batch.good_sql()})").fetchall()[0][0].replace(
        "TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"
    ) == kind.duckdb_type().replace('"', "")


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        (Int8(), "128"),
        (Int32(), "3x"),
        (Int64(), "1.5"),
        (Int64(), "1e-1"),
        (Int64(), "-9223372036854775809"),
        (Float32(), "3.5e39"),
        (Float64(), "one"),
        (Decimal(12, 2), "1.234"),
        (Decimal(12, 2), "1e-3"),
        (Decimal(4, 2), "123.4"),
        (Decimal(38, 2), "1.001"),
        (Bool(), "maybe"),
        (Date(), "2023-02-29"),
        (Date(), "2024-01-01 10:30:00"),
        (Timestamp(), "yesterday"),
        (Timestamp(tz="UTC"), "2024-13-01 00:00:00"),
        (List(Int64()), "[1, \"x\"]"),
        (List(Int64()), "not json"),
        (List(String()), '{"a": 1}'),
        (Struct({"a": Int64()}), '{"a": "x"}'),
        (Struct({"a": Int64(), "b": String()}), '{"a": 1}'),
    ],
)
def test_each_column_type_rejects_bad_values(con, tmp_path, kind, text):
    f = write(tmp_path, "a.csv", "v\n" + ('"' + text.replace('"', '""') + '"') + "\n")
    _, good, bad = run(con, FileSource(path="*.csv", format="csv"), [f], Contract({"v": kind}))
    assert good == []
    assert bad[0][3] == [("v", "type", f"'{text}' is not a valid {kind.duckdb_type()}")]


def test_bounds_and_accepted_values_per_type(con, tmp_path):
    contract = Contract(
        {
            "d": Date(min="2024-01-01", max=dt.date(2024, 12, 31)),
            "t": Timestamp(tz="Europe/Paris", min="2024-06-01 00:00:00"),
            "f": Float64(min=0.5),
            "b": Bool(accepted=[True]),
            "i": Int16(accepted=[1, 2]),
        }
    )
    f = write(
        tmp_path,
        "a.ndjson",
        '{"d": "2024-06-01", "t": "2024-06-01 00:00:00", "f": 0.5, "b": true, "i": 2}\n'
        '{"d": "2023-12-31", "t": "2024-05-31 23:59:59", "f": 0.49, "b": false, "i": 3}\n'
        '{"d": "2025-01-01", "t": "2024-05-31 22:30:00Z"}\n',
    )
    _, good, bad = run(con, NDJSON, [f], contract)
    assert len(good) == 1
    assert [v for *_, v in bad] == [
        [
            ("d", "min", "'2023-12-31' is below the minimum 2024-01-01"),
            ("t", "min", "'2024-05-31 23:59:59' is below the minimum 2024-06-01 00:00:00"),
            ("f", "min", "'0.49' is below the minimum 0.5"),
            ("b", "accepted", "'false' is not one of: true"),
            ("i", "accepted", "'3' is not one of: 1, 2"),
        ],
        [("d", "max", "'2025-01-01' is above the maximum 2024-12-31")],
    ]


def test_long_values_are_cut_in_messages(con, tmp_path):
    value = "x" * 200
    f = write(tmp_path, "a.ndjson", json.dumps({"n": value}) + "\n")
    _, _, bad = run(con, NDJSON, [f], Contract({"n": Int64()}))
    assert bad[0][3] == [("n", "type", f"'{'x' * 80}...' is not a valid BIGINT")]


def test_schema_evolve_passes_extra_columns_as_text(con, tmp_path):
    f = write(tmp_path, "a.ndjson", '{"id": 1, "extra": {"x": 1}}\n{"id": 2, "more": 5}\n{"ID": 3}\n')
    batch, good, bad = run(con, NDJSON, [f], Contract({"id": Int64(nullable=False), "gone": String()}))
    assert batch.plan.columns == ("id", "gone", "ID_1", "extra", "more")
    assert good == [(1, None, None, '{"x":1}', None), (2, None, None, None, "5")]
    assert bad == [("a.ndjson", 3, '{"ID": 3}', [("id", "not_null", "id is null")])]


def test_schema_freeze_flags_missing_and_extra_columns_on_every_row(con, tmp_path):
    f = write(tmp_path, "a.ndjson", '{"id": 1}\n{"id": 2, "extra": 1}\n')
    _, good, bad = run(con, NDJSON, [f], Contract({"id": Int64(), "gone": String()}, schema="freeze"))
    assert good == []
    expected = [
        ("gone", "missing_column", "column gone is missing from the input"),
        ("extra", "extra_column", "column extra is not in the contract"),
    ]
    assert [(line, v) for _, line, _, v in bad] == [(1, expected), (2, expected)]
    f2 = write(tmp_path, "b.ndjson", '{"id": 1, "gone": null}\n')
    _, good, bad = run(con, NDJSON, [f2], Contract({"id": Int64(), "gone": String()}, schema="freeze"))
    assert (good, bad) == ([(1, None)], [])


def test_schema_discard_drops_extra_columns(con, tmp_path):
    f = write(tmp_path, "a.ndjson", '{"id": 1, "extra": 1}\n')
    batch, good, bad = run(con, NDJSON, [f], Contract({"id": Int64(), "gone": String()}, schema="discard"))
    assert batch.plan.columns == ("id", "gone")
    assert (good, bad) == ([(1, None)], [])


def test_csv_end_to_end_with_key_and_types(con, tmp_path):
    spec = FileSource(path="*.csv", format="csv", delimiter=";")
    f = write(tmp_path, "a.csv", 'id;amount;day\n1;"1,5";2024-01-01\n2;2.50;2024-01-02\n2;x;\n3;4\n')
    contract = Contract({"id": Int64(key=True), "amount": Decimal(6, 2), "day": Date(nullable=False)})
    _, good, bad = run(con, spec, [f], contract)
    assert good == []
    assert bad == [
        ("a.csv", 2, '1;"1,5";2024-01-01', [("amount", "type", "'1,5' is not a valid DECIMAL(6,2)")]),
        ("a.csv", 3, "2;2.50;2024-01-02", [("id", "key", "duplicate key: 2 rows share this id")]),
        ("a.csv", 4, "2;x;", [
            ("amount", "type", "'x' is not a valid DECIMAL(6,2)"),
            ("day", "not_null", "day is null"),
            ("id", "key", "duplicate key: 2 rows share this id"),
        ]),
        ("a.csv", 5, "3;4", [(None, "parse", "expected 3 fields, found 2")]),
    ]


def test_validation_sql_is_one_select_with_the_documented_columns(con, tmp_path):
    f = write(tmp_path, "a.ndjson", '{"id": 1, "x": "a"}\n')
    contract = Contract({"id": Int64(key=True)})
    with open_raw_reader(con, NDJSON, [f]) as raw:
        con.execute(f"CREATE TEMP VIEW r AS {raw.sql}")
        described = con.execute(f"DESCRIBE {validation_sql(contract, 'r', raw.fields)}").fetchall()
    assert [(d[0], d[1]) for d in described] == [
        ("id", "BIGINT"),
        ("x", "VARCHAR"),
        ("__hr_file", "VARCHAR"),
        ("__hr_line", "BIGINT"),
        ("__hr_raw", "VARCHAR"),
        ("__hr_violations", 'STRUCT("column" VARCHAR, "rule" VARCHAR, message VARCHAR)[]'),
    ]
    assert QUARANTINE_COLUMNS == ("__hr_file", "__hr_line", "__hr_raw", "__hr_violations")


def test_check_contract_against_columns():
    m = check_contract_against_columns(Contract({"Id": Int64(), "name": String(), "gone": Date()}), ["id", "name", "x", "__hr_file"])
    assert dict(m.matched) == {"Id": "id", "name": "name"}
    assert (m.missing, m.extra) == (("gone",), ("x",))


def test_check_outcome_applies_on_violation_and_ratio():
    quarantine = Contract({"a": Int64()}, max_quarantine_ratio=0.1)
    assert check_outcome(quarantine, 100, 10, source="s").action == "quarantine"
    assert check_outcome(quarantine, 100, 0, source="s").action == "none"
    with pytest.raises(DataQualityError, match=r"11 of 100 records \(11.0%\) break the contract, above max_quarantine_ratio 10.0%"):
        check_outcome(quarantine, 100, 11, source="s")
    assert check_outcome(Contract({"a": Int64()}, on_violation="drop"), 5, 5, source="s").action == "drop"
    with pytest.raises(DataQualityError, match="source 's': 1 of 5 records break the contract"):
        check_outcome(Contract({"a": Int64()}, on_violation="fail"), 5, 1, source="s")


def test_plan_without_keys_has_no_duplicate_query():
    plan = plan_validation(Contract({"a": Int64()}), "r", ["a"], duplicates="d")
    assert plan.duplicates is None
    with pytest.raises(ValueError, match="no key columns"):
        plan.duplicates_sql()


# ---- fuzz ------------------------------------------------------------------------------------

FUZZ_CONTRACT = Contract(
    {
        "id": Int64(key=True),
        "amount": Decimal(10, 2, min=0),
        "name": String(max_length=50_000),
        "tags": List(String()),
        "ts": Timestamp(tz="UTC"),
    }
)
_value = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.text(max_size=3), max_size=3),
    st.sampled_from(["2024-01-01 10:00:00", "2024-01-01T10:00:00+02", "12x", "", "1.005"]),
    st.just("z" * 100_000),
)
_record = st.dictionaries(st.sampled_from(["id", "amount", "name", "tags", "ts", "extra"]), _value, max_size=6)


@st.composite
def _mangled_lines(draw, render):
    """Records rendered by ``render``, then damaged: truncated, invalid bytes, blank lines."""
    lines: list[bytes] = []
    for record in draw(st.lists(_record, max_size=12)):
        line = render(record)
        damage = draw(st.sampled_from(["none", "none", "truncate", "bytes", "blank", "dup"]))
        if damage == "truncate" and line:
            line = line[: draw(st.integers(0, len(line) - 1))]
        elif damage == "bytes":
            at = draw(st.integers(0, len(line)))
            line = line[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\r", b"\x00"])) + line[at:]
        elif damage == "blank":
            lines.append(draw(st.sampled_from([b"", b"  ", b"\r"])))
        elif damage == "dup":
            lines.append(line)
        lines.append(line)
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    tail = draw(st.sampled_from([b"", ending, ending + ending]))
    return lines, ending.join(lines) + (tail if lines else b"")


def _json_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()


def _csv_line(record: dict[str, Any]) -> bytes:
    cells = []
    for name in ("id", "amount", "name", "tags", "ts"):
        value = record.get(name)
        text = "" if value is None else (json.dumps(value) if isinstance(value, list) else str(value))
        cells.append('"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text)
    if "extra" in record:
        cells.append("surplus")
    return ",".join(cells).encode()


def _records_in(data: bytes, *, header: bool) -> int:
    """Non-blank records, counted the way a reader splitting on LF must see them."""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    if header and lines:
        lines = lines[1:]
    if header:
        return sum(1 for line in lines if line.removesuffix(b"\r") != b"")
    return sum(1 for line in lines if line.strip(b" \t\r") != b"")


_FUZZ = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


def _check_invariants(con, spec: FileSource, path: Path, expected: int) -> None:
    with open_raw_reader(con, spec, [path], contract=FUZZ_CONTRACT) as raw:
        rows = con.execute(f"SELECT count(*), count(DISTINCT __hr_line) FROM ({raw.sql})").fetchall()[0]
        assert rows == (expected, expected)
    for duplicates in ("window", "prepass"):
        batch = validate_files(con, spec, [path], FUZZ_CONTRACT, table="fz", duplicates=duplicates)
        good = con.execute(f"SELECT count(*) FROM ({batch.good_sql()})").fetchall()[0][0]
        bad = con.execute(f"SELECT count(*) FROM ({batch.quarantine_sql()})").fetchall()[0][0]
        assert batch.rows == expected
        assert good + bad == expected
        assert bad == batch.quarantined
        batch.drop(con)


@pytest.mark.slow
@_FUZZ
@given(data=_mangled_lines(_json_line))
def test_fuzz_ndjson_never_loses_or_invents_records(con, tmp_path_factory, data):
    _, content = data
    path = tmp_path_factory.mktemp("fz") / "f.ndjson"
    path.write_bytes(content)
    _check_invariants(con, NDJSON, path, _records_in(content, header=False))


@pytest.mark.slow
@_FUZZ
@given(data=_mangled_lines(_csv_line))
def test_fuzz_csv_never_loses_or_invents_records(con, tmp_path_factory, data):
    _, content = data
    path = tmp_path_factory.mktemp("fz") / "f.csv"
    path.write_bytes(b"id,amount,name,tags,ts\n" + content)
    spec = FileSource(path="*.csv", format="csv")
    _check_invariants(con, spec, path, _records_in(b"id,amount,name,tags,ts\n" + content, header=True))


def test_field_names_that_clash_with_reader_columns_or_differ_in_case(con, tmp_path):
    f = write(tmp_path, "a.ndjson", '{"__hr_line": 7, "a": 1, "A": 2, "": 3}\n')
    fields, rows = raw_rows(con, NDJSON, [f])
    assert fields == ("column0", "A", "___hr_line", "a_1")
    assert [r[1:] for r in rows] == [(1, '{"__hr_line": 7, "a": 1, "A": 2, "": 3}', None, "3", "2", "7", "1")]
    spec = FileSource(path="*.csv", format="csv")
    g = write(tmp_path, "a.csv", "id,ID,,__hr_raw\n1,2,3,4\n")
    fields, rows = raw_rows(con, spec, [g])
    assert fields == ("id", "ID_1", "column2", "___hr_raw")
    assert [r[4:] for r in rows] == [("1", "2", "3", "4")]


def test_json_array_files_are_not_supported(con, tmp_path):
    from headrace.errors import SourceError

    f = write(tmp_path, "a.json", "[{}]")
    with pytest.raises(SourceError, match="contracts read csv, ndjson and parquet"):
        open_raw_reader(con, FileSource(path="*.json", format="json"), [f])


# ---- the stored path (what the runner uses) against the reference ---------------------------

from headrace.quality.contracts import probing as probing_module  # noqa: E402
from headrace.quality.contracts import store_validated  # noqa: E402
from headrace.quality.contracts import stored as stored_module  # noqa: E402


def _rows(con, sql: str) -> list[tuple[Any, ...]]:
    return sorted(con.execute(f"SELECT * FROM ({sql})").fetchall(), key=repr)


def same_as_reference(con, tmp_path: Path, spec: FileSource, files: list[Path], contract: Contract, **kw: Any):
    """``store_validated`` must give exactly what ``validate_files`` gives: counts, columns,
    typed good rows, and rejects with file, line, raw text and every violation; CSV and NDJSON
    through the stored path itself (not its safety net)."""
    ref = validate_files(con, spec, files, contract, table="hr_ref", duplicates="prepass")
    want_good, want_bad = _rows(con, ref.good_sql()), _rows(con, ref.quarantine_sql())
    target = tmp_path / f"stored-{len(list(tmp_path.glob('stored-*')))}"
    fallback = kw.pop("fallback", False)
    stored = store_validated(con, spec, files, contract, directory=target, name="hr_st", **kw)
    assert (stored.rows, stored.quarantined) == (ref.rows, ref.quarantined)
    assert stored.columns == ref.plan.columns
    assert _rows(con, stored.good_sql()) == want_good
    assert _rows(con, stored.quarantine_sql()) == want_bad
    assert stored.rows == len(want_good) + len(want_bad)
    if spec.format != "parquet" and not fallback:
        assert stored.path == "stored"
    ref.drop(con)
    stored.drop(con)
    return stored


ORDERS = Contract(
    {
        "id": Int64(key=True),
        "amount": Decimal(12, 2, min=0),
        "ts": Timestamp(),
        "email": String(regex=r"^[^@]+@[^@]+$", nullable=False),
        "tags": List(String()),
    }
)


def _scenarios(tmp_path: Path) -> dict[str, tuple[FileSource, list[Path], Contract]]:
    csv = FileSource(path="*.csv", format="csv")
    good = '{"id": %d, "amount": 1.5, "ts": "2024-01-01 10:00:00", "email": "a@b.c", "tags": ["x"]}'
    return {
        "clean": (NDJSON, [write(tmp_path, "c.ndjson", "".join(good % i + "\n" for i in range(50)))], ORDERS),
        "mixed": (
            NDJSON,
            [
                write(
                    tmp_path,
                    "m1.ndjson",
                    good % 1 + "\n\n" + good % 2 + "\n" + '{"id": 3, "amount": -1, "ts": "x", "email": "n"}\n'
                    '{"id": 4, "amount": 1.234\n   \n[1]\n"s"\n' + good % 2 + "\n"  # repeats id 2: both bad
                    '{"id": 5, "amount": "abc", "email": "q@w.e", "tags": "nope"}\n'
                    '{"id": 6, "amount": 2, "email": "z@w.e", "ts": "2024-01-01T10:00:00+02:00"}',
                ),
                write(tmp_path, "m2.ndjson", b""),
                write(tmp_path, "m3.ndjson", (good % 7 + "\r\n") * 2 + good % 8 + "\r\n\r\n"),  # CRLF, dup in file
                write(tmp_path, "m4.ndjson", (good % 9 + "\n").encode() + b'{"id": 10, "email": "\xff@x"}\n' + (good % 1).encode()),
                write(tmp_path, "m5.ndjson", good % 11 + "\n" + '{"id": 12,\r "email": "a@b"}\n'),  # bare CR
            ],
            ORDERS,
        ),
        "extra keys (evolve)": (
            NDJSON,
            [write(tmp_path, "e.ndjson", '{"id": 1, "x": 2}\n{"ID": 3, "email": "a@b"}\n{"id": 1, "email": "a@b", "id": 2}\n')],
            ORDERS,
        ),
        "explicit nulls and duplicate members": (
            NDJSON,
            [write(tmp_path, "n.ndjson", '{"id": 1, "email": "a@b", "tags": null}\n{"id": 2, "email": "a@b", "email": "x"}\n')],
            ORDERS,
        ),
        "freeze": (
            NDJSON,
            [write(tmp_path, "f.ndjson", '{"id": 1, "email": "a@b"}\n{"id": 2, "email": "a@b", "more": 1}\n')],
            ORDERS.with_options(schema="freeze"),
        ),
        "discard": (
            NDJSON,
            [write(tmp_path, "d.ndjson", '{"id": 1, "email": "a@b", "more": 1}\n{"id": 1}\n')],
            ORDERS.with_options(schema="discard"),
        ),
        "no keys": (NDJSON, [write(tmp_path, "k.ndjson", '{"a": 1}\n{"a": 1}\n{"a": "x"}\n')], Contract({"a": Int64()})),
        "gzip": (
            NDJSON,
            [write(tmp_path, "g.ndjson.gz", gzip.compress((good % 1 + "\n" + '{"id": 2\n' + good % 1 + "\n").encode()))],
            ORDERS,
        ),
        "csv": (
            csv,
            [
                write(tmp_path, "a.csv", "id,amount,email\n1,1.5,a@b\n\n2,x,b@c\n2,3,c@d\n3,4\n4,5,\"q,\"\"w\"\"@e\"\n"),
                write(tmp_path, "b.csv", b"email,id\r\na@b,5\r\n\r\nc@d,1\r\n"),
                write(tmp_path, "c.csv", b"id,amount,email\n7,1,\xff@x\n8,2,a@b"),
                write(tmp_path, "d.csv", "id,amount,email\n"),
            ],
            Contract({"id": Int64(key=True), "amount": Decimal(6, 2), "email": String(nullable=False)}),
        ),
        "csv headerless": (
            FileSource(path="*.csv", format="csv", header=False, delimiter=";"),
            [write(tmp_path, "h.csv", "1;a\n1;b\n\n2\n3;c\n")],
            Contract({"id": Int64(key=True), "name": String()}),
        ),
        "empty and blank files": (
            NDJSON,
            [write(tmp_path, "z1.ndjson", b""), write(tmp_path, "z2.ndjson", b"\n  \n\n")],
            ORDERS,
        ),
        "csv blank lines only": (csv, [write(tmp_path, "z.csv", "\n\n  \n")], Contract({"a": Int64(key=True)})),
        "parquet": (
            FileSource(path="*.parquet", format="parquet"),
            [tmp_path / "p.parquet"],
            Contract({"id": Int64(key=True), "v": Int8()}),
        ),
    }


@pytest.mark.parametrize(
    "scenario",
    ["clean", "mixed", "extra keys (evolve)", "explicit nulls and duplicate members", "freeze", "discard",
     "no keys", "gzip", "csv", "csv headerless", "empty and blank files", "csv blank lines only", "parquet"],
)
def test_stored_path_gives_exactly_the_reference_result(con, tmp_path, scenario):
    pq.write_table(pa.table({"id": [1, 2, 2, None], "v": [1, 300, 3, 4]}), tmp_path / "p.parquet")
    spec, files, contract = _scenarios(tmp_path)[scenario]
    stored = same_as_reference(con, tmp_path, spec, files, contract)
    assert stored.path == ("reference" if spec.format == "parquet" else "stored")


def test_stored_path_with_every_line_passing_the_bitmap(con, tmp_path, monkeypatch):
    """Good lines whose hash shares a bitmap bit with a reject are re-read too (here all of
    them): they validate as good again and stay out of the quarantine."""
    monkeypatch.setattr(stored_module, "_reject_slots", lambda n: 1)
    spec, files, contract = _scenarios(tmp_path)["mixed"]
    assert same_as_reference(con, tmp_path, spec, files, contract).path == "stored"
    spec, files, contract = _scenarios(tmp_path)["csv"]
    assert same_as_reference(con, tmp_path, spec, files, contract).path == "stored"


def test_stored_path_discovers_keys_only_when_a_record_has_others(con, tmp_path):
    f = write(tmp_path, "a.ndjson", '{"id": 1, "email": "a@b"}\n{"id": 2, "email": "a@b", "note": "x"}\n')
    stored = same_as_reference(con, tmp_path, NDJSON, [f], ORDERS)
    assert stored.columns == (*ORDERS.names, "note")
    g = write(tmp_path, "b.ndjson", '{"id": 1, "email": "a@b"}\n{"email": "c@d", "id": 2}\n')
    assert same_as_reference(con, tmp_path, NDJSON, [g], ORDERS).columns == ORDERS.names


def test_stored_path_falls_back_to_the_reference_when_counts_disagree(con, tmp_path, monkeypatch):
    """The rejects re-read must add up to the rejects counted; if not, the reference path
    gives the answer (a safety net: this never happens unless the two SQLs diverge)."""
    spec, files, contract = _scenarios(tmp_path)["mixed"]
    monkeypatch.setattr(stored_module, "_store_fast", lambda *args, **kw: None)
    assert same_as_reference(con, tmp_path, spec, files, contract, fallback=True).path == "reference"


def test_probe_without_line_counts_classifies_files_the_same(tmp_path, monkeypatch):
    cases = {
        "lf": b'{"a": 1}\n{"a": 2}\n',
        "crlf": b'{"a": 1}\r\n{"a": 2}\r\n',
        "mixed": b'{"a": 1}\r\n{"a": 2}\n',
        "bare": b'{"a": 1}\r{"a": 2}\n',
        "cr-last": b'{"a": 1}\r\n{"a": 2}\r',
        "empty": b"",
    }
    for name, data in cases.items():
        path = write(tmp_path, f"{name}.ndjson", data)
        full, quick = probe_file(NDJSON, path), probe_file(NDJSON, path, count_lines=False)
        assert quick.lines is None
        assert (quick.regular, quick.crlf, quick.why_irregular, quick.size) == (
            full.regular, full.crlf, full.why_irregular, full.size), name
    # a CRLF cut by the probe's chunking is still one line ending
    monkeypatch.setattr(probing_module, "_CHUNK", 9)
    path = write(tmp_path, "cut.ndjson", b'{"a": 1}\r\n{"a": 2}\r\n')
    assert probe_file(NDJSON, path, count_lines=False).crlf
    path = write(tmp_path, "cut2.ndjson", b'{"a": 1}\r\n{"a":22}\n')
    assert probe_file(NDJSON, path, count_lines=False).why_irregular == "mixed line endings"


@pytest.mark.slow
@_FUZZ
@given(data=_mangled_lines(_json_line))
def test_fuzz_ndjson_stored_path_equals_reference(con, tmp_path_factory, data):
    _, content = data
    tmp = tmp_path_factory.mktemp("fz")
    path = tmp / "f.ndjson"
    path.write_bytes(content)
    same_as_reference(con, tmp, NDJSON, [path], FUZZ_CONTRACT)


@pytest.mark.slow
@_FUZZ
@given(data=_mangled_lines(_csv_line))
def test_fuzz_csv_stored_path_equals_reference(con, tmp_path_factory, data):
    _, content = data
    tmp = tmp_path_factory.mktemp("fz")
    path = tmp / "f.csv"
    path.write_bytes(b"id,amount,name,tags,ts\n" + content)
    same_as_reference(con, tmp, FileSource(path="*.csv", format="csv"), [path], FUZZ_CONTRACT)
