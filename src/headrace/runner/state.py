"""The run-state store: what ran, when, how it ended, and who holds which lock.

The runner records every run, every table task and every attempt here so that ``headrace``
can show history, resume or retry a failed run, and map Delta versions back to the run
that wrote them. The store is SQLite (the default, one file next to the project, through the
standard library's ``sqlite3``) or PostgreSQL (shared by several machines, through
SQLAlchemy and psycopg). Both run the same SQL text (``:name`` parameters); SQLAlchemy is
imported only for PostgreSQL, so a local run does not pay ~0.1 s of start-up for it.

Concurrency model, because both backends are used from several threads of one runner *and*
from several processes at once (two ``headrace run`` in parallel):

* SQLite: WAL journal, a 30 s busy timeout, writes serialized inside the process by a
  ``threading.Lock`` and across processes by ``BEGIN IMMEDIATE`` (which waits on the busy
  timeout instead of failing on a read-to-write upgrade). Each thread borrows a connection
  from a small pool for one transaction.
* PostgreSQL: ordinary transactions; schema creation is serialized by an advisory lock.

Named locks (:meth:`StateStore.lock`) are a lease row on SQLite (renewed by a heartbeat,
stolen when expired or when its holder's pid is dead on this host) and a session advisory
lock on PostgreSQL (released by the server when the holder's connection dies).

The SQLAlchemy ``Table`` objects (``METADATA``, ``RUNS``, ``TASKS``, ``ATTEMPTS``,
``CHECKS``, ``LOCKS``) describe the schema; they are built on first use (PostgreSQL schema
creation, tests, tools). ``_SQLITE_SCHEMA`` is what SQLAlchemy creates from them on SQLite
(same tables, columns, types, constraints and index names), so a store written by either
reads the same; instants are stored as SQLAlchemy stores them there (UTC text).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote

from headrace.errors import SelectionError, StateStoreError, TransientError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = [
    "AttemptRecord",
    "RunRecord",
    "StateStore",
    "TaskRecord",
]

log = logging.getLogger(__name__)

#: How long an SQLite lock row stays valid without a heartbeat. Must exceed the heartbeat
#: interval plus the busy timeout a heartbeat write may wait, so a live holder never lapses.
LOCK_LEASE_SECONDS: float = 60.0
#: How often the holder of an SQLite lock renews its lease.
LOCK_HEARTBEAT_SECONDS: float = 15.0

_SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
_PG_CONNECT_TIMEOUT_S: Final = 5
_MIN_PREFIX: Final = 4
_SCHEMA_LOCK_NAME: Final = "headrace:schema"
_OPEN_HINT_PG: Final = "check [state] url in headrace.toml or that the server is running"
_OPEN_HINT_SQLITE: Final = (
    "check [state] url in headrace.toml and that its directory exists or can be created "
    "and is writable"
)
_USE_HINT: Final = "check that the state store is reachable and not full or read-only"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunRecord:
    """One ``headrace`` invocation that touched tables."""

    run_id: str
    project: str
    profile: str
    command: str
    selection: list[str]
    status: str
    started_at: datetime
    ended_at: datetime | None
    parent_run_id: str | None
    host: str
    pid: int
    tables_total: int


@dataclass(frozen=True)
class TaskRecord:
    """The latest state of one table inside one run."""

    run_id: str
    table: str
    status: str
    attempts: int
    started_at: datetime | None
    ended_at: datetime | None
    rows_in: int | None
    rows_out: int | None
    delta_version: int | None
    operation: str | None
    message: str | None
    error: str | None
    error_kind: str | None
    rows_quarantined: int | None = None
    rows_dropped: int | None = None


@dataclass(frozen=True)
class CheckRecord:
    """One check's result in one run of one table (kept as history)."""

    run_id: str
    table: str
    name: str
    kind: str
    severity: str
    passed: bool
    failing: int
    total: int
    ratio: float | None
    metric: float | None
    message: str
    sample: list[dict[str, Any]]
    created_at: datetime


@dataclass(frozen=True)
class AttemptRecord:
    """One try at building a table; a task has one or more (retries)."""

    run_id: str
    table: str
    attempt: int
    status: str
    started_at: datetime
    ended_at: datetime | None
    error: str | None
    error_kind: str | None


#: Columns ``update_task`` may set; ``run_id`` and ``table`` identify the row and never change.
_TASK_FIELDS: Final = frozenset(
    {
        "status",
        "attempts",
        "started_at",
        "ended_at",
        "rows_in",
        "rows_out",
        "delta_version",
        "operation",
        "message",
        "error",
        "error_kind",
        "rows_quarantined",
        "rows_dropped",
    }
)

#: Columns holding instants (UTC; see ``_bind_instant``).
_INSTANTS: Final = frozenset({"started_at", "ended_at", "created_at", "acquired_at", "expires_at"})


# --------------------------------------------------------------------------- schema

