"""Database sources read as Arrow record batches, in bounded chunks, with a cursor watermark.

Drivers, chosen by measurement (``bench/db_extract.py``):

- PostgreSQL: ADBC (``adbc-driver-postgresql``). The driver streams ``COPY (query) TO STDOUT
  (FORMAT binary)`` straight into Arrow in C: 1.3x the rows/s of psycopg COPY-as-CSV parsed by
  ``pyarrow.csv``, at a fifth of its peak memory (5M rows, 2 CPUs). NUMERIC arrives as text with its typmod in the
  field metadata and becomes ``decimal128(precision, scale)`` here; an unconstrained NUMERIC
  becomes ``decimal128(38, 18)`` (a value that does not fit is an error, never rounded).
- MySQL / MariaDB: PyMySQL with an unbuffered (server-side streaming) cursor and no per-value
  Python conversion: values arrive as text and are converted column-wise by Arrow casts.
- SQLite: the standard library, declared column types mapped to Arrow.

Everything a user can get wrong surfaces when the read is opened, before the first batch:
unreachable server (``TransientError``), missing table or bad SQL (``SourceError`` with the
database's own message), missing cursor column (``SourceError`` with a did-you-mean).

Watermarks: :attr:`DatabaseRead.max_cursor` is the highest cursor value read, known once the
batches are exhausted. Store it with :func:`dump_cursor` (JSON text, typed) in the commit that
publishes the rows, read it back with :func:`load_cursor` and pass it as ``since`` next time.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc

from headrace.errors import DataQualityError, DefinitionError, SourceError, TransientError
from headrace.sources.batches import combine
from headrace.spec._names import did_you_mean
from headrace.spec.database import DatabaseSource, mask_url, sqlite_path

CONNECT_TIMEOUT_S = 10
UNCONSTRAINED_DECIMAL = pa.decimal128(38, 18)
_SUBQUERY = '"__hr_src"'


# ---- the result of opening a read ----------------------------------------------------------

class DatabaseRead:
    """An open read: ``schema`` now, ``batches`` (at most ``chunk_rows`` rows each) streamed
    once, then ``max_cursor`` and ``rows``. Iterating the object iterates its batches. Close it
    (or use it as a context manager) when not reading to the end, to release the connection."""

    def __init__(
        self,
        *,
        source_name: str,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        close: Callable[[], None],
        sql: str,
        since: Any | None,
        lower_bound: Any | None,
        cursor: str | None,
        chunk_rows: int,
    ) -> None:
        self.source_name = source_name
        self.schema = schema
        self.sql = sql
        self.since = since
        self.lower_bound = lower_bound
        self.cursor = cursor
        self.rows = 0
        self.exhausted = False
        self._max: Any | None = None
        self._close = close
        self._chunk_rows = chunk_rows
        self._cursor_index = schema.get_field_index(cursor) if cursor else -1
        self.batches: Iterator[pa.RecordBatch] = self._stream(batches)

    @property
    def max_cursor(self) -> Any | None:
        """The highest cursor value read (None without a cursor or when no row was read).
        Raises until the batches are exhausted: a partial maximum must never be stored."""
        if not self.exhausted:
            raise RuntimeError(f"source {self.source_name!r}: max_cursor is known only after every batch is read")
        return self._max

    def _stream(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        try:
            for batch in batches:
                n = batch.num_rows
                if n == 0:
                    continue
                if self._cursor_index >= 0:
                    top = pc.max(batch.column(self._cursor_index)).as_py()
                    if top is not None and (self._max is None or top > self._max):
                        self._max = top
                for offset in range(0, n, self._chunk_rows):
                    piece = batch.slice(offset, self._chunk_rows)
                    self.rows += piece.num_rows
                    yield piece
            self.exhausted = True
        finally:
            self.close()

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self.batches

    def reader(self) -> pa.RecordBatchReader:
        """The batches as a one-shot ``RecordBatchReader`` (DuckDB ``register``, ``write_deltalake``)."""
        return pa.RecordBatchReader.from_batches(self.schema, self.batches)

    def close(self) -> None:
        close, self._close = self._close, _noop
        close()

    def __enter__(self) -> DatabaseRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _noop() -> None:
    return None


def read_database(
    spec: DatabaseSource, *, root: Path, since: Any | None = None, source_name: str | None = None,
) -> DatabaseRead:
    """Open a read of ``spec``: connect, resolve the schema, check the cursor column, start the
    query. With ``spec.cursor`` and ``since``, only rows with ``cursor > since - lookback``."""
    name = source_name or spec.name or spec.describe()
    if since is not None and spec.cursor is None:
        raise DefinitionError(f"source {name!r}: a watermark was given but the source declares no cursor=")
    opener = {"postgresql": _open_postgres, "mysql": _open_mysql, "sqlite": _open_sqlite}[spec.dialect]
    return opener(spec, root, since, name)


read_batches = read_database


# ---- cursor values -------------------------------------------------------------------------

def coerce_cursor(value: Any, kind: pa.DataType, *, where: str = "") -> Any:
    """``value`` (a watermark, possibly as text from JSON) as the Python value of a column of
    Arrow type ``kind``; naive datetimes are taken as UTC for a timezone-aware column."""
    if value is None:
        return None
    try:
        if pa.types.is_timestamp(kind):
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if isinstance(value, date) and not isinstance(value, datetime):
                value = datetime.combine(value, time())
            if not isinstance(value, datetime):
                raise TypeError
            if kind.tz:
                return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
        if pa.types.is_date(kind):
            if isinstance(value, str):
                value = datetime.fromisoformat(value) if len(value) > 10 else date.fromisoformat(value)
            if isinstance(value, datetime):
                return value.date()
            if isinstance(value, date):
                return value
            raise TypeError
        if pa.types.is_integer(kind):
            if isinstance(value, bool) or (isinstance(value, float | Decimal) and value != int(value)):
                raise TypeError
            return int(value)
        if pa.types.is_decimal(kind):
            if isinstance(value, bool | date):
                raise TypeError
            return Decimal(str(value))
        if pa.types.is_floating(kind):
            if isinstance(value, bool | date):
                raise TypeError
            return float(value)
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return str(value)
    except (TypeError, ValueError, ArithmeticError):
        raise DefinitionError(
            f"{where}watermark {value!r} does not fit the cursor column's type {kind}",
            hint="the stored watermark belongs to another cursor column or type: reset it with a full refresh",
        ) from None
    raise DefinitionError(
        f"{where}the cursor column has type {kind}, which cannot order rows",
        hint="use a timestamp, date, integer, decimal or text column as cursor=",
    )


def lower_bound(since: Any, lookback: timedelta | int | None, kind: pa.DataType, *, where: str = "") -> Any:
    """``since - lookback`` for a cursor of Arrow type ``kind`` (a date cursor moves back by
    whole days, rounding the lookback up)."""
    if since is None or lookback is None:
        return since
    temporal = pa.types.is_timestamp(kind) or pa.types.is_date(kind)
    if temporal and not isinstance(lookback, timedelta):
        raise DefinitionError(
            f"{where}lookback={lookback!r} is a number but the cursor is a {kind}",
            hint="give a duration for a date/timestamp cursor, e.g. lookback='2h'",
        )
    if not temporal and isinstance(lookback, timedelta):
        raise DefinitionError(
            f"{where}lookback={lookback} is a duration but the cursor is a {kind}",
            hint="give a number for a numeric cursor, e.g. lookback=1000",
        )
    if pa.types.is_date(kind):
        assert isinstance(lookback, timedelta)
        return since - timedelta(days=math.ceil(lookback.total_seconds() / 86400))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        raise DefinitionError(f"{where}lookback does not apply to a text cursor", hint="drop lookback=")
    return since - lookback


def dump_cursor(value: Any) -> str | None:
    """A cursor value as typed JSON text, for commit metadata: ``{"type": ..., "value": ...}``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a boolean cannot be a cursor value")
    text: str | int | float
    if isinstance(value, datetime):
        kind, text = "timestamp", value.isoformat()
    elif isinstance(value, date):
        kind, text = "date", value.isoformat()
    elif isinstance(value, int):
        kind, text = "int", value
    elif isinstance(value, Decimal):
        kind, text = "decimal", str(value)
    elif isinstance(value, float):
        kind, text = "float", value
    elif isinstance(value, str):
        kind, text = "string", value
    else:
        raise TypeError(f"unsupported cursor value {value!r}")
    return json.dumps({"type": kind, "value": text}, separators=(",", ":"))


