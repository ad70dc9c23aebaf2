"""A backfill killed with SIGKILL half-way resumes: dates committed before the kill are not
recomputed, the rest are done, every date holds its rows exactly once, and the killed process's
table lock (a lease row in SQLite) does not block the re-run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import date, timedelta

import pytest
from deltalake import DeltaTable

from conftest import BASE_TOML, cli, read_table, run_project

DAYS = [date(2026, 3, 1) + timedelta(days=i) for i in range(8)]
PER_DAY = 7
EVENTS = "".join(
    json.dumps({"id": i, "day": DAYS[i % len(DAYS)].isoformat(), "v": i}) + "\n" for i in range(PER_DAY * len(DAYS))
)

PIPE = '''
import time
import headrace as hr

src = hr.files("data/events.ndjson", format="ndjson")

@hr.table("bronze.events", source=src, write="overwrite")
def events(raw):
    return raw

@hr.table("gold.slow", inputs={"e": "bronze.events"}, write="overwrite_partitions", partition_by="day")
def slow(e, ctx):
    time.sleep(0.6)  # slow enough per interval to be killed in the middle of the backfill
    return e.filter(f"CAST(day AS DATE) = DATE '{ctx.ds}'").select("id, CAST(day AS DATE) AS day, v")
'''

# a lock the killed process still holds must not be waited for: a short timeout makes a
# blocked re-run fail instead of passing slowly
TOML = BASE_TOML.replace("lock_timeout_seconds = 60", "lock_timeout_seconds = 5")


def _intervals(root) -> list[tuple[int, str]]:
    """(version, interval) of every commit of gold.slow that computed a date."""
    path = root / "lake/gold/slow"
    if not (path / "_delta_log").is_dir():
        return []
    try:
        history = DeltaTable(str(path)).history()
    except Exception:  # the log is being written right now
        return []
    return sorted((h["version"], h["headrace.interval"]) for h in history if h.get("headrace.interval"))


def _lock_rows(root) -> list[tuple[str, int]]:
    db = root / ".headrace/state.db"
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=5)
    try:
        return con.execute("SELECT name, pid FROM headrace_locks WHERE name = 'table:gold.slow'").fetchall()
    except sqlite3.OperationalError:  # the store's tables are not created yet
        return []
    finally:
        con.close()


@pytest.mark.slow
def test_backfill_resumes_after_sigkill(make_project):
    root = make_project({"pipelines/p.py": PIPE, "data/events.ndjson": EVENTS}, toml=TOML)
    assert run_project(root, "bronze.events").status == "success"
    start, end = DAYS[0].isoformat(), DAYS[-1].isoformat()
    proc = subprocess.Popen(
        [sys.executable, "-m", "headrace", "--project", str(root), "backfill", "--start", start, "--end", end,
         "-s", "gold.slow", "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )
    deadline = time.monotonic() + 120
    try:
        # kill once three dates are committed, while the fourth holds the table lock
        while True:
            assert proc.poll() is None, "the backfill finished before it could be killed: " + proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the backfill made no progress"
            if len(_intervals(root)) >= 3 and any(pid == proc.pid for _, pid in _lock_rows(root)):
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # the killed run is shown as abandoned (its process is gone), none as running
    shown = json.loads(cli(root, "runs", "--json").stdout)
    killed = [r["run_id"] for r in shown if r["status"] == "abandoned"]
    assert len(killed) == 1 and all(r["status"] != "running" for r in shown)

    before = _intervals(root)
    assert 3 <= len(before) < len(DAYS)
    assert [i for _, i in before] == [d.isoformat() for d in DAYS[: len(before)]]  # oldest first
    assert _lock_rows(root) == [("table:gold.slow", proc.pid)]  # the dead process's lease row is left

    started = time.monotonic()
    again = cli(root, "backfill", "--start", start, "--end", end, "-s", "gold.slow", "--json", timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    # the stale lease was taken over at once (its pid is gone), not waited out
    assert time.monotonic() - started < 60
    outcomes = json.loads(again.stdout)
    assert [(o["ds"], o["status"]) for o in outcomes] == [(d.isoformat(), "success") for d in DAYS]

    after = _intervals(root)
    # dates committed before the kill keep their commits: not recomputed, not repeated
    assert after[: len(before)] == before
    assert Counter(i for _, i in after) == Counter(d.isoformat() for d in DAYS)  # one commit per date
    assert [v for v, _ in after] == list(range(after[0][0], after[0][0] + len(DAYS)))  # nothing else

    from conftest import open_ws

    ws = open_ws(root)
    try:
        statuses = [ws.store.tasks(o["run_id"])[0].status for o in outcomes]
        # the next run recorded the killed one as abandoned, its unfinished table skipped
        gone = ws.store.get_run(killed[0])
        gone_tasks = ws.store.tasks(killed[0])
    finally:
        ws.close()
    done = len(before)
    assert statuses == ["unchanged"] * done + ["success"] * (len(DAYS) - done)
    assert gone.status == "abandoned" and gone.ended_at is not None
    assert [t.status for t in gone_tasks] == ["skipped"]
    assert f"({proc.pid} on" in gone_tasks[0].message and "ended before finishing" in gone_tasks[0].message

    rows = read_table(root, "gold.slow")
    assert len(rows) == len({r["id"] for r in rows}) == PER_DAY * len(DAYS)  # no duplicates
    per_day = Counter(r["day"] for r in rows)
    assert per_day == dict.fromkeys(DAYS, PER_DAY)  # no gaps
    assert all(r["id"] % len(DAYS) == DAYS.index(r["day"]) for r in rows)  # each row in its own date
    assert _lock_rows(root) == []
