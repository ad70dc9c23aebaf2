"""The SQLite state store creates its tables from hand-written DDL (no SQLAlchemy import on
the run path); it must stay what SQLAlchemy creates from ``METADATA``, so a store made by
either reads the same."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from headrace.runner.state import METADATA, StateStore


def _shape(path: Path) -> dict[str, object]:
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        shape: dict[str, object] = {}
        for table in tables:
            shape[table] = {
                "columns": con.execute(f"PRAGMA table_info({table})").fetchall(),
                "indexes": sorted(
                    (name, unique, origin, [c[2] for c in con.execute(f"PRAGMA index_info('{name}')")])
                    for _, name, unique, origin, _ in con.execute(f"PRAGMA index_list({table})")
                    if not name.startswith("sqlite_autoindex")
                ),
                "unique": sorted(
                    [c[2] for c in con.execute(f"PRAGMA index_info('{name}')")]
                    for _, name, unique, _, _ in con.execute(f"PRAGMA index_list({table})")
                    if unique
                ),
            }
        return shape
    finally:
        con.close()


def test_sqlite_ddl_matches_sqlalchemy_metadata(tmp_path: Path) -> None:
    ours = tmp_path / "ours.db"
    StateStore.open(str(ours)).close()
    theirs = tmp_path / "theirs.db"
    engine = sa.create_engine(sa.URL.create("sqlite", database=str(theirs)))
    try:
        METADATA.create_all(engine)
    finally:
        engine.dispose()
    assert _shape(ours) == _shape(theirs)


def test_store_reads_rows_written_through_sqlalchemy(tmp_path: Path) -> None:
    """Instants written by SQLAlchemy's DateTime on SQLite read back as aware UTC datetimes."""
    from datetime import UTC, datetime

    from headrace.runner.state import RUNS

    path = tmp_path / "state.db"
    with StateStore.open(str(path)) as store:
        with store._engine.begin() as conn:
            conn.execute(RUNS.insert().values(
                run_id="r-sa", project="p", profile="", command="run", selection="[]", status="success",
                started_at=datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC), host="h", pid=1, tables_total=0,
            ))
        run = store.get_run("r-sa")
        assert run.started_at == datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC)
        assert run.started_at.tzinfo is UTC
        store.finish_run("r-sa", "failed")
        with store._engine.connect() as conn:
            ended = conn.execute(sa.select(RUNS.c.ended_at).where(RUNS.c.run_id == "r-sa")).scalar_one()
        assert ended == store.get_run("r-sa").ended_at