def load_cursor(text: str | None) -> Any:
    """The inverse of :func:`dump_cursor`."""
    if text is None:
        return None
    data = json.loads(text)
    kind, value = data["type"], data["value"]
    loaders: dict[str, Callable[[Any], Any]] = {
        "timestamp": datetime.fromisoformat, "date": date.fromisoformat, "int": int,
        "decimal": Decimal, "float": float, "string": str,
    }
    return loaders[kind](value)


def check_cursor(previous: Any, new: Any, *, source_name: str | None = None) -> None:
    """Raise DataQualityError when the highest cursor value read now (``new``) is lower than
    the stored watermark (``previous``): the table went back in time (restored from a backup,
    rows deleted, clocks moved back) or the watermark belongs to another source."""
    if previous is None or new is None:
        return
    where = f"source {source_name!r}: " if source_name else ""
    try:
        backwards = new < previous
    except TypeError:
        raise DataQualityError(
            f"{where}cursor value {new!r} cannot be compared with the stored watermark {previous!r}",
            hint="the cursor column's type changed: reset the watermark with a full refresh",
        ) from None
    if backwards:
        raise DataQualityError(
            f"{where}cursor went backwards: the highest value read is {new!r}, lower than the "
            f"stored watermark {previous!r}",
            hint="was the table restored or were rows deleted? check the source, then reset "
            "the watermark with a full refresh",
        )