# Tables are prefixed so a PostgreSQL state store can live in a database shared with others.
# What SQLAlchemy's ``METADATA.create_all`` creates on SQLite for the tables of ``_schema()``
# (keep the two in step).
_SQLITE_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS headrace_runs (
        id INTEGER NOT NULL,
        run_id VARCHAR(255) NOT NULL,
        project TEXT NOT NULL,
        profile TEXT NOT NULL,
        command TEXT NOT NULL,
        selection TEXT NOT NULL,
        status VARCHAR(32) NOT NULL,
        started_at DATETIME NOT NULL,
        ended_at DATETIME,
        parent_run_id VARCHAR(255),
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        tables_total INTEGER NOT NULL,
        PRIMARY KEY (id),
        UNIQUE (run_id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_headrace_runs_started_at ON headrace_runs (started_at)",
    """CREATE TABLE IF NOT EXISTS headrace_tasks (
        id INTEGER NOT NULL,
        run_id VARCHAR(255) NOT NULL,
        table_name VARCHAR(512) NOT NULL,
        status VARCHAR(32) NOT NULL,
        attempts INTEGER NOT NULL,
        started_at DATETIME,
        ended_at DATETIME,
        rows_in BIGINT,
        rows_out BIGINT,
        delta_version BIGINT,
        operation TEXT,
        message TEXT,
        error TEXT,
        error_kind TEXT,
        rows_quarantined BIGINT,
        rows_dropped BIGINT,
        PRIMARY KEY (id),
        CONSTRAINT uq_headrace_tasks_run_table UNIQUE (run_id, table_name)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_headrace_tasks_table_name ON headrace_tasks (table_name)",
    """CREATE TABLE IF NOT EXISTS headrace_attempts (
        run_id VARCHAR(255) NOT NULL,
        table_name VARCHAR(512) NOT NULL,
        attempt INTEGER NOT NULL,
        status VARCHAR(32) NOT NULL,
        started_at DATETIME NOT NULL,
        ended_at DATETIME,
        error TEXT,
        error_kind TEXT,
        PRIMARY KEY (run_id, table_name, attempt)
    )""",
    """CREATE TABLE IF NOT EXISTS headrace_check_results (
        id INTEGER NOT NULL,
        run_id VARCHAR(255) NOT NULL,
        table_name VARCHAR(512) NOT NULL,
        check_name VARCHAR(512) NOT NULL,
        kind VARCHAR(64) NOT NULL,
        severity VARCHAR(16) NOT NULL,
        passed BOOLEAN NOT NULL,
        failing BIGINT NOT NULL,
        total BIGINT NOT NULL,
        ratio FLOAT,
        metric FLOAT,
        message TEXT NOT NULL,
        sample TEXT NOT NULL,
        created_at DATETIME NOT NULL,
        PRIMARY KEY (id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_headrace_checks_table "
    "ON headrace_check_results (table_name, check_name, id)",
    """CREATE TABLE IF NOT EXISTS headrace_locks (
        name VARCHAR(512) NOT NULL,
        owner TEXT NOT NULL,
        host TEXT NOT NULL,
        pid BIGINT NOT NULL,
        token VARCHAR(64) NOT NULL,
        acquired_at DATETIME NOT NULL,
        expires_at DATETIME,
        PRIMARY KEY (name)
    )""",
)


@functools.cache
def _schema() -> dict[str, Any]:
    """The SQLAlchemy schema objects, built (and SQLAlchemy imported) on first use."""
    import sqlalchemy as sa
    from sqlalchemy.engine import Dialect

    class UTCDateTime(sa.types.TypeDecorator[datetime]):
        """Stores instants in UTC and always hands back timezone-aware UTC datetimes.

        SQLite has no time zones and psycopg returns the session's zone; normalizing here
        keeps every record comparable and makes string ordering in SQLite chronological.
        """

        impl = sa.DateTime(timezone=True)
        cache_ok = True

        def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
            value = value.astimezone(UTC)
            return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

        def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
            if value is None:
                return None
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    metadata = sa.MetaData()
    runs = sa.Table(
        "headrace_runs",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(255), nullable=False, unique=True),
        sa.Column("project", sa.Text, nullable=False),
        sa.Column("profile", sa.Text, nullable=False),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("selection", sa.Text, nullable=False),  # JSON list of strings
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime()),
        sa.Column("parent_run_id", sa.String(255)),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.BigInteger, nullable=False),
        sa.Column("tables_total", sa.Integer, nullable=False),
        sa.Index("ix_headrace_runs_started_at", "started_at"),
    )
    tasks = sa.Table(
        "headrace_tasks",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("table_name", sa.String(512), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("ended_at", UTCDateTime()),
        sa.Column("rows_in", sa.BigInteger),
        sa.Column("rows_out", sa.BigInteger),
        sa.Column("delta_version", sa.BigInteger),
        sa.Column("operation", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("error_kind", sa.Text),
        sa.Column("rows_quarantined", sa.BigInteger),
        sa.Column("rows_dropped", sa.BigInteger),
        sa.UniqueConstraint("run_id", "table_name", name="uq_headrace_tasks_run_table"),
        sa.Index("ix_headrace_tasks_table_name", "table_name"),
    )
    attempts = sa.Table(
        "headrace_attempts",
        metadata,
        sa.Column("run_id", sa.String(255), primary_key=True),
        sa.Column("table_name", sa.String(512), primary_key=True),
        sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime()),
        sa.Column("error", sa.Text),
        sa.Column("error_kind", sa.Text),
    )
    checks = sa.Table(
        "headrace_check_results",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("table_name", sa.String(512), nullable=False),
        sa.Column("check_name", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("failing", sa.BigInteger, nullable=False),
        sa.Column("total", sa.BigInteger, nullable=False),
        sa.Column("ratio", sa.Float),
        sa.Column("metric", sa.Float),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("sample", sa.Text, nullable=False),  # JSON list of objects
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Index("ix_headrace_checks_table", "table_name", "check_name", "id"),
    )
    locks = sa.Table(
        "headrace_locks",
        metadata,
        sa.Column("name", sa.String(512), primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.BigInteger, nullable=False),
        sa.Column("token", sa.String(64), nullable=False),  # identifies one acquisition
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime()),  # SQLite lease; NULL on PostgreSQL
    )
    return {
        "UTCDateTime": UTCDateTime,
        "METADATA": metadata,
        "RUNS": runs,
        "TASKS": tasks,
        "ATTEMPTS": attempts,
        "CHECKS": checks,
        "LOCKS": locks,
    }


def __getattr__(name: str) -> Any:
    """``METADATA``, ``RUNS``, ... and ``UTCDateTime`` on first access (see ``_schema``)."""
    if name in ("UTCDateTime", "METADATA", "RUNS", "TASKS", "ATTEMPTS", "CHECKS", "LOCKS"):
        return _schema()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _host() -> str:
    return socket.gethostname()


def mask_url(url: str) -> str:
    """Hide any password in ``url`` so it can be shown in messages and logs."""
    masked = re.sub(r"^([A-Za-z][\w+.\-]*://[^/?#@:]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"(?i)(password=)[^&]*", r"\1***", masked)


def _short_reason(exc: BaseException) -> str:
    """One line that says why a database call failed, without SQL or driver boilerplate."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
    if isinstance(orig, BaseException):
        text = str(orig)
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror.lower()
    else:
        text = str(exc)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    # psycopg: 'connection to server at "h", port 1 failed: Connection refused'
    if "failed: " in line:
        line = line.rsplit("failed: ", 1)[1]
    line = re.sub(r"^(FATAL|ERROR):\s*", "", line)
    line = re.sub(r"\s+", " ", line).strip()
    if len(line) > 1 and line[0].isupper() and line[1].islower():
        line = line[0].lower() + line[1:]
    return line[:300]


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host; unknown is treated as alive (never steal wrongly)."""
    if pid <= 0 or sys.platform == "win32":  # os.kill(pid, 0) would terminate on Windows
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists but belongs to someone else
        return True
    return True


def _process_started(pid: int) -> datetime | None:
    """When process ``pid`` started (Linux ``/proc``); None when it cannot be told."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the name
        return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), UTC)
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def process_gone(host: str | None, pid: int | None, *, since: datetime | None = None) -> bool:
    """Whether the process that recorded ``host``/``pid`` (at ``since``) has ended: it ran on
    this host and that pid is free now, or now belongs to a process started after ``since``
    (pids are reused). Other hosts' processes cannot be seen: never gone (never steal wrongly)."""
    if host != _host() or not pid:
        return False
    if not _pid_alive(int(pid)):
        return True
    started = _process_started(int(pid)) if since is not None else None
    return started is not None and since is not None and started > since + timedelta(seconds=2)


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``, namespaced to headrace."""
    digest = hashlib.blake2b(f"headrace:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _bind_instant(value: datetime | None, dialect: str) -> datetime | str | None:
    """An instant as stored: UTC; on SQLite the text SQLAlchemy's ``DateTime`` writes there
    (``YYYY-MM-DD HH:MM:SS.ffffff``, fixed width, so string order is time order)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
    value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds") if dialect == "sqlite" else value


def _instant(value: Any) -> datetime | None:
    """A stored instant as a timezone-aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class _Target:
    """Where the store lives, resolved from the user's URL (``url``: PostgreSQL only, an
    SQLAlchemy URL)."""

    display: str
    dialect: str
    path: Path | None = None  # SQLite only
    url: Any = None


# sqlite://[host]/[database][?query], as SQLAlchemy reads it
_SQLITE_URL = re.compile(r"(?P<host>[^/?]*)(?:/(?P<database>[^?]*))?(?:\?.*)?", re.S)


def _resolve(url: str, root: Path | None) -> _Target:
    """Turn the ``[state] url`` setting into a target on a supported backend."""
    text = url.strip()
    display = mask_url(text)
    if not text:
        raise StateStoreError("the state store URL is empty", hint=_OPEN_HINT_SQLITE)
    if "://" not in text:
        return _sqlite_target(Path(text), root)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("sqlite", "sqlite+pysqlite"):
        match = _SQLITE_URL.fullmatch(rest)
        database = unquote(match["database"]) if match and match["database"] else None
        return _sqlite_target(Path(database or ":memory:"), root)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        import sqlalchemy as sa

        try:
            parsed = sa.make_url(f"postgresql+psycopg://{rest}")
        except sa.exc.ArgumentError as exc:
            raise _bad_url(display, exc) from exc
        return _Target(display=display, dialect="postgresql", url=parsed)
    raise StateStoreError(
        f"unsupported state store URL {display}: scheme {scheme!r}",
        hint="use a file path, sqlite:///path/state.db or postgresql://user@host/db in "
        "[state] url in headrace.toml",
    )


def _bad_url(display: str, exc: BaseException) -> StateStoreError:
    return StateStoreError(
        f"invalid state store URL {display}: {_short_reason(exc)}",
        hint="check [state] url in headrace.toml",
    )


def _sqlite_target(path: Path, root: Path | None) -> _Target:
    """Resolve a SQLite path against ``root``; in-memory databases cannot be shared, so refuse."""
    if str(path) in ("", ":memory:"):
        raise StateStoreError(
            "an in-memory SQLite state store is not supported: runs must outlive the process",
            hint="set [state] url in headrace.toml to a file path such as .headrace/state.db",
        )
    path = path.expanduser()
    if not path.is_absolute():
        path = (root if root is not None else Path.cwd()) / path
    path = path.resolve()
    return _Target(display=str(path), dialect="sqlite", path=path)


def _open_error(target: _Target, exc: BaseException) -> StateStoreError:
    if target.dialect == "sqlite":
        return StateStoreError(
            f"cannot open the state store {target.display}: {_short_reason(exc)}",
            hint=_OPEN_HINT_SQLITE,
        )
    return StateStoreError(
        f"cannot reach the state store {target.display}: {_short_reason(exc)}",
        hint=_OPEN_HINT_PG,
    )


def _sqlite_prepare(target: _Target) -> None:
    """Create the SQLite file's directory, with a clear error when that is impossible."""
    assert target.path is not None
    try:
        target.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, FileExistsError) else _short_reason(exc)
        raise StateStoreError(
            f"cannot open the state store {target.display}: cannot create directory "
            f"{target.path.parent}: {why}",
            hint=_OPEN_HINT_SQLITE,
        ) from exc


