"""The run-state store against real SQLite files and a real PostgreSQL server.

PostgreSQL defaults to ``postgresql://postgres@127.0.0.1:5432/test`` (override with
``HEADRACE_TEST_PG_URL``); each module run gets its own throwaway database. When the server
is unreachable the PostgreSQL cases skip, unless ``CI`` is set, where they fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from headrace.errors import SelectionError, StateStoreError, TransientError, is_retryable
from headrace.runner import state as state_module
from headrace.runner.state import (
    LOCKS,
    METADATA,
    AttemptRecord,
    RunRecord,
    StateStore,
    TaskRecord,
    mask_url,
)

PG_URL = os.environ.get("HEADRACE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SRC = Path(__file__).resolve().parents[1] / "src"


# --------------------------------------------------------------------------- fixtures


def _libpq_url(url: str) -> str:
    """psycopg wants a libpq URL, not an SQLAlchemy one."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pg_database_url() -> Iterator[str]:
    """A fresh database for this module, dropped at the end."""
    import psycopg

    admin_url = _libpq_url(PG_URL)
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0]
        _unavailable(
            f"PostgreSQL at {mask_url(admin_url)} is unreachable ({first_line}); "
            "start it or set HEADRACE_TEST_PG_URL"
        )
    name = f"headrace_t_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty store on each backend."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "state.db")
    url: str = request.getfixturevalue("pg_database_url")
    with StateStore.open(url) as store, store._engine.begin() as conn:
        for table in reversed(METADATA.sorted_tables):
            conn.execute(table.delete())
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    with StateStore.open(store_url) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore.open(str(tmp_path / "state.db")) as opened:
        yield opened


def _start(store: StateStore, run_id: str, tables: list[str] | None = None) -> None:
    store.start_run(
        run_id=run_id,
        project="shop",
        profile="dev",
        command="run",
        selection=[],
        tables=tables if tables is not None else ["orders"],
    )


def _lock_rows(store: StateStore) -> list[dict[str, Any]]:
    with store._engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(LOCKS)).all()]


def _insert_lock_row(store: StateStore, **values: Any) -> None:
    now = datetime.now(UTC)
    row = {"owner": "crashed-run", "token": "t0", "acquired_at": now - timedelta(minutes=5)}
    row.update(values)
    with store._engine.begin() as conn:
        conn.execute(LOCKS.insert().values(row))


