"""The run-state store: what ran, when, how it ended, and who holds which lock.

The runner records every run, every table task and every attempt here so that ``headrace``
can show history, resume or retry a failed run, and map Delta versions back to the run
that wrote them. The store is SQLAlchemy Core over SQLite (the default, one file next to
the project) or PostgreSQL (shared by several machines).

Concurrency model, because both backends are used from several threads of one runner *and*
from several processes at once (two ``headrace run`` in parallel):

* SQLite: WAL journal, a 30 s busy timeout, writes serialized inside the process by a
  ``threading.Lock`` and across processes by ``BEGIN IMMEDIATE`` (which waits on the busy
  timeout instead of failing on a read-to-write upgrade).
* PostgreSQL: ordinary transactions; schema creation is serialized by an advisory lock.

Named locks (:meth:`StateStore.lock`) are a lease row on SQLite (renewed by a heartbeat,
stolen when expired or when its holder's pid is dead on this host) and a session advisory
lock on PostgreSQL (released by the server when the holder's connection dies).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.pool import NullPool

from headrace.errors import SelectionError, StateStoreError, TransientError

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


# --------------------------------------------------------------------------- schema


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores instants in UTC and always hands back timezone-aware UTC datetimes.

    SQLite has no time zones and psycopg returns the session's zone; normalizing here keeps
    every record comparable and makes string ordering in SQLite chronological.
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


METADATA: Final = sa.MetaData()

# Tables are prefixed so a PostgreSQL state store can live in a database shared with others.
RUNS: Final = sa.Table(
    "headrace_runs",
    METADATA,
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

TASKS: Final = sa.Table(
    "headrace_tasks",
    METADATA,
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

ATTEMPTS: Final = sa.Table(
    "headrace_attempts",
    METADATA,
    sa.Column("run_id", sa.String(255), primary_key=True),
    sa.Column("table_name", sa.String(512), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime()),
    sa.Column("error", sa.Text),
    sa.Column("error_kind", sa.Text),
)

CHECKS: Final = sa.Table(
    "headrace_check_results",
    METADATA,
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

LOCKS: Final = sa.Table(
    "headrace_locks",
    METADATA,
    sa.Column("name", sa.String(512), primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.BigInteger, nullable=False),
    sa.Column("token", sa.String(64), nullable=False),  # identifies one acquisition
    sa.Column("acquired_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime()),  # SQLite lease; NULL on PostgreSQL
)


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
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        text = str(exc.orig)
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


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``, namespaced to headrace."""
    digest = hashlib.blake2b(f"headrace:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class _Target:
    """Where the store lives, resolved from the user's URL."""

    url: sa.URL
    display: str
    dialect: str
    path: Path | None = None  # SQLite only


def _resolve(url: str, root: Path | None) -> _Target:
    """Turn the ``[state] url`` setting into an SQLAlchemy URL for a supported backend."""
    text = url.strip()
    display = mask_url(text)
    if not text:
        raise StateStoreError("the state store URL is empty", hint=_OPEN_HINT_SQLITE)
    if "://" not in text:
        return _sqlite_target(Path(text), root)
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("sqlite", "sqlite+pysqlite"):
        try:
            database = sa.make_url(text).database
        except sa.exc.ArgumentError as exc:
            raise _bad_url(display, exc) from exc
        return _sqlite_target(Path(database or ":memory:"), root)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        try:
            parsed = sa.make_url(f"postgresql+psycopg://{rest}")
        except sa.exc.ArgumentError as exc:
            raise _bad_url(display, exc) from exc
        return _Target(url=parsed, display=display, dialect="postgresql")
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
    url = sa.URL.create("sqlite", database=str(path))
    return _Target(url=url, display=str(path), dialect="sqlite", path=path)


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


def _sqlite_engine(target: _Target) -> Engine:
    """An engine safe for many threads and processes on one file (see module docstring)."""
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
    engine = sa.create_engine(
        target.url,
        connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000},
    )
    sa.event.listen(engine, "connect", _sqlite_on_connect)
    sa.event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
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


