"""Database sources: PostgreSQL, MariaDB and SQLite tables and queries read as Arrow in chunks,
with a cursor watermark and lookback, against the real servers."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headrace.errors import DataQualityError, DefinitionError, SourceError, TransientError
from headrace.sources.database import (
    batch_id,
    check_cursor,
    dump_cursor,
    load_cursor,
    read_database,
    write_parquet,
)
from headrace.spec.database import DatabaseSource, database, mask_url, parse_duration

from conftest import require_pg

MYSQL_URL = os.environ.get("HEADRACE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
ROWS = 10_500
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def mariadb_available() -> bool:
    try:
        import pymysql

        from headrace.sources.database import _my_connect_args

        pymysql.connect(**{**_my_connect_args(MYSQL_URL), "connect_timeout": 3}).close()
        return True
    except Exception:
        return False


def require_mariadb() -> str:
    """The MariaDB/MySQL URL; skip when unreachable outside CI, fail under CI."""
    if not mariadb_available():
        if os.environ.get("CI"):
            pytest.fail(f"MariaDB at {MYSQL_URL} is unreachable under CI")
        pytest.skip(f"MariaDB at {MYSQL_URL} is unreachable (set HEADRACE_TEST_MYSQL_URL)")
    return MYSQL_URL


def event(i: int) -> tuple[Any, ...]:
    """Row i of the shared 'events' table: one event a minute from T0."""
    return (i, Decimal(i % 1000) + Decimal("0.25"), T0 + dt.timedelta(minutes=i), i % 2 == 0, f"note {i}")


# ---- one fixture per backend: a URL and a unique 'events' table of ROWS rows -----------------

class Backend:
    def __init__(self, kind: str, url: str, table: str, root: Path, execute: Any) -> None:
        self.kind, self.url, self.table, self.root, self.execute = kind, url, table, root, execute

    def source(self, **kw: Any) -> DatabaseSource:
        if "query" not in kw:
            kw.setdefault("table", self.table)
        return database(self.url, name=f"{self.kind}_events", **kw)

    def ts_literal(self, value: dt.datetime) -> str:
        text = value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        return {"pg": f"'{text}+00'", "mariadb": f"'{text}'", "sqlite": f"'{text}+00:00'"}[self.kind]

    def read(self, since: Any = None, **kw: Any):
        return read_database(self.source(**kw), root=self.root, since=since)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Backend]:
    import psycopg

    url = require_pg()
    schema = f"hr_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
        con.execute(
            f"CREATE TABLE {schema}.events (id bigint PRIMARY KEY, amount numeric(12,2), "
            "updated_at timestamptz, ok boolean, note text)"
        )
        with con.cursor() as cur, cur.copy(f"COPY {schema}.events FROM STDIN") as copy:
            for i in range(ROWS):
                copy.write_row(event(i))

        def execute(sql: str) -> None:
            with psycopg.connect(url, autocommit=True) as c:
                c.execute(sql.replace("{s}", schema))

        try:
            yield Backend("pg", url, f"{schema}.events", tmp_path, execute)
        finally:
            con.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def maria(tmp_path: Path) -> Iterator[Backend]:
    import pymysql

    from headrace.sources.database import _my_connect_args

    url = require_mariadb()
    table = f"hr_t_{uuid.uuid4().hex[:10]}"
    con = pymysql.connect(**_my_connect_args(url), autocommit=True, init_command="SET time_zone = '+00:00'")
    with con.cursor() as cur:
        cur.execute(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, amount decimal(12,2), updated_at datetime(6), "
            "ok boolean, note text)"
        )
        rows = [(i, a, u.replace(tzinfo=None), o, n) for i, a, u, o, n in map(event, range(ROWS))]
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s)", rows)

    def execute(sql: str) -> None:
        with con.cursor() as c:
            c.execute(sql.replace("{s}.", "").replace("{t}", table))

    try:
        yield Backend("mariadb", url, table, tmp_path, execute)
    finally:
        with con.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        con.close()


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "data" / "app.db"
    path.parent.mkdir()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, amount DECIMAL(12,2), updated_at TIMESTAMPTZ, ok BOOLEAN, note TEXT)")
    con.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
        [(i, str(a), u.isoformat(sep=" "), o, n) for i, a, u, o, n in map(event, range(ROWS))],
    )
    con.commit()

    def execute(sql: str) -> None:
        with sqlite3.connect(path) as c:
            c.execute(sql.replace("{s}.", ""))

    try:
        yield Backend("sqlite", "sqlite:///data/app.db", "events", tmp_path, execute)
    finally:
        con.close()


@pytest.fixture(params=["pg", "mariadb", "sqlite"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue({"pg": "pg", "mariadb": "maria", "sqlite": "lite"}[request.param])


def as_utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# ---- reads on every backend ----------------------------------------------------------------

def test_full_read(backend: Backend) -> None:
    read = backend.read()
    table = pa.Table.from_batches(list(read), schema=read.schema)
    assert table.num_rows == ROWS == read.rows
    assert read.max_cursor is None
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("amount").type == pa.decimal128(12, 2)
    assert table.schema.field("ok").type == pa.bool_()
    assert table.schema.field("note").type == pa.string()
    assert pa.types.is_timestamp(table.schema.field("updated_at").type)
    row = table.sort_by("id").slice(7, 1).to_pylist()[0]
    assert row["amount"] == Decimal("7.25") and row["ok"] is False and row["note"] == "note 7"
    assert as_utc(row["updated_at"]) == T0 + dt.timedelta(minutes=7)


def test_incremental_read_with_since_and_lookback(backend: Backend) -> None:
    since = T0 + dt.timedelta(minutes=10_000)
    read = backend.read(since=since, cursor="updated_at", lookback="1h")
    ids = sorted(i for b in read for i in b.column("id").to_pylist())
    # rows strictly after since - 60 minutes: 9941 .. 10499
    assert ids == list(range(9_941, ROWS))
    assert as_utc(read.max_cursor) == T0 + dt.timedelta(minutes=ROWS - 1)
    check_cursor(as_utc(read.since), as_utc(read.max_cursor))  # moved forward: fine

    # the next run from the new watermark, without lookback, reads nothing new ...
    again = backend.read(since=read.max_cursor, cursor="updated_at")
    assert sum(b.num_rows for b in again) == 0 and again.max_cursor is None
    # ... until a row arrives
    backend.execute(f"INSERT INTO {{s}}.{backend.table.split('.')[-1]} VALUES "
                    f"(99999, 1.50, {backend.ts_literal(T0 + dt.timedelta(days=30))}, true, 'late')")
    late = backend.read(since=read.max_cursor, cursor="updated_at")
    assert [r["id"] for b in late for r in b.to_pylist()] == [99999]


def test_integer_cursor_with_integer_lookback(backend: Backend) -> None:
    read = backend.read(since=10_000, cursor="id", lookback=100)
    ids = sorted(i for b in read for i in b.column("id").to_pylist())
    assert ids == list(range(9_901, ROWS))
    assert read.max_cursor == ROWS - 1
    with pytest.raises(DefinitionError, match="is a duration but the cursor"):
        backend.read(since=10_000, cursor="id", lookback="1h")
    with pytest.raises(DefinitionError, match="is a number but the cursor"):
        backend.read(since=T0, cursor="updated_at", lookback=5)


def test_chunking(backend: Backend) -> None:
    read = backend.read(chunk_rows=1000)
    sizes = [b.num_rows for b in read]
    assert len(sizes) >= 11 and max(sizes) <= 1000 and sum(sizes) == ROWS


def test_query_source(backend: Backend) -> None:
    read = backend.read(query=f"SELECT id, note FROM {backend.table} WHERE id < 100;", cursor="id")
    assert read.schema.names == ["id", "note"]
    assert sum(b.num_rows for b in read) == 100 and read.max_cursor == 99


def test_missing_table(backend: Backend) -> None:
    name = backend.table + "x"
    with pytest.raises(SourceError) as info:
        backend.read(table=name)
    message = str(info.value)
    assert f"source '{backend.kind}_events'" in message
    assert f"{name!r}" in message and f"Did you mean {backend.table!r}?" in message
    assert ("does not exist" in message) or ("doesn't exist" in message) or ("no such table" in message)


def test_bad_sql(backend: Backend) -> None:
    with pytest.raises(SourceError) as info:
        backend.read(query="SELEC id FROM nowhere")
    assert f"source '{backend.kind}_events'" in str(info.value)
    assert "syntax" in str(info.value).lower()


def test_missing_cursor_column(backend: Backend) -> None:
    with pytest.raises(SourceError) as info:
        backend.read(cursor="updated", since=T0)
    message = str(info.value)
    assert f"cursor column 'updated' is not in {backend.table}" in message
    assert "Did you mean 'updated_at'?" in message


def test_stop_early_releases_connection(backend: Backend) -> None:
    read = backend.read(chunk_rows=500)
    first = next(iter(read))
    assert first.num_rows == 500
    started = time.perf_counter()
    read.close()
    assert time.perf_counter() - started < 5
    with pytest.raises(RuntimeError, match="only after every batch"):
        _ = read.max_cursor


def test_postgres_error_while_streaming_is_a_source_error(pg: Backend) -> None:
    read = pg.read(query=f"SELECT id, 1 / (id - {ROWS - 1}) AS boom FROM {pg.table}", chunk_rows=100)
    with pytest.raises(SourceError, match="division by zero"):
        list(read)


def test_postgres_connection_lost_while_streaming_is_transient(pg: Backend) -> None:
    import psycopg

    marker = f"hr_kill_{uuid.uuid4().hex[:8]}"
    read = pg.read(query=f"SELECT g AS {marker}, repeat('x', 200) AS pad FROM generate_series(1, 400000) g",
                   chunk_rows=1000)
    batches = iter(read)
    next(batches)
    with psycopg.connect(pg.url, autocommit=True) as con:
        killed = con.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchone()
    assert killed == (1,)
    with pytest.raises(TransientError, match=r"closed the connection|terminating connection"):
        for _ in batches:
            pass


# ---- types -------------------------------------------------------------------------------

def test_postgres_types(pg: Backend) -> None:
    pg.execute(
        "CREATE TABLE {s}.typed (i2 smallint, i4 integer, i8 bigint, d numeric(10,3), big numeric(38,0), "
        "free numeric, f8 double precision, t text, v varchar(5), b boolean, day date, ts timestamp, "
        "tstz timestamptz, j json, jb jsonb, raw bytea, u uuid, m money, tags text[])"
    )
    pg.execute(
        "INSERT INTO {s}.typed VALUES (1, 2, 3, 12.345, 12345678901234567890123456789012345678, 1.5, 0.25, "
        "'héllo', 'abc', true, '2024-02-29', '2024-01-01 12:34:56.789', '2024-01-01 12:00:00+02', "
        "'{\"a\": 1}', '{\"b\": [1, 2]}', '\\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 1.5, '{x,y}'), "
        "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
    )
    schema_name = pg.table.split(".")[0]
    read = read_database(database(pg.url, table=f"{schema_name}.typed"), root=pg.root)
    table = pa.Table.from_batches(list(read), schema=read.schema)
    types = {f.name: f.type for f in table.schema}
    assert types == {
        "i2": pa.int16(), "i4": pa.int32(), "i8": pa.int64(), "d": pa.decimal128(10, 3),
        "big": pa.decimal128(38, 0), "free": pa.decimal128(38, 18), "f8": pa.float64(),
        "t": pa.string(), "v": pa.string(), "b": pa.bool_(), "day": pa.date32(),
        "ts": pa.timestamp("us"), "tstz": pa.timestamp("us", tz="UTC"), "j": pa.string(),
        "jb": pa.string(), "raw": pa.binary(), "u": pa.string(), "m": pa.decimal128(38, 2),
        "tags": pa.list_(pa.string()),
    }
    row, empty = table.to_pylist()
    assert row["d"] == Decimal("12.345") and row["big"] == Decimal("12345678901234567890123456789012345678")
    assert row["free"] == Decimal("1.5") and row["m"] == Decimal("1.50")
    assert row["t"] == "héllo" and row["b"] is True and row["day"] == dt.date(2024, 2, 29)
    assert row["ts"] == dt.datetime(2024, 1, 1, 12, 34, 56, 789000)
    assert row["tstz"] == dt.datetime(2024, 1, 1, 10, 0, tzinfo=dt.UTC)
    assert json.loads(row["j"]) == {"a": 1} and json.loads(row["jb"]) == {"b": [1, 2]}
    assert row["raw"] == b"\x00\xff" and row["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert row["tags"] == ["x", "y"]
    assert all(v is None for v in empty.values())


def test_postgres_numeric_that_does_not_fit_is_an_error_not_rounded(pg: Backend) -> None:
    read = pg.read(query="SELECT 1::numeric / 3 AS third")
    with pytest.raises(SourceError, match="'third' \\(numeric\\) does not fit decimal128\\(38, 18\\)"):
        list(read)


def test_mariadb_types(maria: Backend) -> None:
    name = f"{maria.table}_typed"
    maria.execute(
        f"CREATE TABLE {name} (ti tinyint, flag boolean, si smallint unsigned, i int, bi bigint unsigned, "
        "d decimal(10,3), f double, t text, v varchar(5), day date, dtm datetime(3), ts timestamp(6) NULL, "
        "j json, raw blob, yr year)"
    )
    try:
        maria.execute(
            f"INSERT INTO {name} VALUES (-5, true, 65535, -7, 18446744073709551615, 12.345, 0.25, 'héllo', 'abc', "
            "'2024-02-29', '2024-01-01 12:34:56.789', '2024-01-01 10:00:00', '{\"a\": 1}', x'00ff', 2024), "
            "(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        )
        read = read_database(database(maria.url, table=name), root=maria.root)
        table = pa.Table.from_batches(list(read), schema=read.schema)
    finally:
        maria.execute(f"DROP TABLE {name}")
    types = {f.name: f.type for f in table.schema}
    assert types == {
        "ti": pa.int8(), "flag": pa.bool_(), "si": pa.uint16(), "i": pa.int32(), "bi": pa.uint64(),
        "d": pa.decimal128(10, 3), "f": pa.float64(), "t": pa.string(), "v": pa.string(),
        "day": pa.date32(), "dtm": pa.timestamp("us"), "ts": pa.timestamp("us", tz="UTC"),
        "j": pa.string(), "raw": pa.binary(), "yr": pa.int16(),
    }
    row, empty = table.to_pylist()
    assert row["ti"] == -5 and row["flag"] is True and row["si"] == 65535 and row["bi"] == 2**64 - 1
    assert row["d"] == Decimal("12.345") and row["t"] == "héllo" and row["day"] == dt.date(2024, 2, 29)
    assert row["dtm"] == dt.datetime(2024, 1, 1, 12, 34, 56, 789000)
    assert row["ts"] == dt.datetime(2024, 1, 1, 10, 0, tzinfo=dt.UTC)
    assert json.loads(row["j"]) == {"a": 1} and row["raw"] == b"\x00\xff" and row["yr"] == 2024
    assert all(v is None for v in empty.values())


def test_sqlite_types_and_untyped_expressions(lite: Backend) -> None:
    lite.execute(
        "CREATE TABLE typed (i INTEGER, d NUMERIC(10,3), r REAL, t TEXT, b BOOLEAN, day DATE, ts DATETIME, raw BLOB, j JSON)"
    )
    lite.execute(
        "INSERT INTO typed VALUES (1, '12.345', 0.25, 'hello', 1, '2024-02-29', '2024-01-01 12:34:56.789', x'00ff', '{\"a\": 1}')"
    )
    read = read_database(
        database(lite.url, query="SELECT *, i + 1 AS expr, upper(t) AS shout FROM typed"), root=lite.root
    )
    table = pa.Table.from_batches(list(read), schema=read.schema)
    types = {f.name: f.type for f in table.schema}
    assert types == {
        "i": pa.int64(), "d": pa.decimal128(10, 3), "r": pa.float64(), "t": pa.string(), "b": pa.bool_(),
        "day": pa.date32(), "ts": pa.timestamp("us"), "raw": pa.binary(), "j": pa.string(),
        "expr": pa.int64(), "shout": pa.string(),
    }
    (row,) = table.to_pylist()
    assert row["d"] == Decimal("12.345") and row["b"] is True and row["shout"] == "HELLO"
    assert row["ts"] == dt.datetime(2024, 1, 1, 12, 34, 56, 789000)


def test_sqlite_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        read_database(database("sqlite:///nope.db", table="t"), root=tmp_path)


# ---- unreachable servers -----------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "postgresql://postgres:s3cret@127.0.0.1:1/test",
    "mysql://root:s3cret@127.0.0.1:1/test",
])
def test_down_server_is_transient_and_quick(url: str, tmp_path: Path) -> None:
    started = time.perf_counter()
    with pytest.raises(TransientError) as info:
        read_database(database(url, table="t", name="orders_db"), root=tmp_path)
    assert time.perf_counter() - started < 5
    error = info.value
    assert error.retryable
    assert "\n" not in error.message and "s3cret" not in str(error)
    assert "source 'orders_db'" in error.message and "127.0.0.1:1" in error.message


def test_wrong_database_is_not_transient(tmp_path: Path) -> None:
    require_pg()
    with pytest.raises(SourceError, match="does not exist"):
        read_database(database("postgresql://postgres@127.0.0.1:5432/no_such_db_hr", table="t"), root=tmp_path)


# ---- into Delta --------------------------------------------------------------------------

def test_read_into_delta_and_parquet(pg: Backend) -> None:
    from deltalake import DeltaTable, write_deltalake

    read = pg.read(cursor="updated_at", chunk_rows=2000)
    write_deltalake(str(pg.root / "lake"), read.reader(), mode="append")
    assert DeltaTable(str(pg.root / "lake")).to_pyarrow_table().num_rows == ROWS
    assert load_cursor(dump_cursor(read.max_cursor)) == read.max_cursor

    files = write_parquet(pg.read(since=read.max_cursor, cursor="updated_at"), pg.root / "stage")
    assert len(files) == 1 and pq.read_table(files[0]).num_rows == 0


# ---- spec and helpers --------------------------------------------------------------------

def test_spec_validation() -> None:
    src = database("postgresql://u:pw@db:5432/shop", table="orders", cursor="updated_at", lookback="1h30m")
    assert src.kind == "database" and src.lookback == dt.timedelta(minutes=90)
    assert "pw" not in src.describe() and "u:***@db:5432" in src.describe()
    assert src.named("orders_src").name == "orders_src"
    for kwargs, match in [
        ({"table": "a", "query": "SELECT 1"}, "exactly one of table= or query="),
        ({}, "exactly one of table= or query="),
        ({"table": "a", "lookback": "1h"}, "lookback= needs cursor="),
        ({"table": "a", "cursor": "c", "lookback": "soon"}, "invalid duration"),
        ({"table": "a", "chunk_rows": 0}, "chunk_rows"),
    ]:
        with pytest.raises(DefinitionError, match=match):
            database("postgresql://db/shop", **kwargs)
    with pytest.raises(DefinitionError, match="scheme 'oracle'"):
        database("oracle://db/x", table="a")
    with pytest.raises(DefinitionError, match=r"postgresql://"):
        database("postgresql+psycopg://db/x", table="a")
    with pytest.raises(DefinitionError, match="names no database file"):
        database("sqlite://", table="a")
    assert parse_duration("2 hours, 15 min") == dt.timedelta(hours=2, minutes=15)
    assert mask_url("mysql://root@h/db") == "mysql://root@h/db"


def test_cursor_helpers() -> None:
    with pytest.raises(DataQualityError, match="cursor went backwards"):
        check_cursor(T0, T0 - dt.timedelta(seconds=1), source_name="orders")
    with pytest.raises(DataQualityError, match="cannot be compared"):
        check_cursor(T0, 5)
    check_cursor(None, T0)
    check_cursor(T0, T0)
    for value in (T0, dt.datetime(2024, 1, 1, 1, 2, 3), dt.date(2024, 1, 1), 42, Decimal("1.50"), 0.5, "k"):
        assert load_cursor(dump_cursor(value)) == value
    src = database("postgresql://db/shop", table="orders", cursor="id")
    assert batch_id(src, 1, 10, 9) == batch_id(src, 1, 10, 9)
    assert len({batch_id(src, 1, 10, 9), batch_id(src, 1, 11, 9), batch_id(src, 1, 10, 10), batch_id(src, None, 10, 9)}) == 4