def _sqlite_on_connect(dbapi_connection: Any, _record: Any = None) -> None:
    """Take transaction control away from sqlite3 and set WAL + busy timeout per connection."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
        # switching a fresh file to WAL needs an exclusive lock and SQLite does not always run
        # the busy handler for it: when another process is creating the same file, wait here
        deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                cursor.execute("PRAGMA journal_mode = WAL")
                break
            except Exception as exc:  # sqlite3.OperationalError: database is locked
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


def _sqlite_engine(target: _Target) -> Engine:
    """An SQLAlchemy engine on the SQLite file, configured like the store's own connections
    (for tools and tests that want SQLAlchemy; the store itself uses ``_SqlitePool``)."""
    import sqlalchemy as sa

    def on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("headrace_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    assert target.path is not None
    engine = sa.create_engine(
        sa.URL.create("sqlite", database=str(target.path)),
        connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", on_begin)
    return engine


def _postgres_engine(target: _Target, *, pooled: bool = True) -> Engine:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    connect_args = {"connect_timeout": _PG_CONNECT_TIMEOUT_S, "application_name": "headrace"}
    try:
        if pooled:
            return sa.create_engine(target.url, connect_args=connect_args, pool_pre_ping=True)
        return sa.create_engine(target.url, connect_args=connect_args, poolclass=NullPool)
    except ModuleNotFoundError as exc:
        raise StateStoreError(
            f"cannot reach the state store {target.display}: the PostgreSQL driver psycopg "
            "is not installed",
            hint="pip install 'headrace[postgres]'",
        ) from exc


# --------------------------------------------------------------------------- sessions


class _Session(Protocol):
    """One connection inside one transaction, running SQL text with ``:name`` parameters."""

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Execute; return the affected row count."""
        ...

    def run_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def value(self, sql: str, params: Mapping[str, Any] | None = None) -> Any: ...