def _sqlite_on_begin(conn: Connection) -> None:
    """Writers take the write lock up front so a concurrent writer makes them wait, not fail."""
    immediate = conn.get_execution_options().get("headrace_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _postgres_engine(target: _Target, *, pooled: bool = True) -> Engine:
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


def _holder(row: sa.Row[Any] | None) -> _Holder | None:
    if row is None:
        return None
    m = row._mapping
    return _Holder(
        owner=m["owner"], host=m["host"], pid=int(m["pid"]), acquired_at=m["acquired_at"]
    )


def _run_record(row: sa.Row[Any]) -> RunRecord:
    m = row._mapping
    return RunRecord(
        run_id=m["run_id"],
        project=m["project"],
        profile=m["profile"],
        command=m["command"],
        selection=list(json.loads(m["selection"])),
        status=m["status"],
        started_at=m["started_at"],
        ended_at=m["ended_at"],
        parent_run_id=m["parent_run_id"],
        host=m["host"],
        pid=int(m["pid"]),
        tables_total=int(m["tables_total"]),
    )


def _task_record(row: sa.Row[Any]) -> TaskRecord:
    m = row._mapping
    return TaskRecord(
        run_id=m["run_id"],
        table=m["table_name"],
        status=m["status"],
        attempts=int(m["attempts"]),
        started_at=m["started_at"],
        ended_at=m["ended_at"],
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


def _check_record(row: sa.Row[Any]) -> CheckRecord:
    m = row._mapping
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
        created_at=m["created_at"],
    )


def _attempt_record(row: sa.Row[Any]) -> AttemptRecord:
    m = row._mapping
    return AttemptRecord(
        run_id=m["run_id"],
        table=m["table_name"],
        attempt=int(m["attempt"]),
        status=m["status"],
        started_at=m["started_at"],
        ended_at=m["ended_at"],
        error=m["error"],
        error_kind=m["error_kind"],
    )


# --------------------------------------------------------------------------- the store


class StateStore:
    """Run, task, attempt and lock bookkeeping; thread-safe, shareable between processes.

    Open with :meth:`open`; do not share one instance across ``fork()`` (open it in the child).
    """

    def __init__(self, engine: Engine, target: _Target) -> None:
        self._engine = engine
        self._target = target
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
        engine = _sqlite_engine(target) if target.dialect == "sqlite" else _postgres_engine(target)
        store = cls(engine, target)
        try:
            store._create_schema()
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            engine.dispose()
            raise _open_error(target, exc) from exc
        return store

    def _create_schema(self) -> None:
        """Idempotent even when several processes open a fresh store at the same moment."""
        with self._write_mutex_ctx(), self._engine.connect() as conn:
            conn.execution_options(headrace_write=True)
            with conn.begin():
                if self.dialect == "postgresql":
                    key = sa.cast(_advisory_key(_SCHEMA_LOCK_NAME), sa.BigInteger)
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
                METADATA.create_all(conn)

    def close(self) -> None:
        """Release every pooled connection; the store must not be used afterwards."""
        self._engine.dispose()
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
        re-raised as the original ``ValueError``/``TypeError``.
        """
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
    def _write(self, action: str) -> Iterator[Connection]:
        """A committed-on-success write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        with self._guard(action), self._write_mutex_ctx(), self._engine.connect() as conn:
            conn.execution_options(headrace_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self, action: str) -> Iterator[Connection]:
        with self._guard(action), self._engine.connect() as conn:
            yield conn

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
        run_row = {
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
        }
        task_rows = [
            {"run_id": run_id, "table_name": t, "status": "pending", "attempts": 0}
            for t in unique_tables
        ]
        with self._write(f"record run {run_id}") as conn:
            conn.execute(RUNS.insert().values(run_row))
            if task_rows:
                conn.execute(TASKS.insert(), task_rows)

    def finish_run(self, run_id: str, status: str) -> None:
        """Set the final status and ``ended_at`` of a run."""
        with self._write(f"finish run {run_id}") as conn:
            result = conn.execute(
                RUNS.update().where(RUNS.c.run_id == run_id).values(status=status, ended_at=_now())
            )
            if result.rowcount == 0:
                raise StateStoreError(
                    f"cannot finish run {run_id!r}: no such run in {self.url_for_display}",
                    hint="start_run() must record a run before it is finished",
                )

    def get_run(self, run_id: str) -> RunRecord:
        """Find a run by id or unique prefix (at least 4 characters), as users type them."""
        with self._read(f"read run {run_id}") as conn:
            row = conn.execute(sa.select(RUNS).where(RUNS.c.run_id == run_id)).first()
            if row is not None:
                return _run_record(row)
            if len(run_id) < _MIN_PREFIX:
                raise SelectionError(
                    f"no run with id {run_id!r}",
                    hint=f"give the full run id or at least {_MIN_PREFIX} of its first characters",
                )
            prefix = sa.func.substr(RUNS.c.run_id, 1, len(run_id))
            rows = conn.execute(
                sa.select(RUNS)
                .where(prefix == run_id)
                .order_by(RUNS.c.started_at.desc(), RUNS.c.id.desc())
                .limit(6)
            ).all()
        if not rows:
            raise SelectionError(
                f"no run id starts with {run_id!r}",
                hint="list recent runs to find the id; ids are case-sensitive",
            )
        if len(rows) > 1:
            shown = ", ".join(r._mapping["run_id"] for r in rows[:5])
            more = ", ..." if len(rows) > 5 else ""
            raise SelectionError(
                f"run id prefix {run_id!r} is ambiguous: it matches {shown}{more}",
                hint="type more characters of the run id",
            )
        return _run_record(rows[0])

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        """The ``limit`` most recently started runs, newest first."""
        with self._read("list runs") as conn:
            rows = conn.execute(
                sa.select(RUNS)
                .order_by(RUNS.c.started_at.desc(), RUNS.c.id.desc())
                .limit(max(limit, 0))
            ).all()
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
        with self._write(f"update task {table} of run {run_id}") as conn:
            result = conn.execute(
                TASKS.update()
                .where(TASKS.c.run_id == run_id, TASKS.c.table_name == table)
                .values(**fields)
            )
            if result.rowcount == 0:
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
            {
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
            }
            for r in results
        ]
        with self._write(f"record checks of {table} in run {run_id}") as conn:
            conn.execute(CHECKS.insert(), rows)

    def check_results(
        self, *, table: str | None = None, run_id: str | None = None, limit: int = 200
    ) -> list[CheckRecord]:
        """Check results, newest first; filtered by table and/or run."""
        query = sa.select(CHECKS).order_by(CHECKS.c.id.desc()).limit(limit)
        if table is not None:
            query = query.where(CHECKS.c.table_name == table)
        if run_id is not None:
            query = query.where(CHECKS.c.run_id == run_id)
        with self._read("read check results") as conn:
            rows = conn.execute(query).all()
        return [_check_record(r) for r in rows]

    def check_history(self, table: str, check_name: str, limit: int = 100) -> list[float]:
        """Earlier metric values of one check (oldest first), for volume anomaly detection.

        Only runs that published count: a run stopped by the breaker did not change the table.
        """
        published = sa.select(TASKS.c.run_id).where(
            TASKS.c.table_name == table, TASKS.c.status == "success"
        )
        query = (
            sa.select(CHECKS.c.metric)
            .where(
                CHECKS.c.table_name == table,
                CHECKS.c.check_name == check_name,
                CHECKS.c.metric.is_not(None),
                CHECKS.c.run_id.in_(published),
            )
            .order_by(CHECKS.c.id.desc())
            .limit(limit)
        )
        with self._read(f"read history of {check_name} on {table}") as conn:
            values = [float(r[0]) for r in conn.execute(query).all()]
        return list(reversed(values))

    def tasks(self, run_id: str) -> list[TaskRecord]:
        """The tasks of a run in the order ``start_run`` listed their tables."""
        with self._read(f"read tasks of run {run_id}") as conn:
            rows = conn.execute(
                sa.select(TASKS).where(TASKS.c.run_id == run_id).order_by(TASKS.c.id)
            ).all()
        return [_task_record(r) for r in rows]

    def start_attempt(self, run_id: str, table: str, attempt: int) -> None:
        """Record that try number ``attempt`` (1-based by convention) of a task began now."""
        with self._write(f"record attempt {attempt} of {table}") as conn:
            conn.execute(
                ATTEMPTS.insert().values(
                    run_id=run_id,
                    table_name=table,
                    attempt=attempt,
                    status="running",
                    started_at=_now(),
                )
            )

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
        with self._write(f"finish attempt {attempt} of {table}") as conn:
            result = conn.execute(
                ATTEMPTS.update()
                .where(
                    ATTEMPTS.c.run_id == run_id,
                    ATTEMPTS.c.table_name == table,
                    ATTEMPTS.c.attempt == attempt,
                )
                .values(status=status, ended_at=_now(), error=error, error_kind=error_kind)
            )
            if result.rowcount == 0:
                raise StateStoreError(
                    f"cannot finish attempt {attempt} of {table!r} in run {run_id!r}: "
                    "it was never started",
                    hint="call start_attempt() first",
                )

    def attempts(self, run_id: str, table: str) -> list[AttemptRecord]:
        """All tries of one task, first to last."""
        with self._read(f"read attempts of {table}") as conn:
            rows = conn.execute(
                sa.select(ATTEMPTS)
                .where(ATTEMPTS.c.run_id == run_id, ATTEMPTS.c.table_name == table)
                .order_by(ATTEMPTS.c.attempt)
            ).all()
        return [_attempt_record(r) for r in rows]

    def table_history(self, table: str, limit: int = 20) -> list[TaskRecord]:
        """The task rows of ``table`` across runs, newest run first."""
        query = (
            sa.select(TASKS)
            .join(RUNS, RUNS.c.run_id == TASKS.c.run_id)
            .where(TASKS.c.table_name == table)
            .order_by(RUNS.c.started_at.desc(), TASKS.c.id.desc())
            .limit(max(limit, 0))
        )
        with self._read(f"read history of {table}") as conn:
            rows = conn.execute(query).all()
        return [_task_record(r) for r in rows]

    def writes_by_version(self, table: str) -> dict[int, str]:
        """Which run committed each Delta version of ``table`` (for ``history``/``blame``)."""
        with self._read(f"read versions of {table}") as conn:
            rows = conn.execute(
                sa.select(TASKS.c.delta_version, TASKS.c.run_id)
                .where(TASKS.c.table_name == table, TASKS.c.delta_version.is_not(None))
                .order_by(TASKS.c.id)
            ).all()
        return {int(version): run_id for version, run_id in rows}

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
        values = {
            "name": claim.name,
            "owner": claim.owner,
            "host": claim.host,
            "pid": claim.pid,
            "token": claim.token,
            "acquired_at": now,
            "expires_at": now + timedelta(seconds=LOCK_LEASE_SECONDS),
        }
        with self._write(f"acquire lock {claim.name}") as conn:
            from sqlalchemy.dialects import sqlite as sqlite_sql  # only the backend in use

            insert = sqlite_sql.insert(LOCKS).values(values).on_conflict_do_nothing()
            if conn.execute(insert).rowcount == 1:
                return True, None
            row = conn.execute(sa.select(LOCKS).where(LOCKS.c.name == claim.name)).first()
            holder = _holder(row)
            if row is None or not self._is_stale(row._mapping, now):
                return False, holder
            taken = conn.execute(
                LOCKS.update()
                .where(LOCKS.c.name == claim.name, LOCKS.c.token == row._mapping["token"])
                .values(values)
            ).rowcount
        if taken == 1 and holder is not None:
            log.warning("took over stale lock %r from %s", claim.name, holder.describe())
        return taken == 1, holder

    @staticmethod
    def _is_stale(row: Any, now: datetime) -> bool:
        """Expired lease, or a holder on this host whose process is gone."""
        expires_at: datetime | None = row["expires_at"]
        if expires_at is not None and expires_at <= now:
            return True
        return bool(row["host"] == _host() and not _pid_alive(int(row["pid"])))

    def _sqlite_heartbeat(self, claim: _Claim, stop: threading.Event) -> None:
        """Extend our lease until released; stops if someone else has taken the row over."""
        while not stop.wait(LOCK_HEARTBEAT_SECONDS):
            try:
                with self._write(f"renew lock {claim.name}") as conn:
                    renewed = conn.execute(
                        LOCKS.update()
                        .where(LOCKS.c.name == claim.name, LOCKS.c.token == claim.token)
                        .values(expires_at=_now() + timedelta(seconds=LOCK_LEASE_SECONDS))
                    ).rowcount
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
            with self._write(f"release lock {claim.name}") as conn:
                conn.execute(
                    LOCKS.delete().where(LOCKS.c.name == claim.name, LOCKS.c.token == claim.token)
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
        with self._guard(f"acquire lock {claim.name}"):
            got = conn.execute(
                sa.select(sa.func.pg_try_advisory_lock(sa.cast(key, sa.BigInteger)))
            ).scalar()
            if not got:
                row = conn.execute(sa.select(LOCKS).where(LOCKS.c.name == claim.name)).first()
                return False, _holder(row)
            values = {
                "owner": claim.owner,
                "host": claim.host,
                "pid": claim.pid,
                "token": claim.token,
                "acquired_at": _now(),
                "expires_at": None,
            }
            from sqlalchemy.dialects import postgresql as pg_sql  # only the backend in use

            conn.execute(
                pg_sql.insert(LOCKS)
                .values(name=claim.name, **values)
                .on_conflict_do_update(index_elements=[LOCKS.c.name], set_=values)
            )
            return True, None

    def _pg_release(self, conn: Connection, claim: _Claim, key: int) -> None:
        """Unlock and close; closing alone would free the lock, so failures are only logged."""
        try:
            conn.execute(
                LOCKS.delete().where(LOCKS.c.name == claim.name, LOCKS.c.token == claim.token)
            )
            conn.execute(sa.select(sa.func.pg_advisory_unlock(sa.cast(key, sa.BigInteger))))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not cleanly release lock %r: %s", claim.name, _short_reason(exc))
        finally:
            conn.close()