def batch_id(spec: DatabaseSource, since: Any, max_cursor: Any, row_count: int) -> str:
    """A stable id of what one read consumed, for idempotency keys: the source's identity, the
    watermark range and the row count. Without a cursor it cannot see changed rows of equal
    count, so a cursorless source should be treated as changed on every run."""
    return combine([
        "database", mask_url(spec.url), spec.table or "", spec.query or "", spec.cursor or "",
        dump_cursor(since) or "", dump_cursor(max_cursor) or "", str(int(row_count)),
    ])


def write_parquet(read: DatabaseRead, directory: Path, *, rows_per_file: int = 5_000_000) -> list[Path]:
    """Stage a read as Parquet files in ``directory`` (bounded memory), for an engine that binds
    a source more than once. Returns the files (one empty file when no row was read)."""
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    writer: pq.ParquetWriter | None = None
    in_file = 0
    try:
        for batch in read.batches:
            if writer is None or in_file >= rows_per_file:
                if writer is not None:
                    writer.close()
                paths.append(directory / f"part-{len(paths):05d}.parquet")
                writer = pq.ParquetWriter(paths[-1], read.schema, compression="zstd")
                in_file = 0
            writer.write_batch(batch)
            in_file += batch.num_rows
        if writer is None:
            paths.append(directory / "part-00000.parquet")
            pq.write_table(read.schema.empty_table(), paths[-1])
    finally:
        if writer is not None:
            writer.close()
        read.close()
    return paths


# ---- helpers shared by the dialects --------------------------------------------------------

def _first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), text.strip())


def _suggest(name: str, known: list[str]) -> str:
    lower = {k.lower(): k for k in known}
    if name.lower() in lower and lower[name.lower()] != name:
        return f" Did you mean {lower[name.lower()]!r}?"
    return did_you_mean(name, known)


def _what(spec: DatabaseSource) -> str:
    return f"table {spec.table}" if spec.table is not None else "query"


def _orderable(kind: pa.DataType) -> bool:
    return (
        pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_integer(kind)
        or pa.types.is_decimal(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    )


def _check_cursor_column(spec: DatabaseSource, names: list[str], where: str) -> None:
    if spec.cursor is not None and spec.cursor not in names:
        what = spec.table if spec.table is not None else "the query's columns"
        raise SourceError(
            f"{where}cursor column {spec.cursor!r} is not in {what}.{_suggest(spec.cursor, names)}",
            hint=f"columns: {', '.join(names)}",
        )


def _plan_cursor(
    spec: DatabaseSource, kind: pa.DataType | None, since: Any, where: str,
) -> tuple[Any, Any]:
    """The watermark coerced to the cursor column's type, and the lower bound to read from."""
    if spec.cursor is None or kind is None:
        return None, None
    if not _orderable(kind):
        raise DefinitionError(
            f"{where}cursor column {spec.cursor!r} has type {kind}, which cannot order rows",
            hint="use a timestamp, date, integer, decimal or text column as cursor=",
        )
    coerced = coerce_cursor(since, kind, where=where)
    assert not isinstance(spec.lookback, str), "DatabaseSource parses a text lookback when it is created"
    return coerced, lower_bound(coerced, spec.lookback, kind, where=where)


def _strip_query(query: str) -> str:
    return query.strip().rstrip(";").strip()


def _driver_missing(package: str, dialect: str, where: str) -> SourceError:
    return SourceError(
        f"{where}reading {dialect} needs the Python package {package!r}, which is not installed",
        hint=f"pip install {package}",
    )


# ---- PostgreSQL (ADBC) ---------------------------------------------------------------------

# SQLSTATE classes/codes worth a retry: connection exceptions, resources, shutdown, conflicts
_PG_TRANSIENT = ("08", "53", "57P01", "57P02", "57P03", "40001", "40P01", "55P03", "57014")
_PG_TRANSIENT_FATAL = ("starting up", "shutting down", "too many clients", "in recovery mode", "remaining connection slots")


def _pg_uri(url: str) -> str:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    params.setdefault("application_name", "headrace")
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(params), parts.fragment))


def _pg_message(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"(?:ERROR|FATAL):\s+(.*)", text)
    if match:
        return match.group(1).strip()
    line = _first_line(text)
    return re.sub(r"^([A-Z_]+: )?(\[libpq\] )?", "", line)