class _SqliteSession:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        return self.conn.execute(sql, params or {}).rowcount

    def run_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        self.conn.executemany(sql, rows)

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        cursor = self.conn.execute(sql, params or {})
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def value(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        row = self.conn.execute(sql, params or {}).fetchone()
        return None if row is None else row[0]


class _SqlAlchemySession:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        import sqlalchemy as sa

        return int(self.conn.execute(sa.text(sql), dict(params or {})).rowcount)

    def run_many(self, sql: str, rows: Sequence[Mapping[str, Any]]) -> None:
        import sqlalchemy as sa

        self.conn.execute(sa.text(sql), [dict(r) for r in rows])

    def rows(self, sql: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        return [dict(r._mapping) for r in self.conn.execute(sa.text(sql), dict(params or {})).all()]

    def value(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        import sqlalchemy as sa

        return self.conn.execute(sa.text(sql), dict(params or {})).scalar()


class _SqlitePool:
    """Connections to one SQLite file, each used by one thread at a time (one transaction),
    then kept for the next; ``dispose`` closes the idle ones (as SQLAlchemy's pool does)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._idle: list[sqlite3.Connection] = []
        self._mutex = threading.Lock()
        self._generation = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self._path),
            timeout=_SQLITE_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            _sqlite_on_connect(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def transaction(self, *, write: bool) -> Iterator[_SqliteSession]:
        """``BEGIN IMMEDIATE`` (writers take the write lock up front, so a concurrent writer
        makes them wait instead of failing) or ``BEGIN``; committed on success, rolled back
        on an exception. A connection whose BEGIN, COMMIT or ROLLBACK failed is closed."""
        with self._mutex:
            conn = self._idle.pop() if self._idle else None
            generation = self._generation
        if conn is None:
            conn = self._connect()
        reusable = False
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteSession(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                reusable = True
                raise
            conn.execute("COMMIT")
            reusable = True
        finally:
            with self._mutex:
                keep = reusable and generation == self._generation
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def dispose(self) -> None:
        with self._mutex:
            idle, self._idle = self._idle, []
            self._generation += 1
        for conn in idle:
            conn.close()


def _holder(row: Mapping[str, Any] | None) -> _Holder | None:
    if row is None:
        return None
    acquired_at = _instant(row["acquired_at"])
    assert acquired_at is not None
    return _Holder(owner=row["owner"], host=row["host"], pid=int(row["pid"]), acquired_at=acquired_at)


def _run_record(m: Mapping[str, Any]) -> RunRecord:
    started_at = _instant(m["started_at"])
    assert started_at is not None
    return RunRecord(
        run_id=m["run_id"],
        project=m["project"],
        profile=m["profile"],
        command=m["command"],
        selection=list(json.loads(m["selection"])),
        status=m["status"],
        started_at=started_at,
        ended_at=_instant(m["ended_at"]),
        parent_run_id=m["parent_run_id"],
        host=m["host"],
        pid=int(m["pid"]),
        tables_total=int(m["tables_total"]),
    )


def _task_record(m: Mapping[str, Any]) -> TaskRecord:
    return TaskRecord(
        run_id=m["run_id"],
        table=m["table_name"],
        status=m["status"],
        attempts=int(m["attempts"]),
        started_at=_instant(m["started_at"]),
        ended_at=_instant(m["ended_at"]),
        rows_in=m["rows_in"],
        rows_out=m["rows_out"],
        delta_version=m["delta_version"],
        operation=m["operation"],
        message=m["message"],
        error=m["error"],
        error_kind=m["error_kind"],
        rows_quarantined=m["rows_quarantined"],
        rows_dropped=m["rows_dropped"],
    )


def _check_record(m: Mapping[str, Any]) -> CheckRecord:
    created_at = _instant(m["created_at"])
    assert created_at is not None
    return CheckRecord(
        run_id=m["run_id"],
        table=m["table_name"],
        name=m["check_name"],
        kind=m["kind"],
        severity=m["severity"],
        passed=bool(m["passed"]),
        failing=int(m["failing"]),
        total=int(m["total"]),
        ratio=m["ratio"],
        metric=m["metric"],
        message=m["message"],
        sample=json.loads(m["sample"] or "[]"),
        created_at=created_at,
    )


def _attempt_record(m: Mapping[str, Any]) -> AttemptRecord:
    started_at = _instant(m["started_at"])
    assert started_at is not None
    return AttemptRecord(
        run_id=m["run_id"],
        table=m["table_name"],
        attempt=int(m["attempt"]),
        status=m["status"],
        started_at=started_at,
        ended_at=_instant(m["ended_at"]),
        error=m["error"],
        error_kind=m["error_kind"],
    )


@dataclass(frozen=True)
class _Holder:
    """Who holds a lock, for the error message of whoever waits for it."""

    owner: str
    host: str
    pid: int
    acquired_at: datetime

    def describe(self) -> str:
        since = self.acquired_at.strftime("%Y-%m-%d %H:%M:%S")
        return f"{self.owner} (host {self.host}, pid {self.pid}, since {since} UTC)"


@dataclass(frozen=True)
class _Claim:
    """This process's claim on a lock; ``token`` tells our row from a successor's."""

    name: str
    owner: str
    host: str
    pid: int
    token: str


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"


_RUN_COLUMNS: Final = (
    "run_id", "project", "profile", "command", "selection", "status", "started_at", "ended_at",
    "parent_run_id", "host", "pid", "tables_total",
)
_CHECK_COLUMNS: Final = (
    "run_id", "table_name", "check_name", "kind", "severity", "passed", "failing", "total",
    "ratio", "metric", "message", "sample", "created_at",
)
_LOCK_COLUMNS: Final = ("name", "owner", "host", "pid", "token", "acquired_at", "expires_at")


# --------------------------------------------------------------------------- the store


class StateStore:
    """Run, task, attempt and lock bookkeeping; thread-safe, shareable between processes.

    Open with :meth:`open`; do not share one instance across ``fork()`` (open it in the child).
    """

    def __init__(self, target: _Target, *, engine: Engine | None = None) -> None:
        self._target = target
        self._pool = _SqlitePool(target.path) if target.dialect == "sqlite" and target.path else None
        self._sa_engine = engine
        self._sa_engine_mutex = threading.Lock()
        self._write_mutex = threading.Lock()
        self._lock_engine: Engine | None = None
        self._lock_engine_mutex = threading.Lock()
        self.url_for_display: str = target.display
        self.dialect: str = target.dialect

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, url: str, *, root: Path | None = None) -> StateStore:
        """Connect, create missing tables and return the store; fails fast with a clear error."""
        target = _resolve(url, root)
        if target.dialect == "sqlite":
            _sqlite_prepare(target)
            store = cls(target)
        else:
            store = cls(target, engine=_postgres_engine(target))
        errors: tuple[type[BaseException], ...] = (*store._driver_errors(), OSError)
        try:
            store._create_schema()
        except errors as exc:
            store.close()
            raise _open_error(target, exc) from exc
        return store

    @property
    def _engine(self) -> Engine:
        """The SQLAlchemy engine: PostgreSQL's own; on SQLite one made on first access (for
        tools and tests; the store's own work goes through its ``sqlite3`` connections)."""
        with self._sa_engine_mutex:
            if self._sa_engine is None:
                self._sa_engine = _sqlite_engine(self._target)
            return self._sa_engine

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        if self._pool is not None:
            return (sqlite3.Error,)
        import sqlalchemy as sa

        return (sa.exc.SQLAlchemyError,)

    def _create_schema(self) -> None:
        """Idempotent even when several processes open a fresh store at the same moment."""
        if self._pool is not None:
            with self._write_mutex, self._pool.transaction(write=True) as session:
                for ddl in _SQLITE_SCHEMA:
                    session.run(ddl)
            return
        with self._engine.connect() as conn:
            conn.execution_options(headrace_write=True)
            with conn.begin():
                _SqlAlchemySession(conn).value(
                    "SELECT pg_advisory_xact_lock(CAST(:key AS BIGINT))",
                    {"key": _advisory_key(_SCHEMA_LOCK_NAME)},
                )
                _schema()["METADATA"].create_all(conn)

    def close(self) -> None:
        """Release every pooled connection; the store must not be used afterwards."""
        if self._pool is not None:
            self._pool.dispose()
        if self._sa_engine is not None:
            self._sa_engine.dispose()
        if self._lock_engine is not None:
            self._lock_engine.dispose()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateStore({self.url_for_display!r})"

    # ----------------------------------------------------------------- plumbing

    def _write_mutex_ctx(self) -> contextlib.AbstractContextManager[Any]:
        """SQLite allows one writer; queueing threads here avoids burning the busy timeout."""
        return self._write_mutex if self.dialect == "sqlite" else contextlib.nullcontext()

    @contextlib.contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn driver errors into a ``StateStoreError`` that says what we were doing.

        A bad argument (e.g. a naive datetime) is the caller's bug, not the store's, so it is
        raised as the original ``ValueError``/``TypeError``.
        """
        if self._pool is not None:
            try:
                yield
            except sqlite3.Error as exc:
                raise self._use_error(action, exc) from exc
            return
        import sqlalchemy as sa

        try:
            yield
        except sa.exc.StatementError as exc:
            if not isinstance(exc, sa.exc.DBAPIError) and isinstance(
                exc.orig, ValueError | TypeError
            ):
                raise exc.orig from None
            raise self._use_error(action, exc) from exc
        except sa.exc.SQLAlchemyError as exc:
            raise self._use_error(action, exc) from exc

    def _use_error(self, action: str, exc: BaseException) -> StateStoreError:
        return StateStoreError(
            f"state store {self.url_for_display}: cannot {action}: {_short_reason(exc)}",
            hint=_USE_HINT,
        )

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[_Session]:
        """A committed-on-success write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        with self._guard(action), self._write_mutex_ctx():
            if self._pool is not None:
                with self._pool.transaction(write=True) as session:
                    yield session
                return
            with self._engine.connect() as conn, conn.begin():
                yield _SqlAlchemySession(conn)

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[_Session]:
        with self._guard(action):
            if self._pool is not None:
                with self._pool.transaction(write=False) as session:
                    yield session
                return
            with self._engine.connect() as conn:
                yield _SqlAlchemySession(conn)

    def _bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters as stored: instants in UTC (see ``_bind_instant``)."""
        return {
            k: _bind_instant(v, self.dialect) if k in _INSTANTS else v for k, v in values.items()
        }

    # ----------------------------------------------------------------- runs

    def start_run(
        self,
        *,
        run_id: str,
        project: str,
        profile: str,
        command: str,
        selection: list[str],
        tables: list[str],
        parent_run_id: str | None = None,
    ) -> None:
        """Record a new run as ``running`` with one ``pending`` task per table (in order)."""
        unique_tables = list(dict.fromkeys(tables))
        run_row = self._bind({
            "run_id": run_id,
            "project": project,
            "profile": profile,
            "command": command,
            "selection": json.dumps(list(selection)),
            "status": "running",
            "started_at": _now(),
            "ended_at": None,
            "parent_run_id": parent_run_id,
            "host": _host(),
            "pid": os.getpid(),
            "tables_total": len(unique_tables),
        })
        task_rows = [
            {"run_id": run_id, "table_name": t, "status": "pending", "attempts": 0}
            for t in unique_tables
        ]
        self.close_abandoned_runs()
        with self._write(f"record run {run_id}") as db:
            db.run(_insert_sql("headrace_runs", _RUN_COLUMNS), run_row)
            if task_rows:
                db.run_many(
                    _insert_sql("headrace_tasks", ("run_id", "table_name", "status", "attempts")),
                    task_rows,
                )

    def close_abandoned_runs(self) -> list[str]:
        """Mark the runs this host left ``running`` whose process is gone (killed, or the
        machine rebooted) as ``abandoned``, their unfinished tables ``skipped`` (``retry``
        takes them) and open attempts ``failed``; returns their ids. Runs of other hosts are
        left: their processes cannot be seen from here."""
        with self._read("list running runs") as db:
            rows = db.rows("SELECT run_id, host, pid, started_at FROM headrace_runs "
                           "WHERE status = 'running' AND host = :host", {"host": _host()})
        gone = [r for r in rows if process_gone(r["host"], int(r["pid"]), since=_instant(r["started_at"]))]
        if not gone:
            return []
        now = self._bind({"ended_at": _now()})["ended_at"]
        with self._write("close abandoned runs") as db:
            for r in gone:
                why = f"its run's process ({r['pid']} on {r['host']}) ended before finishing it (killed?)"
                params = {"run_id": r["run_id"], "now": now, "why": why}
                db.run("UPDATE headrace_runs SET status = 'abandoned', ended_at = :now "
                       "WHERE run_id = :run_id AND status = 'running'", params)
                db.run("UPDATE headrace_tasks SET status = 'skipped', ended_at = :now, message = :why "
                       "WHERE run_id = :run_id AND status IN ('pending', 'running')", params)
                db.run("UPDATE headrace_attempts SET status = 'failed', ended_at = :now, error = :why "
                       "WHERE run_id = :run_id AND status = 'running'", params)
        log.warning("closed %d abandoned run(s): %s", len(gone), ", ".join(r["run_id"] for r in gone))
        return [r["run_id"] for r in gone]

    def finish_run(self, run_id: str, status: str) -> None:
        """Set the final status and ``ended_at`` of a run."""
        params = self._bind({"status": status, "ended_at": _now(), "run_id": run_id})
        with self._write(f"finish run {run_id}") as db:
            updated = db.run(
                "UPDATE headrace_runs SET status = :status, ended_at = :ended_at WHERE run_id = :run_id",
                params,
            )
            if updated == 0:
                raise StateStoreError(
                    f"cannot finish run {run_id!r}: no such run in {self.url_for_display}",
                    hint="start_run() must record a run before it is finished",
                )

    def get_run(self, run_id: str) -> RunRecord:
        """Find a run by id or unique prefix (at least 4 characters), as users type them."""
        with self._read(f"read run {run_id}") as db:
            found = db.rows("SELECT * FROM headrace_runs WHERE run_id = :run_id", {"run_id": run_id})
            if found:
                return _run_record(found[0])
            if len(run_id) < _MIN_PREFIX:
                raise SelectionError(
                    f"no run with id {run_id!r}",
                    hint=f"give the full run id or at least {_MIN_PREFIX} of its first characters",
                )
            rows = db.rows(
                "SELECT * FROM headrace_runs WHERE substr(run_id, 1, :length) = :prefix "
                "ORDER BY started_at DESC, id DESC LIMIT 6",
                {"length": len(run_id), "prefix": run_id},
            )
        if not rows:
            raise SelectionError(
                f"no run id starts with {run_id!r}",
                hint="list recent runs to find the id; ids are case-sensitive",
            )
        if len(rows) > 1:
            shown = ", ".join(r["run_id"] for r in rows[:5])
            more = ", ..." if len(rows) > 5 else ""
            raise SelectionError(
                f"run id prefix {run_id!r} is ambiguous: it matches {shown}{more}",
                hint="type more characters of the run id",
            )
        return _run_record(rows[0])

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        """The ``limit`` most recently started runs, newest first."""
        with self._read("list runs") as db:
            rows = db.rows(
                "SELECT * FROM headrace_runs ORDER BY started_at DESC, id DESC LIMIT :limit",
                {"limit": max(limit, 0)},
            )
        return [_run_record(r) for r in rows]

    # ----------------------------------------------------------------- tasks

    def update_task(self, run_id: str, table: str, **fields: Any) -> None:
        """Set some columns of one task; names are validated so typos fail loudly."""
        unknown = sorted(set(fields) - _TASK_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown task field(s): {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(_TASK_FIELDS))}"
            )
        if not fields:
            return
        params = self._bind(fields)  # column names are checked above: safe to interpolate
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        params.update(where_run_id=run_id, where_table=table)
        with self._write(f"update task {table} of run {run_id}") as db:
            updated = db.run(
                f"UPDATE headrace_tasks SET {assignments} "
                "WHERE run_id = :where_run_id AND table_name = :where_table",
                params,
            )
            if updated == 0:
                raise StateStoreError(
                    f"cannot update task {table!r}: run {run_id!r} has no such task",
                    hint="start_run() registers one task per table of the run",
                )

    # ----------------------------------------------------------------- checks

    def record_checks(self, run_id: str, table: str, results: list[dict[str, Any]]) -> None:
        """Store one run's check results for a table; keys as in :class:`CheckRecord`."""
        if not results:
            return
        now = _now()
        rows = [
            self._bind({
                "run_id": run_id,
                "table_name": table,
                "check_name": r["name"],
                "kind": r["kind"],
                "severity": r["severity"],
                "passed": bool(r["passed"]),
                "failing": int(r["failing"]),
                "total": int(r["total"]),
                "ratio": r.get("ratio"),
                "metric": r.get("metric"),
                "message": r.get("message") or "",
                "sample": json.dumps(r.get("sample") or [], default=str),
                "created_at": now,
            })
            for r in results
        ]
        with self._write(f"record checks of {table} in run {run_id}") as db:
            db.run_many(_insert_sql("headrace_check_results", _CHECK_COLUMNS), rows)

    def check_results(
        self, *, table: str | None = None, run_id: str | None = None, limit: int = 200
    ) -> list[CheckRecord]:
        """Check results, newest first; filtered by table and/or run."""
        where: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        if table is not None:
            where.append("table_name = :table")
            params["table"] = table
        if run_id is not None:
            where.append("run_id = :run_id")
            params["run_id"] = run_id
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        with self._read("read check results") as db:
            rows = db.rows(
                f"SELECT * FROM headrace_check_results{condition} ORDER BY id DESC LIMIT :limit",
                params,
            )
        return [_check_record(r) for r in rows]

    def check_history(self, table: str, check_name: str, limit: int = 100) -> list[float]:
        """Earlier metric values of one check (oldest first), for volume anomaly detection.

        Only runs that published count: a run stopped by the breaker did not change the table.
        """
        with self._read(f"read history of {check_name} on {table}") as db:
            rows = db.rows(
                "SELECT metric FROM headrace_check_results "
                "WHERE table_name = :table AND check_name = :check AND metric IS NOT NULL "
                "AND run_id IN (SELECT run_id FROM headrace_tasks "
                "WHERE table_name = :table AND status = 'success') "
                "ORDER BY id DESC LIMIT :limit",
                {"table": table, "check": check_name, "limit": limit},
            )
        return [float(r["metric"]) for r in reversed(rows)]

    def tasks(self, run_id: str) -> list[TaskRecord]:
        """The tasks of a run in the order ``start_run`` listed their tables."""
        with self._read(f"read tasks of run {run_id}") as db:
            rows = db.rows(
                "SELECT * FROM headrace_tasks WHERE run_id = :run_id ORDER BY id", {"run_id": run_id}
            )
        return [_task_record(r) for r in rows]

    def start_attempt(self, run_id: str, table: str, attempt: int) -> None:
        """Record that try number ``attempt`` (1-based by convention) of a task began now."""
        row = self._bind({
            "run_id": run_id,
            "table_name": table,
            "attempt": attempt,
            "status": "running",
            "started_at": _now(),
        })
        with self._write(f"record attempt {attempt} of {table}") as db:
            db.run(_insert_sql("headrace_attempts", tuple(row)), row)

    def finish_attempt(
        self,
        run_id: str,
        table: str,
        attempt: int,
        *,
        status: str,
        error: str | None = None,
        error_kind: str | None = None,
    ) -> None:
        """Close an attempt with its outcome and ``ended_at`` = now."""
        params = self._bind({
            "status": status,
            "ended_at": _now(),
            "error": error,
            "error_kind": error_kind,
            "run_id": run_id,
            "table_name": table,
            "attempt": attempt,
        })
        with self._write(f"finish attempt {attempt} of {table}") as db:
            updated = db.run(
                "UPDATE headrace_attempts SET status = :status, ended_at = :ended_at, "
                "error = :error, error_kind = :error_kind "
                "WHERE run_id = :run_id AND table_name = :table_name AND attempt = :attempt",
                params,
            )
            if updated == 0:
                raise StateStoreError(
                    f"cannot finish attempt {attempt} of {table!r} in run {run_id!r}: "
                    "it was never started",
                    hint="call start_attempt() first",
                )

    def attempts(self, run_id: str, table: str) -> list[AttemptRecord]:
        """All tries of one task, first to last."""
        with self._read(f"read attempts of {table}") as db:
            rows = db.rows(
                "SELECT * FROM headrace_attempts WHERE run_id = :run_id AND table_name = :table "
                "ORDER BY attempt",
                {"run_id": run_id, "table": table},
            )
        return [_attempt_record(r) for r in rows]

    def table_history(self, table: str, limit: int = 20) -> list[TaskRecord]:
        """The task rows of ``table`` across runs, newest run first."""
        with self._read(f"read history of {table}") as db:
            rows = db.rows(
                "SELECT t.* FROM headrace_tasks AS t JOIN headrace_runs AS r ON r.run_id = t.run_id "
                "WHERE t.table_name = :table ORDER BY r.started_at DESC, t.id DESC LIMIT :limit",
                {"table": table, "limit": max(limit, 0)},
            )
        return [_task_record(r) for r in rows]

    def writes_by_version(self, table: str) -> dict[int, str]:
        """Which run committed each Delta version of ``table`` (for ``history``/``blame``)."""
        with self._read(f"read versions of {table}") as db:
            rows = db.rows(
                "SELECT delta_version, run_id FROM headrace_tasks "
                "WHERE table_name = :table AND delta_version IS NOT NULL ORDER BY id",
                {"table": table},
            )
        return {int(r["delta_version"]): r["run_id"] for r in rows}

    # ----------------------------------------------------------------- locks

    def lock(
        self, name: str, *, owner: str, timeout: float, poll: float = 0.2
    ) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive lock ``name`` for a ``with`` block, across processes and hosts.

        Waits up to ``timeout`` seconds, then raises ``TransientError`` naming the holder.
        Not re-entrant: a second ``lock(name)`` in the same process waits like any other.
        """
        if timeout < 0 or poll <= 0:
            raise ValueError("lock timeout must be >= 0 and poll > 0")
        claim = _Claim(
            name=name, owner=owner, host=_host(), pid=os.getpid(), token=uuid.uuid4().hex
        )
        if self.dialect == "postgresql":
            return self._pg_lock(claim, timeout, poll)
        return self._sqlite_lock(claim, timeout, poll)

    def _wait_for(
        self,
        claim: _Claim,
        try_acquire: Callable[[], tuple[bool, _Holder | None]],
        timeout: float,
        poll: float,
    ) -> None:
        """Poll ``try_acquire`` until it succeeds or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            acquired, holder = try_acquire()
            if acquired:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._lock_timeout(claim, holder, timeout)
            time.sleep(min(poll, remaining))

    def _lock_timeout(
        self, claim: _Claim, holder: _Holder | None, timeout: float
    ) -> TransientError:
        who = holder.describe() if holder is not None else "another process"
        return TransientError(
            f"lock {claim.name!r} is held by {who}; gave up after {timeout:g} s",
            hint="another headrace process is working on this; retry when it has finished "
            "(a crashed holder's lock is freed automatically: on SQLite when its "
            f"{LOCK_LEASE_SECONDS:g} s lease expires or its pid is gone, on PostgreSQL when "
            "its connection closes)",
        )

    # SQLite: a lease row -------------------------------------------------------

    @contextlib.contextmanager
    def _sqlite_lock(self, claim: _Claim, timeout: float, poll: float) -> Iterator[None]:
        self._wait_for(claim, lambda: self._sqlite_try_acquire(claim), timeout, poll)
        stop = threading.Event()
        beat = threading.Thread(
            target=self._sqlite_heartbeat,
            args=(claim, stop),
            name=f"headrace-lock-{claim.name}",
            daemon=True,
        )
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self._sqlite_release(claim)

    def _sqlite_try_acquire(self, claim: _Claim) -> tuple[bool, _Holder | None]:
        """Insert our row; if one exists and is stale, replace it (compare-and-swap on token)."""
        now = _now()
        values = self._bind({
            "name": claim.name,
            "owner": claim.owner,
            "host": claim.host,
            "pid": claim.pid,
            "token": claim.token,
            "acquired_at": now,
            "expires_at": now + timedelta(seconds=LOCK_LEASE_SECONDS),
        })
        with self._write(f"acquire lock {claim.name}") as db:
            if db.run(_insert_sql("headrace_locks", _LOCK_COLUMNS) + " ON CONFLICT DO NOTHING", values) == 1:
                return True, None
            found = db.rows("SELECT * FROM headrace_locks WHERE name = :name", {"name": claim.name})
            row = found[0] if found else None
            holder = _holder(row)
            if row is None or not self._is_stale(row, now):
                return False, holder
            taken = db.run(
                "UPDATE headrace_locks SET owner = :owner, host = :host, pid = :pid, "
                "token = :token, acquired_at = :acquired_at, expires_at = :expires_at "
                "WHERE name = :name AND token = :old_token",
                {**values, "old_token": row["token"]},
            )
        if taken == 1 and holder is not None:
            log.warning("took over stale lock %r from %s", claim.name, holder.describe())
        return taken == 1, holder

    @staticmethod
    def _is_stale(row: Mapping[str, Any], now: datetime) -> bool:
        """Expired lease, or a holder on this host whose process is gone."""
        expires_at = _instant(row["expires_at"])
        if expires_at is not None and expires_at <= now:
            return True
        return process_gone(row["host"], int(row["pid"]))

    def _sqlite_heartbeat(self, claim: _Claim, stop: threading.Event) -> None:
        """Extend our lease until released; stops if someone else has taken the row over."""
        while not stop.wait(LOCK_HEARTBEAT_SECONDS):
            try:
                with self._write(f"renew lock {claim.name}") as db:
                    renewed = db.run(
                        "UPDATE headrace_locks SET expires_at = :expires_at "
                        "WHERE name = :name AND token = :token",
                        self._bind({
                            "expires_at": _now() + timedelta(seconds=LOCK_LEASE_SECONDS),
                            "name": claim.name,
                            "token": claim.token,
                        }),
                    )
            except StateStoreError as exc:
                log.warning("could not renew lock %r: %s", claim.name, exc)
                continue
            if renewed == 0:
                log.error("lock %r was taken over by another process while held", claim.name)
                return

    def _sqlite_release(self, claim: _Claim) -> None:
        """Delete our row only; a failure is logged, not raised, so it never masks the block's
        own outcome (the lease then frees the lock)."""
        try:
            with self._write(f"release lock {claim.name}") as db:
                db.run(
                    "DELETE FROM headrace_locks WHERE name = :name AND token = :token",
                    {"name": claim.name, "token": claim.token},
                )
        except StateStoreError as exc:
            log.warning(
                "could not release lock %r (it expires with its lease): %s", claim.name, exc
            )

    # PostgreSQL: a session advisory lock ----------------------------------------

    def _get_lock_engine(self) -> Engine:
        """Unpooled connections, so each lock owns a real session and never starves the pool."""
        with self._lock_engine_mutex:
            if self._lock_engine is None:
                self._lock_engine = _postgres_engine(self._target, pooled=False)
            return self._lock_engine

    @contextlib.contextmanager
    def _pg_lock(self, claim: _Claim, timeout: float, poll: float) -> Iterator[None]:
        key = _advisory_key(claim.name)
        with self._guard(f"connect for lock {claim.name}"):
            conn = self._get_lock_engine().connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            self._wait_for(claim, lambda: self._pg_try_acquire(conn, claim, key), timeout, poll)
        except BaseException:
            conn.close()
            raise
        try:
            yield
        finally:
            self._pg_release(conn, claim, key)

    def _pg_try_acquire(
        self, conn: Connection, claim: _Claim, key: int
    ) -> tuple[bool, _Holder | None]:
        db = _SqlAlchemySession(conn)
        with self._guard(f"acquire lock {claim.name}"):
            got = db.value("SELECT pg_try_advisory_lock(CAST(:key AS BIGINT))", {"key": key})
            if not got:
                found = db.rows("SELECT * FROM headrace_locks WHERE name = :name", {"name": claim.name})
                return False, _holder(found[0] if found else None)
            values = self._bind({
                "name": claim.name,
                "owner": claim.owner,
                "host": claim.host,
                "pid": claim.pid,
                "token": claim.token,
                "acquired_at": _now(),
                "expires_at": None,
            })
            db.run(
                _insert_sql("headrace_locks", _LOCK_COLUMNS)
                + " ON CONFLICT (name) DO UPDATE SET owner = :owner, host = :host, pid = :pid, "
                "token = :token, acquired_at = :acquired_at, expires_at = :expires_at",
                values,
            )
            return True, None

    def _pg_release(self, conn: Connection, claim: _Claim, key: int) -> None:
        """Unlock and close; closing alone would free the lock, so failures are only logged."""
        import sqlalchemy as sa

        db = _SqlAlchemySession(conn)
        try:
            db.run(
                "DELETE FROM headrace_locks WHERE name = :name AND token = :token",
                {"name": claim.name, "token": claim.token},
            )
            db.value("SELECT pg_advisory_unlock(CAST(:key AS BIGINT))", {"key": key})
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not cleanly release lock %r: %s", claim.name, _short_reason(exc))
        finally:
            conn.close()