def _dead_pid() -> int:
    """A pid that no process has, found without spawning one."""
    for pid in range(2**22 - 1, 2**21, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            continue
    raise AssertionError("no free pid found")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


# --------------------------------------------------------------------------- open


def test_open_creates_tables_idempotently(store_url: str) -> None:
    with StateStore.open(store_url) as first, StateStore.open(store_url) as second:
        assert first.dialect == second.dialect
        assert first.dialect in ("sqlite", "postgresql")
        _start(first, "run-open-1")
        assert second.get_run("run-open-1").run_id == "run-open-1"
        with second._engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
        assert {t.name for t in METADATA.sorted_tables} <= names


def test_sqlite_open_creates_parent_dirs_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"
    with StateStore.open(str(path)) as store:
        assert path.exists()
        assert store.dialect == "sqlite"
        assert store.url_for_display == str(path)
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


@pytest.mark.parametrize("url", ["sqlite:///rel/state.db", "rel/state.db"])
def test_relative_sqlite_paths_resolve_against_root(tmp_path: Path, url: str) -> None:
    with StateStore.open(url, root=tmp_path) as store:
        assert (tmp_path / "rel" / "state.db").exists()
        assert store.url_for_display == str(tmp_path / "rel" / "state.db")


def test_unreachable_postgres_fails_fast_with_masked_url() -> None:
    started = time.monotonic()
    with pytest.raises(StateStoreError) as info:
        StateStore.open("postgresql://postgres:s3cret@127.0.0.1:1/test")
    assert time.monotonic() - started < 6
    message = str(info.value)
    assert info.value.message.startswith(
        "cannot reach the state store postgresql://postgres:***@127.0.0.1:1/test: "
    )
    assert "connection refused" in info.value.message.lower()
    assert "\n" not in info.value.message
    assert "s3cret" not in message
    assert info.value.hint is not None
    assert "[state] url" in info.value.hint


def test_postgres_scheme_alias_is_accepted_and_masked() -> None:
    with pytest.raises(StateStoreError) as info:
        StateStore.open("postgres://bob:pw@127.0.0.1:1/db?sslmode=disable")
    assert "postgres://bob:***@127.0.0.1:1/db" in info.value.message
    assert "pw@" not in str(info.value)


def test_unwritable_sqlite_path_fails_fast(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    target = blocker / "sub" / "state.db"
    started = time.monotonic()
    with pytest.raises(StateStoreError) as info:
        StateStore.open(str(target))
    assert time.monotonic() - started < 5
    assert str(target) in info.value.message
    assert "\n" not in info.value.message
    assert info.value.hint is not None


def test_sqlite_path_that_is_a_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(StateStoreError, match="cannot open the state store"):
        StateStore.open(str(tmp_path))


@pytest.mark.parametrize("url", ["", "mysql://u@h/db", "sqlite://", "sqlite:///:memory:"])
def test_unsupported_urls_raise(url: str) -> None:
    with pytest.raises(StateStoreError):
        StateStore.open(url)


def test_mask_url() -> None:
    assert mask_url("postgresql://u:p@h:5/d") == "postgresql://u:***@h:5/d"
    assert mask_url("postgresql://u@h/d") == "postgresql://u@h/d"
    assert mask_url("postgresql://h/d?user=u&password=p&x=1") == (
        "postgresql://h/d?user=u&password=***&x=1"
    )
    assert mask_url("/tmp/state.db") == "/tmp/state.db"


# --------------------------------------------------------------------------- runs, tasks


def test_run_task_attempt_round_trip(store: StateStore) -> None:
    before = datetime.now(UTC)
    store.start_run(
        run_id="r-round-trip",
        project="shop",
        profile="prod",
        command="run",
        selection=["orders+", "tag:daily"],
        tables=["raw_orders", "orders", "revenue"],
        parent_run_id="r-parent",
    )
    after = datetime.now(UTC)
    run = store.get_run("r-round-trip")
    assert before <= run.started_at <= after
    assert run.started_at.tzinfo is UTC
    assert run == RunRecord(
        run_id="r-round-trip",
        project="shop",
        profile="prod",
        command="run",
        selection=["orders+", "tag:daily"],
        status="running",
        started_at=run.started_at,
        ended_at=None,
        parent_run_id="r-parent",
        host=socket.gethostname(),
        pid=os.getpid(),
        tables_total=3,
    )

    t_start = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    t_end = datetime(2024, 5, 1, 10, 0, 7, 654321, tzinfo=UTC)
    store.update_task(
        "r-round-trip",
        "orders",
        status="success",
        attempts=2,
        started_at=t_start,
        ended_at=t_end,
        rows_in=10_000_000_000,
        rows_out=8,
        delta_version=4,
        operation="merge",
        message="8 rows merged",
        error=None,
        error_kind=None,
    )
    store.update_task(
        "r-round-trip", "revenue", status="failed", error="boom\ntrace", error_kind="TransformError"
    )
    tasks = store.tasks("r-round-trip")
    assert [t.table for t in tasks] == ["raw_orders", "orders", "revenue"]
    assert tasks[0] == TaskRecord("r-round-trip", "raw_orders", "pending", 0, *([None] * 9))
    assert tasks[1] == TaskRecord(
        run_id="r-round-trip",
        table="orders",
        status="success",
        attempts=2,
        started_at=datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC),
        ended_at=t_end,
        rows_in=10_000_000_000,
        rows_out=8,
        delta_version=4,
        operation="merge",
        message="8 rows merged",
        error=None,
        error_kind=None,
    )
    assert tasks[1].started_at is not None
    assert tasks[1].started_at.tzinfo is UTC
    assert (tasks[2].status, tasks[2].error, tasks[2].error_kind) == (
        "failed",
        "boom\ntrace",
        "TransformError",
    )

    store.start_attempt("r-round-trip", "orders", 1)
    store.finish_attempt(
        "r-round-trip", "orders", 1, status="failed", error="io hiccup", error_kind="TransientError"
    )
    store.start_attempt("r-round-trip", "orders", 2)
    store.finish_attempt("r-round-trip", "orders", 2, status="success")
    attempts = store.attempts("r-round-trip", "orders")
    assert [(a.attempt, a.status, a.error, a.error_kind) for a in attempts] == [
        (1, "failed", "io hiccup", "TransientError"),
        (2, "success", None, None),
    ]
    for attempt in attempts:
        assert isinstance(attempt, AttemptRecord)
        assert attempt.ended_at is not None
        assert attempt.started_at <= attempt.ended_at
        assert attempt.started_at.tzinfo is UTC
    assert store.attempts("r-round-trip", "revenue") == []

    store.finish_run("r-round-trip", "failed")
    finished = store.get_run("r-round-trip")
    assert finished.status == "failed"
    assert finished.ended_at is not None
    assert finished.ended_at >= finished.started_at


def test_duplicate_run_id_raises(store: StateStore) -> None:
    _start(store, "r-dup")
    with pytest.raises(StateStoreError, match="r-dup"):
        _start(store, "r-dup")


def test_run_without_tables(store: StateStore) -> None:
    _start(store, "r-empty", tables=[])
    assert store.get_run("r-empty").tables_total == 0
    assert store.tasks("r-empty") == []


def test_list_runs_newest_first_with_limit(store: StateStore) -> None:
    ids = [f"r-list-{i}" for i in range(5)]
    for run_id in ids:
        _start(store, run_id)
    assert [r.run_id for r in store.list_runs()] == ids[::-1]
    assert [r.run_id for r in store.list_runs(limit=2)] == ["r-list-4", "r-list-3"]
    assert store.list_runs(limit=0) == []


def test_get_run_by_prefix_unknown_and_ambiguous(store: StateStore) -> None:
    for run_id in ("abcd1111", "abcd2222", "ffff0000", "ab%_0000"):
        _start(store, run_id)
    assert store.get_run("abcd1").run_id == "abcd1111"
    assert store.get_run("ffff").run_id == "ffff0000"
    assert store.get_run("ab%_").run_id == "ab%_0000"  # LIKE wildcards are literal
    with pytest.raises(SelectionError, match="ambiguous") as info:
        store.get_run("abcd")
    assert "abcd1111" in info.value.message
    assert "abcd2222" in info.value.message
    with pytest.raises(SelectionError, match="zzzz"):
        store.get_run("zzzz")
    with pytest.raises(SelectionError):
        store.get_run("ABCD1")  # ids are case-sensitive
    with pytest.raises(SelectionError) as short:
        store.get_run("ffa")  # too short to be a prefix
    assert short.value.hint is not None


def test_update_task_rejects_unknown_fields(store: StateStore) -> None:
    _start(store, "r-fields")
    with pytest.raises(ValueError, match="rows_written"):
        store.update_task("r-fields", "orders", status="success", rows_written=3)
    with pytest.raises(ValueError, match="table_name"):
        store.update_task("r-fields", "orders", table_name="other")
    assert store.tasks("r-fields")[0].status == "pending"


def test_update_task_rejects_naive_datetimes(store: StateStore) -> None:
    _start(store, "r-naive")
    with pytest.raises(ValueError, match="naive"):
        store.update_task("r-naive", "orders", started_at=datetime(2024, 1, 1))


def test_missing_rows_raise_state_store_error(store: StateStore) -> None:
    _start(store, "r-missing")
    with pytest.raises(StateStoreError, match="nope"):
        store.update_task("r-missing", "nope", status="success")
    with pytest.raises(StateStoreError):
        store.finish_attempt("r-missing", "orders", 1, status="success")
    with pytest.raises(StateStoreError):
        store.finish_run("r-never-started", "success")


def test_table_history_and_writes_by_version(store: StateStore) -> None:
    for run_id in ("r-h1", "r-h2", "r-h3"):
        _start(store, run_id, tables=["orders", "customers"])
    store.update_task("r-h1", "orders", status="success", delta_version=1, operation="append")
    store.update_task("r-h2", "orders", status="failed", error="boom")
    store.update_task("r-h3", "orders", status="success", delta_version=2, operation="merge")
    store.update_task("r-h3", "customers", status="success", delta_version=7)

    history = store.table_history("orders")
    assert [(t.run_id, t.table, t.status) for t in history] == [
        ("r-h3", "orders", "success"),
        ("r-h2", "orders", "failed"),
        ("r-h1", "orders", "success"),
    ]
    assert [t.run_id for t in store.table_history("orders", limit=2)] == ["r-h3", "r-h2"]
    assert store.table_history("unknown") == []
    assert store.writes_by_version("orders") == {1: "r-h1", 2: "r-h3"}
    assert store.writes_by_version("customers") == {7: "r-h3"}
    assert store.writes_by_version("unknown") == {}


def test_threads_share_one_store(store: StateStore) -> None:
    errors: list[BaseException] = []

    def work(tag: str) -> None:
        try:
            for i in range(10):
                run_id = f"r-thread-{tag}-{i}"
                _start(store, run_id)
                store.update_task(run_id, "orders", status="success", rows_out=i)
                store.list_runs(limit=3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(str(n),)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list_runs(limit=100)) == 40


# --------------------------------------------------------------------------- locks


def test_lock_is_exclusive_and_released(store: StateStore) -> None:
    with store.lock("daily", owner="run-A", timeout=1):
        with (
            pytest.raises(TransientError) as info,
            store.lock("daily", owner="run-B", timeout=0.3, poll=0.05),
        ):
            pytest.fail("acquired a held lock")
        assert is_retryable(info.value)
        assert "run-A" in info.value.message
        assert f"pid {os.getpid()}" in info.value.message
        assert info.value.hint is not None
        with store.lock("other", owner="run-B", timeout=0):
            pass
    assert _lock_rows(store) == []
    with store.lock("daily", owner="run-B", timeout=0):
        assert [r["owner"] for r in _lock_rows(store)] == ["run-B"]


def test_lock_released_when_block_raises(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.lock("boom", owner="run-A", timeout=1):
        raise RuntimeError("body failed")
    with store.lock("boom", owner="run-B", timeout=0):
        pass


def test_stale_sqlite_lock_of_dead_pid_is_taken_over(sqlite_store: StateStore) -> None:
    _insert_lock_row(
        sqlite_store,
        name="orders",
        host=socket.gethostname(),
        pid=_dead_pid(),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    with sqlite_store.lock("orders", owner="run-new", timeout=0):
        (row,) = _lock_rows(sqlite_store)
        assert (row["owner"], row["pid"]) == ("run-new", os.getpid())
        assert row["token"] != "t0"
    assert _lock_rows(sqlite_store) == []


def test_expired_sqlite_lease_is_taken_over(sqlite_store: StateStore) -> None:
    _insert_lock_row(
        sqlite_store,
        name="orders",
        host="elsewhere",
        pid=os.getpid(),
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    with sqlite_store.lock("orders", owner="run-new", timeout=0):
        assert [r["owner"] for r in _lock_rows(sqlite_store)] == ["run-new"]


def test_live_foreign_sqlite_lock_is_respected(sqlite_store: StateStore) -> None:
    _insert_lock_row(
        sqlite_store,
        name="orders",
        owner="run-remote",
        host="elsewhere",
        pid=4242,
        expires_at=datetime.now(UTC) + timedelta(seconds=60),
    )
    with (
        pytest.raises(TransientError) as info,
        sqlite_store.lock("orders", owner="run-new", timeout=0.2, poll=0.05),
    ):
        pytest.fail("stole a live lock")
    assert "run-remote (host elsewhere, pid 4242, since " in info.value.message


def test_sqlite_heartbeat_renews_the_lease(
    sqlite_store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "LOCK_LEASE_SECONDS", 0.5)
    monkeypatch.setattr(state_module, "LOCK_HEARTBEAT_SECONDS", 0.05)
    with sqlite_store.lock("orders", owner="run-A", timeout=0):
        time.sleep(0.9)  # well past the first lease
        with pytest.raises(TransientError), sqlite_store.lock("orders", owner="run-B", timeout=0):
            pytest.fail("lease lapsed while held")
    assert _lock_rows(sqlite_store) == []


def test_sqlite_release_deletes_only_own_row(sqlite_store: StateStore) -> None:
    with (
        sqlite_store.lock("orders", owner="run-A", timeout=0),
        sqlite_store._engine.begin() as conn,
    ):
        # someone else took it over (e.g. after our lease lapsed)
        conn.execute(LOCKS.update().values(owner="run-B", token="theirs"))
    assert [r["owner"] for r in _lock_rows(sqlite_store)] == ["run-B"]


def test_lock_argument_validation(store: StateStore) -> None:
    with pytest.raises(ValueError):
        store.lock("x", owner="o", timeout=-1)


_LOCK_CHILD = """
import json, os, sys
from headrace.errors import TransientError
from headrace.runner.state import StateStore

store = StateStore.open(sys.argv[1])
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
for line in sys.stdin:
    verb, name, owner, timeout = line.split()
    try:
        with store.lock(name, owner=owner, timeout=float(timeout), poll=0.05):
            if verb == "die":
                os._exit(3)  # crash while holding the lock
            print(json.dumps({"ok": True}), flush=True)
    except TransientError as exc:
        print(json.dumps({"ok": False, "message": exc.message, "retryable": exc.retryable}),
              flush=True)
"""


def _ask(child: subprocess.Popen[str], line: str) -> dict[str, Any]:
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.write(line + "\n")
    child.stdin.flush()
    answer: dict[str, Any] = json.loads(child.stdout.readline())
    return answer


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_lock_excludes_another_process_and_survives_its_crash(
    store: StateStore, store_url: str
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _LOCK_CHILD, store_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        assert child.stdout is not None
        assert json.loads(child.stdout.readline())["ready"] is True

        with store.lock("nightly", owner="run-A", timeout=1):
            started = time.monotonic()
            denied = _ask(child, "try nightly run-B 0.5")
            waited = time.monotonic() - started
        assert denied["ok"] is False
        assert denied["retryable"] is True
        assert 0.4 < waited < 5
        holder = f"run-A (host {socket.gethostname()}, pid {os.getpid()}, since "
        assert holder in denied["message"]

        assert _ask(child, "try nightly run-B 2") == {"ok": True}

        assert child.stdin is not None
        child.stdin.write("die nightly run-C 2\n")
        child.stdin.flush()
        assert child.wait(timeout=10) == 3
        started = time.monotonic()
        with store.lock("nightly", owner="run-D", timeout=5, poll=0.05):
            assert time.monotonic() - started < 3
            with (
                pytest.raises(TransientError, match="run-D"),
                store.lock("nightly", owner="run-E", timeout=0),
            ):
                pass
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)


_WRITER_CHILD = """
import sys, threading, time
from pathlib import Path
from headrace.runner.state import StateStore

url, tag, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
store = StateStore.open(url)

def work(offset):
    for i in range(offset, 50, 2):
        run_id = f"{tag}-{i:02d}"
        store.start_run(run_id=run_id, project="p", profile="dev", command="run",
                        selection=[], tables=["t"])
        store.update_task(run_id, "t", status="success", rows_out=i)

threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
store.close()
"""


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_processes_share_one_sqlite_file_without_losing_writes(tmp_path: Path) -> None:
    url = str(tmp_path / "shared" / "state.db")  # created concurrently by both children
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER_CHILD, url, tag, str(go)],
            env=_child_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    go.touch()
    for child in children:
        _, stderr = child.communicate(timeout=80)
        assert child.returncode == 0, stderr

    with StateStore.open(url) as store:
        runs = store.list_runs(limit=1000)
        assert sorted(r.run_id for r in runs) == sorted(
            f"{tag}-{i:02d}" for tag in ("p1", "p2") for i in range(50)
        )
        for run in runs:
            (task,) = store.tasks(run.run_id)
            assert (task.status, task.rows_out) == ("success", int(run.run_id[-2:]))


def test_runs_left_running_by_a_dead_process_are_closed(store: StateStore) -> None:
    """A run whose process was killed stays ``running`` until the next run on the host
    records it ``abandoned``: unfinished tables ``skipped`` (retry takes them), open attempts
    ``failed``; finished tables, live runs and other hosts' runs are left alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    for run_id in ("killed", "alive", "elsewhere", "reused"):
        _start(store, run_id, ["a", "b", "c"])
    store.update_task("killed", "a", status="success")
    store.update_task("killed", "b", status="running")
    store.start_attempt("killed", "b", 1)
    with store._engine.begin() as conn:
        conn.execute(sa.text("UPDATE headrace_runs SET pid = :pid WHERE run_id IN ('killed', 'elsewhere')"),
                     {"pid": dead_pid})
        conn.execute(sa.text("UPDATE headrace_runs SET host = 'another-host' WHERE run_id = 'elsewhere'"))
        # this process's pid, recorded long before this process started: a reused pid
        conn.execute(sa.text("UPDATE headrace_runs SET started_at = :at WHERE run_id = 'reused'"),
                     {"at": store._bind({"started_at": datetime(2020, 1, 1, tzinfo=UTC)})["started_at"]})

    assert sorted(store.close_abandoned_runs()) == ["killed", "reused"]
    killed = store.get_run("killed")
    assert killed.status == "abandoned" and killed.ended_at is not None
    tasks = {t.table: t for t in store.tasks("killed")}
    assert {n: t.status for n, t in tasks.items()} == {"a": "success", "b": "skipped", "c": "skipped"}
    assert f"({dead_pid} on {socket.gethostname()})" in (tasks["b"].message or "")
    assert [a.status for a in store.attempts("killed", "b")] == ["failed"]
    assert store.get_run("alive").status == "running"
    assert store.get_run("elsewhere").status == "running"
    assert store.close_abandoned_runs() == []  # closed once
    _start(store, "next", ["a"])  # every new run closes what is left
    assert store.get_run("alive").status == "running"