def _pg_error(exc: BaseException, spec: DatabaseSource, where: str, *, connecting: bool = False) -> Exception:
    import adbc_driver_manager

    message = _pg_message(exc)
    url = mask_url(spec.url)
    state = getattr(exc, "sqlstate", None) or ""
    if connecting and isinstance(exc, adbc_driver_manager.OperationalError):
        fatal = "FATAL:" in str(exc)
        if not fatal or any(s in message for s in _PG_TRANSIENT_FATAL):
            return TransientError(f"{where}cannot connect to {url}: {message}", hint="is the server up and reachable? the run will retry")
        return SourceError(f"{where}cannot connect to {url}: {message}", hint="check the user, password and database in the URL")
    if state.startswith(_PG_TRANSIENT) or (not state and isinstance(exc, adbc_driver_manager.OperationalError)):
        return TransientError(f"{where}reading {_what(spec)} from {url} failed: {message}", hint="the run will retry")
    return SourceError(f"{where}cannot read {_what(spec)} from {url}: {message}", hint="check the table name or the SQL against the database")


_PG_LOST = (
    "server closed the connection", "terminating connection", "could not receive data",
    "could not send data", "no connection to the server", "connection to server", "SSL SYSCALL",
    "conflict with recovery", "deadlock detected", "could not serialize access",
)


def _pg_stream_error(exc: BaseException, spec: DatabaseSource, where: str) -> Exception:
    """An error while streaming: the Arrow C stream carries libpq's text but no SQLSTATE."""
    text = str(exc)
    message = _pg_message(exc)
    url = mask_url(spec.url)
    if any(marker in text for marker in _PG_LOST) or ("ERROR:" not in text and "FATAL:" in text):
        return TransientError(f"{where}reading {_what(spec)} from {url} failed: {message}", hint="the run will retry")
    return SourceError(f"{where}reading {_what(spec)} from {url} failed: {message}", hint="check the SQL and the data against the database")


def _pg_ident(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def _pg_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return f"'{value}'::numeric"
    if isinstance(value, float):
        return f"'{value!r}'::float8"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::{'timestamptz' if value.tzinfo else 'timestamp'}"
    if isinstance(value, date):
        return f"'{value.isoformat()}'::date"
    text = str(value).replace("\\", "\\\\").replace("'", "''")
    return f"E'{text}'"


def _pg_typmod(field: pa.Field) -> int:
    meta = field.metadata or {}
    try:
        return int(meta.get(b"POSTGRESQL:typmod", b"-1"))
    except ValueError:
        return -1


def _pg_typname(field: pa.Field) -> str:
    meta = field.metadata or {}
    raw = meta.get(b"POSTGRESQL:type") or meta.get(b"ADBC:postgresql:typname") or b""
    return raw.decode()


def _has_extension(kind: pa.DataType) -> bool:
    if isinstance(kind, pa.BaseExtensionType):
        return True
    return any(_has_extension(kind.field(i).type) for i in range(kind.num_fields))


def _pg_plan(field: pa.Field) -> tuple[str, pa.DataType, str | None]:
    """(select expression, target Arrow type, client-side conversion) for one column."""
    column = _pg_ident(field.name)
    kind = field.type
    typname = _pg_typname(field)
    if typname == "money":
        return f"{column}::numeric(38,2) AS {column}", pa.decimal128(38, 2), "decimal"
    if isinstance(kind, pa.BaseExtensionType):
        if typname == "numeric" or getattr(kind, "type_name", None) == "numeric":
            typmod = _pg_typmod(field)
            if typmod < 4:
                return column, UNCONSTRAINED_DECIMAL, "decimal"
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
            if precision > 38 or scale > precision:
                return f"{column}::text AS {column}", pa.string(), None
            return column, pa.decimal128(precision, scale), "decimal"
        if kind.extension_name == "arrow.json" and pa.types.is_string(kind.storage_type):
            return column, pa.string(), "storage"
        return f"{column}::text AS {column}", pa.string(), None  # uuid, inet, enum-like opaque ...
    if _has_extension(kind):
        return f"{column}::text AS {column}", pa.string(), None  # arrays of numeric, uuid ...
    return column, kind, None


class _PgConnection:
    """ADBC's low-level API (database, connection, statements). Why not its DB-API module:
    importing that pulls in pyarrow.dataset and probes for pandas/polars (+0.2 s per process)."""

    def __init__(self, uri: str) -> None:
        import adbc_driver_manager
        import adbc_driver_postgresql

        self.database = adbc_driver_postgresql.connect(uri)
        try:
            self.connection = adbc_driver_manager.AdbcConnection(self.database)  # autocommit
        except BaseException:
            self.database.close()
            raise
        self._statements: list[Any] = []

    def statement(self, sql: str) -> Any:
        import adbc_driver_manager

        statement = adbc_driver_manager.AdbcStatement(self.connection)
        self._statements.append(statement)
        statement.set_sql_query(sql)
        return statement

    def schema(self, sql: str) -> pa.Schema:
        return pa.schema(self.statement(sql).execute_schema())

    def stream(self, sql: str, **options: str) -> pa.RecordBatchReader:
        statement = self.statement(sql)
        if options:
            statement.set_options(**options)
        handle, _ = statement.execute_query()
        return pa.RecordBatchReader.from_stream(handle)

    def close(self) -> None:
        for thing in (*self._statements, self.connection, self.database):
            try:
                thing.close()
            except Exception:
                pass


def _open_postgres(spec: DatabaseSource, root: Path, since: Any, name: str) -> DatabaseRead:
    where = f"source {name!r}: "
    try:
        import adbc_driver_manager
    except ImportError:
        raise _driver_missing("adbc-driver-postgresql", "PostgreSQL", where) from None
    try:
        con = _PgConnection(_pg_uri(spec.url))
    except ImportError:
        raise _driver_missing("adbc-driver-postgresql", "PostgreSQL", where) from None
    except adbc_driver_manager.Error as exc:
        raise _pg_error(exc, spec, where, connecting=True) from None
    relation = _pg_ident(spec.table) if spec.table is not None else f"(\n{_strip_query(spec.query or '')}\n) AS {_SUBQUERY}"
    try:
        try:
            base = con.schema(f"SELECT * FROM {relation}")
        except adbc_driver_manager.Error as exc:
            error = _pg_error(exc, spec, where)
            if spec.table is not None and getattr(exc, "sqlstate", None) in ("42P01", "3F000"):
                error = _pg_missing_table(con, spec, where, _pg_message(exc))
            raise error from None
        plans = [_pg_plan(f) for f in base]
        schema = pa.schema([pa.field(f.name, kind) for f, (_, kind, _) in zip(base, plans, strict=True)])
        _check_cursor_column(spec, schema.names, where)
        coerced, bound = _plan_cursor(spec, schema.field(spec.cursor).type if spec.cursor else None, since, where)
        sql = f"SELECT {', '.join(p[0] for p in plans)} FROM {relation}"
        if bound is not None:
            sql += f" WHERE {_pg_ident(spec.cursor or '')} > {_pg_literal(bound)}"
        hint = min(16 << 20, max(1 << 20, spec.chunk_rows * 64))
        try:
            stream = con.stream(sql, **{"adbc.postgresql.batch_size_hint_bytes": str(hint)})
        except adbc_driver_manager.Error as exc:
            raise _pg_error(exc, spec, where) from None
    except BaseException:
        con.close()
        raise

    conversions = [(i, conv, kind) for i, (_, kind, conv) in enumerate(plans) if conv]

    def convert(batch: pa.RecordBatch) -> pa.RecordBatch:
        if not conversions:
            return pa.RecordBatch.from_arrays(batch.columns, schema=schema)
        columns = list(batch.columns)
        for i, conv, kind in conversions:
            column = columns[i]
            if isinstance(column, pa.ExtensionArray):
                column = column.storage
            if conv == "decimal":
                try:
                    column = pc.cast(column, kind)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SourceError(
                        f"{where}column {schema.field(i).name!r} (numeric) does not fit {kind}: {exc}",
                        hint=f"cast it in a query, e.g. {schema.field(i).name}::numeric(38, 6), or "
                        "to text; NaN and infinite numerics cannot be stored as decimals",
                    ) from None
            columns[i] = column
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            for batch in stream:
                yield convert(batch)
        except adbc_driver_manager.Error as exc:
            raise _pg_error(exc, spec, where) from None
        except (OSError, pa.ArrowException) as exc:  # the C stream reports errors as Arrow errors
            raise _pg_stream_error(exc, spec, where) from None

    def close() -> None:
        try:
            stream.close()
        except Exception:
            pass
        con.close()

    return DatabaseRead(
        source_name=name, schema=schema, batches=batches(), close=close, sql=sql, since=coerced,
        lower_bound=bound, cursor=spec.cursor, chunk_rows=spec.chunk_rows,
    )


def _pg_missing_table(con: _PgConnection, spec: DatabaseSource, where: str, message: str) -> SourceError:
    known: list[str] = []
    try:
        known = con.stream(
            "SELECT CASE WHEN table_schema = 'public' THEN table_name ELSE table_schema || '.' || table_name END "
            "FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).read_all().column(0).to_pylist()
    except Exception:
        pass
    return SourceError(
        f"{where}table {spec.table!r} does not exist in {mask_url(spec.url)} ({message}).{_suggest(spec.table or '', known)}",
        hint="check the table name (schema.table; names are case-sensitive as written)",
    )


# ---- MySQL / MariaDB (PyMySQL, unbuffered) -------------------------------------------------

_MY_TRANSIENT = {1040, 1053, 1205, 1213, 1317, 2002, 2003, 2005, 2006, 2011, 2012, 2013, 2055}
_MY_NO_TABLE = {1146, 1049, 1051}
_ZERO_DATE = "0000-00-00"


def _my_error(exc: BaseException, spec: DatabaseSource, where: str, *, connecting: bool = False) -> Exception:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    code = args[0] if args and isinstance(args[0], int) else None
    message = str(args[1]) if len(args) > 1 else str(exc)
    url = mask_url(spec.url)
    if code in _MY_TRANSIENT or (code is None and connecting):
        return TransientError(f"{where}cannot reach {url}: {_first_line(message)}", hint="is the server up and reachable? the run will retry")
    if connecting:
        return SourceError(f"{where}cannot connect to {url}: {_first_line(message)}", hint="check the user, password and database in the URL")
    return SourceError(f"{where}cannot read {_what(spec)} from {url}: {_first_line(message)}", hint="check the table name or the SQL against the database")


def _my_ident(name: str) -> str:
    return ".".join("`" + part.replace("`", "``") + "`" for part in name.split("."))


def _my_connect_args(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    args: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "user": unquote(parts.username) if parts.username else "root",
        "password": unquote(parts.password) if parts.password else "",
        "database": unquote(parts.path.lstrip("/")) or None,
        "charset": params.pop("charset", "utf8mb4"),
        "connect_timeout": int(params.pop("connect_timeout", CONNECT_TIMEOUT_S)),
    }
    if "unix_socket" in params:
        args["unix_socket"] = params.pop("unix_socket")
    if params.pop("ssl", "").lower() in ("1", "true", "required"):
        args["ssl"] = {}
    return args


def _my_plan(field: Any) -> tuple[pa.DataType, str]:
    """(target Arrow type, conversion) for one PyMySQL field descriptor."""
    from pymysql.constants import FIELD_TYPE, FLAG

    code, flags, length = field.type_code, field.flags, field.length
    unsigned = bool(flags & FLAG.UNSIGNED)
    binary = field.charsetnr == 63
    if code == FIELD_TYPE.TINY:
        if length == 1 and not unsigned:
            return pa.bool_(), "bool"  # TINYINT(1) is MySQL's BOOLEAN
        return (pa.uint8() if unsigned else pa.int8()), "cast"
    ints = {
        FIELD_TYPE.SHORT: (pa.int16(), pa.uint16()),
        FIELD_TYPE.INT24: (pa.int32(), pa.uint32()),
        FIELD_TYPE.LONG: (pa.int32(), pa.uint32()),
        FIELD_TYPE.LONGLONG: (pa.int64(), pa.uint64()),
    }
    if code in ints:
        return ints[code][unsigned], "cast"
    if code == FIELD_TYPE.YEAR:
        return pa.int16(), "cast"
    if code == FIELD_TYPE.FLOAT:
        return pa.float32(), "cast"
    if code == FIELD_TYPE.DOUBLE:
        return pa.float64(), "cast"
    if code in (FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL):
        scale = field.scale
        precision = length - (1 if scale else 0) - (0 if unsigned else 1)
        if 0 < precision <= 38:
            return pa.decimal128(precision, scale), "cast"
        return pa.string(), "text"
    if code in (FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE):
        return pa.date32(), "date"
    if code == FIELD_TYPE.DATETIME:
        return pa.timestamp("us"), "datetime"
    if code == FIELD_TYPE.TIMESTAMP:
        return pa.timestamp("us", "UTC"), "datetime"  # the session runs in UTC
    if code == FIELD_TYPE.BIT:
        return (pa.bool_() if length == 1 else pa.int64()), "bit"
    if code == FIELD_TYPE.GEOMETRY:
        return pa.binary(), "binary"
    if code == FIELD_TYPE.JSON:
        return pa.string(), "text"
    if binary and code in (
        FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB, FIELD_TYPE.BLOB,
        FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.VARCHAR,
    ):
        return pa.binary(), "binary"
    return pa.string(), "text"  # char, varchar, text, enum, set, time, null


def _my_column(values: list[Any], kind: pa.DataType, conv: str) -> pa.Array:
    if conv == "binary":
        return pa.array(values, pa.binary())
    if conv == "bit":
        ints = [None if v is None else int.from_bytes(v, "big") for v in values]
        return pa.array([None if v is None else v != 0 for v in ints] if pa.types.is_boolean(kind) else ints, kind)
    text = pa.array(values, pa.string())
    if conv == "text":
        return text
    if conv == "bool":
        return pc.not_equal(pc.cast(text, pa.int16()), 0)
    if conv in ("date", "datetime"):
        text = pc.if_else(pc.starts_with(text, _ZERO_DATE), pa.scalar(None, pa.string()), text)
        if conv == "date":
            return pc.cast(text, pa.date32())
        naive = pc.cast(text, pa.timestamp("us"))
        return naive if kind.tz is None else pc.cast(naive, kind)
    return pc.cast(text, kind)


def _open_mysql(spec: DatabaseSource, root: Path, since: Any, name: str) -> DatabaseRead:
    where = f"source {name!r}: "
    try:
        import pymysql
        import pymysql.converters
        import pymysql.cursors
    except ImportError:
        raise _driver_missing("pymysql", "MySQL/MariaDB", where) from None
    try:
        args = _my_connect_args(spec.url)
        con = pymysql.connect(
            **args, conv=dict(pymysql.converters.encoders),  # encoders only: values arrive as text
            # UTC for TIMESTAMP columns; a slow consumer (a transform between chunks) must not
            # trip the server's default 60 s write timeout on an unbuffered result
            init_command="SET time_zone = '+00:00', net_write_timeout = 3600", autocommit=True,
        )
    except pymysql.Error as exc:
        raise _my_error(exc, spec, where, connecting=True) from None
    except (OSError, ValueError) as exc:
        raise TransientError(f"{where}cannot reach {mask_url(spec.url)}: {exc}", hint="the run will retry") from None
    relation = _my_ident(spec.table) if spec.table is not None else f"(\n{_strip_query(spec.query or '')}\n) AS `__hr_src`"
    try:
        try:
            with con.cursor() as probe:
                probe.execute(f"SELECT * FROM {relation} LIMIT 0")
                fields = list(probe._result.fields) if probe._result and probe._result.fields else []
        except pymysql.Error as exc:
            code = exc.args[0] if exc.args else None
            if spec.table is not None and code in _MY_NO_TABLE:
                raise _my_missing_table(con, spec, where, str(exc.args[1] if len(exc.args) > 1 else exc)) from None
            raise _my_error(exc, spec, where) from None
        plans = [_my_plan(f) for f in fields]
        schema = pa.schema([pa.field(f.name, kind) for f, (kind, _) in zip(fields, plans, strict=True)])
        _check_cursor_column(spec, schema.names, where)
        coerced, bound = _plan_cursor(spec, schema.field(spec.cursor).type if spec.cursor else None, since, where)
        sql = f"SELECT * FROM {relation}"
        if bound is not None:
            literal = bound.astimezone(UTC).replace(tzinfo=None) if isinstance(bound, datetime) and bound.tzinfo else bound
            sql += f" WHERE {_my_ident(spec.cursor or '')} > {con.escape(literal)}"
        cur = con.cursor(pymysql.cursors.SSCursor)
        try:
            cur.execute(sql)
        except pymysql.Error as exc:
            raise _my_error(exc, spec, where) from None
    except BaseException:
        con.close()
        raise

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            while True:
                rows = cur.fetchmany(spec.chunk_rows)
                if not rows:
                    return
                columns = list(zip(*rows, strict=True))
                arrays = []
                for i, (kind, conv) in enumerate(plans):
                    try:
                        arrays.append(_my_column(list(columns[i]), kind, conv))
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
                        raise SourceError(
                            f"{where}column {schema.field(i).name!r} does not convert to {kind}: {_first_line(str(exc))}",
                            hint="cast the column in a query (e.g. to CHAR) to read it as text",
                        ) from None
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        except pymysql.Error as exc:
            raise _my_error(exc, spec, where) from None

    def close() -> None:
        # not cur.close(): that would read the rest of an unbuffered result; closing the
        # connection makes the server abandon it
        result = getattr(cur, "_result", None)
        if result is not None:
            result.unbuffered_active = False
        cur.connection = None
        try:
            con.close()
        except Exception:
            pass

    return DatabaseRead(
        source_name=name, schema=schema, batches=batches(), close=close, sql=sql, since=coerced,
        lower_bound=bound, cursor=spec.cursor, chunk_rows=spec.chunk_rows,
    )


def _my_missing_table(con: Any, spec: DatabaseSource, where: str, message: str) -> SourceError:
    known: list[str] = []
    try:
        with con.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
            known = [str(row[0]) for row in cur.fetchall()]
    except Exception:
        pass
    return SourceError(
        f"{where}table {spec.table!r} does not exist in {mask_url(spec.url)} ({message}).{_suggest(spec.table or '', known)}",
        hint="check the table name (database.table or table)",
    )


# ---- SQLite (standard library) -------------------------------------------------------------

_SQLITE_DECIMAL = re.compile(r"(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", re.IGNORECASE)


def _sqlite_type(declared: str) -> pa.DataType | None:
    """Arrow type of a declared SQLite column type (None: untyped, inferred from values)."""
    decl = declared.upper().strip()
    if not decl:
        return None
    match = _SQLITE_DECIMAL.search(decl)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2) or 0)
        if 0 < precision <= 38 and scale <= precision:
            return pa.decimal128(precision, scale)
    if "BOOL" in decl:
        return pa.bool_()
    if "INT" in decl:
        return pa.int64()
    if "TIMESTAMPTZ" in decl or "WITH TIME ZONE" in decl:
        return pa.timestamp("us", "UTC")
    if "DATETIME" in decl or "TIMESTAMP" in decl:
        return pa.timestamp("us")
    if "DATE" in decl:
        return pa.date32()
    if any(word in decl for word in ("CHAR", "CLOB", "TEXT", "JSON", "UUID")):
        return pa.string()
    if "BLOB" in decl:
        return pa.binary()
    if any(word in decl for word in ("REAL", "FLOA", "DOUB", "NUMERIC", "DECIMAL")):
        return pa.float64()
    return None


def _sqlite_column(values: list[Any], kind: pa.DataType) -> pa.Array:
    if pa.types.is_boolean(kind):
        return pa.array([None if v is None else bool(v) for v in values], kind)
    if pa.types.is_decimal(kind):
        return pa.array([None if v is None else Decimal(str(v)) for v in values], kind)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        # SQLite keeps dates as ISO text; a timestamp column with a time zone needs offsets
        return pc.cast(pa.array([None if v is None else str(v) for v in values], pa.string()), kind)
    if pa.types.is_string(kind):
        return pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], kind)
    return pa.array(values, kind)


def _sqlite_param(value: Any) -> Any:
    """A watermark as SQLite compares it: ISO text with a space (SQLite's own format)."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _open_sqlite(spec: DatabaseSource, root: Path, since: Any, name: str) -> DatabaseRead:
    where = f"source {name!r}: "
    path = Path(sqlite_path(spec.url))
    if not path.is_absolute():
        path = root / path
    if not path.is_file():
        raise SourceError(f"{where}SQLite database {path} does not exist", hint="check the path in the URL (relative to the project root)", path=str(path))
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise SourceError(f"{where}cannot open SQLite database {path}: {exc}", path=str(path)) from None
    quote = lambda n: ".".join('"' + p.replace('"', '""') + '"' for p in n.split("."))  # noqa: E731
    relation = quote(spec.table) if spec.table is not None else f"(\n{_strip_query(spec.query or '')}\n) AS {_SUBQUERY}"
    try:
        try:
            con.execute(f"CREATE TEMP VIEW __hr_probe AS SELECT * FROM {relation}")
            info = con.execute("PRAGMA temp.table_info(__hr_probe)").fetchall()
            con.execute("DROP VIEW temp.__hr_probe")
        except sqlite3.Error as exc:
            message = str(exc)
            if spec.table is not None and message.startswith("no such table"):
                known = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
                raise SourceError(
                    f"{where}table {spec.table!r} does not exist in {path} ({message}).{_suggest(spec.table, known)}",
                    hint="check the table name",
                ) from None
            raise SourceError(f"{where}cannot read {_what(spec)} from {path}: {message}", hint="check the SQL") from None
        names = [row[1] for row in info]
        declared = [_sqlite_type(row[2] or "") for row in info]
        sql = f"SELECT * FROM {relation}"
        _check_cursor_column(spec, names, where)
        params: tuple[Any, ...] = ()
        coerced, bound = None, None
        if spec.cursor is not None:
            # an untyped cursor column (an expression) is compared as the watermark's own type
            kind = declared[names.index(spec.cursor)] or (_python_kind(since) if since is not None else None)
            coerced, bound = _plan_cursor(spec, kind, since, where)
            if bound is not None:
                sql += f" WHERE {quote(spec.cursor)} > ?"
                params = (_sqlite_param(bound),)
        cur = con.cursor()
        try:
            cur.execute(sql, params)
            first = cur.fetchmany(spec.chunk_rows)
        except sqlite3.Error as exc:
            raise SourceError(f"{where}cannot read {_what(spec)} from {path}: {exc}") from None
        kinds: list[pa.DataType] = []
        for i, kind in enumerate(declared):
            if kind is None:
                sample = [row[i] for row in first if row[i] is not None]
                try:
                    kind = pa.array(sample).type if sample else pa.string()
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    kind = pa.string()
                if pa.types.is_null(kind):
                    kind = pa.string()
            kinds.append(kind)
        schema = pa.schema([pa.field(n, k) for n, k in zip(names, kinds, strict=True)])
    except BaseException:
        con.close()
        raise

    def convert(rows: list[tuple[Any, ...]]) -> pa.RecordBatch:
        columns = list(zip(*rows, strict=True))
        arrays = []
        for i, kind in enumerate(kinds):
            try:
                arrays.append(_sqlite_column(list(columns[i]), kind))
            except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, ArithmeticError) as exc:
                raise SourceError(
                    f"{where}column {names[i]!r} holds a value that is not {kind}: {_first_line(str(exc))}",
                    hint="SQLite columns can hold any type: cast the column in a query",
                ) from None
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def batches() -> Iterator[pa.RecordBatch]:
        rows = first
        try:
            while rows:
                yield convert(rows)
                rows = cur.fetchmany(spec.chunk_rows)
        except sqlite3.Error as exc:
            raise SourceError(f"{where}reading {_what(spec)} from {path} failed: {exc}") from None

    return DatabaseRead(
        source_name=name, schema=schema, batches=batches(), close=con.close, sql=sql, since=coerced,
        lower_bound=bound, cursor=spec.cursor, chunk_rows=spec.chunk_rows,
    )


def _python_kind(value: Any) -> pa.DataType:
    if isinstance(value, datetime):
        return pa.timestamp("us", "UTC" if value.tzinfo else None)
    if isinstance(value, date):
        return pa.date32()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, Decimal):
        return pa.decimal128(38, 18)
    if isinstance(value, float):
        return pa.float64()
    return pa.string()
