"""Runner behaviour: retries of transient errors, downstream skipping, `retry RUN_ID`, ordering."""

from __future__ import annotations

import pytest

from conftest import open_ws, read_table, run_project, table_version, write_files

FLAKY = '''
import headrace as hr
from pathlib import Path

src = hr.files("data/a.csv", format="csv")

@hr.table("bronze.flaky", source=src)
def flaky(raw, ctx):
    """Fails transiently on the first attempt: a network blip."""
    marker = ctx.project_root / "attempts.txt"
    n = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(n))
    if n == 1:
        raise hr.TransientError("connection reset by peer")
    return raw

@hr.table("silver.flaky", inputs={"f": "bronze.flaky"})
def silver(f):
    return f.filter("x > 1")
'''


def test_transient_error_is_retried_then_succeeds(make_project):
    root = make_project({"pipelines/p.py": FLAKY, "data/a.csv": "x\n1\n2\n3\n"})
    result = run_project(root)
    assert result.status == "success"
    by = {t.table: t for t in result.tasks}
    assert by["bronze.flaky"].attempts == 2 and by["bronze.flaky"].status == "success"
    assert by["silver.flaky"].attempts == 1
    assert [r["x"] for r in read_table(root, "silver.flaky", order_by="x")] == [2, 3]
    ws = open_ws(root)
    attempts = ws.store.attempts(result.run_id, "bronze.flaky")
    assert [(a.attempt, a.status) for a in attempts] == [(1, "failed"), (2, "success")]
    assert "connection reset" in (attempts[0].error or "")
    ws.close()


BROKEN = '''
import headrace as hr
from pathlib import Path

a = hr.files("data/a.csv", format="csv")
b = hr.files("data/b.csv", format="csv")

@hr.table("bronze.good", source=a)
def good(raw):
    return raw

@hr.table("bronze.bad", source=b)
def bad(raw, ctx):
    if not (ctx.project_root / "fixed.flag").exists():
        raise ValueError("bad input: column y is negative")
    return raw

@hr.table("silver.joined", inputs={"g": "bronze.good", "b": "bronze.bad"})
def joined(g, b):
    return "select g.x, b.y from g join b on g.x = b.x"

@hr.table("gold.final", inputs={"j": "silver.joined"})
def final(j):
    return j

@hr.table("silver.good_only", inputs={"g": "bronze.good"})
def good_only(g):
    return g
'''


def test_failure_skips_downstream_and_retry_reruns_only_failed(make_project):
    root = make_project({"pipelines/p.py": BROKEN, "data/a.csv": "x\n1\n2\n", "data/b.csv": "x,y\n1,10\n2,20\n"})
    result = run_project(root)
    by = {t.table: t for t in result.tasks}
    assert result.status == "failed"
    assert by["bronze.bad"].status == "failed"
    assert by["bronze.bad"].attempts == 1  # ValueError is not transient: no retry
    assert "column y is negative" in by["bronze.bad"].error and "p.py:" in by["bronze.bad"].error
    assert by["silver.joined"].status == "skipped" and "bronze.bad" in by["silver.joined"].message
    assert by["gold.final"].status == "skipped"
    assert by["bronze.good"].status == "success" and by["silver.good_only"].status == "success"
    write_files(root, {"fixed.flag": "yes"})
    ws = open_ws(root)
    retried = ws.retry(result.run_id[:12])
    ws.close()
    assert retried.status == "success"
    assert sorted(t.table for t in retried.tasks) == ["bronze.bad", "gold.final", "silver.joined"]
    assert [(r["x"], r["y"]) for r in read_table(root, "gold.final", order_by="x")] == [(1, 10), (2, 20)]
    ws = open_ws(root)
    record = ws.store.get_run(retried.run_id)
    assert record.parent_run_id == result.run_id and record.command == "retry"
    assert ws.store.get_run(result.run_id).status == "failed"
    ws.close()


def test_retry_of_a_successful_run_is_a_clear_error(make_project):
    import pytest

    from headrace.errors import SelectionError

    root = make_project({"pipelines/p.py": FLAKY.replace("if n == 1", "if n == 0"), "data/a.csv": "x\n1\n"})
    result = run_project(root)
    assert result.status == "success"
    ws = open_ws(root)
    with pytest.raises(SelectionError, match="no failed or skipped tables"):
        ws.retry(result.run_id)
    ws.close()


def test_selection_runs_only_selected_and_upstream_must_exist(make_project):
    root = make_project({"pipelines/p.py": FLAKY.replace("if n == 1", "if n == 0"), "data/a.csv": "x\n1\n2\n"})
    r = run_project(root, "silver.flaky")
    assert r.status == "failed"
    assert "has not been built yet" in r.tasks[0].error and "+silver.flaky" in (r.tasks[0].hint or "")
    r = run_project(root, "+silver.flaky")
    assert [t.table for t in r.tasks] == ["bronze.flaky", "silver.flaky"] and r.status == "success"
    assert table_version(root, "silver.flaky") == 0


def test_run_records_state(make_project):
    root = make_project({"pipelines/p.py": FLAKY.replace("if n == 1", "if n == 0"), "data/a.csv": "x\n1\n2\n3\n"})
    result = run_project(root)
    ws = open_ws(root)
    tasks = {t.table: t for t in ws.store.tasks(result.run_id)}
    # a CSV is counted while it is read (from the engine profile), a table input from Delta stats
    assert tasks["bronze.flaky"].rows_in == 3 and tasks["bronze.flaky"].rows_out == 3
    assert tasks["silver.flaky"].rows_in == 3
    assert tasks["silver.flaky"].rows_out == 2 and tasks["silver.flaky"].delta_version == 0
    assert tasks["bronze.flaky"].status == "success" and tasks["bronze.flaky"].ended_at is not None
    runs = ws.store.list_runs(5)
    assert runs[0].run_id == result.run_id and runs[0].status == "success" and runs[0].tables_total == 2
    history = ws.lake.history("silver.flaky")
    assert history[0].run_id == result.run_id
    ws.close()


def test_python_transform_return_types(make_project):
    pipe = '''
import headrace as hr
import pyarrow as pa

src = hr.files("data/a.csv", format="csv")

@hr.table("t.sql_string", source=src)
def sql_string(raw):
    return "select x * 10 as y from raw"

@hr.table("t.arrow", source=src)
def arrow(raw):
    return pa.table({"y": [7, 8]})

@hr.table("t.polars", source=src)
def pl_frame(raw):
    import polars as pl
    return pl.from_arrow(raw.to_arrow_table()).select((pl.col("x") + 1).alias("y"))

@hr.table("t.pandas", source=src)
def pd_frame(raw):
    return raw.to_arrow_table().to_pandas().assign(y=lambda d: d.x * 2)[["y"]]

@hr.table("t.bad_return", source=src)
def bad(raw):
    return 42
'''
    root = make_project({"pipelines/p.py": pipe, "data/a.csv": "x\n1\n2\n"})
    result = run_project(root)
    by = {t.table: t for t in result.tasks}
    assert [r["y"] for r in read_table(root, "t.sql_string", order_by="y")] == [10, 20]
    assert [r["y"] for r in read_table(root, "t.arrow", order_by="y")] == [7, 8]
    assert [r["y"] for r in read_table(root, "t.polars", order_by="y")] == [2, 3]
    assert [r["y"] for r in read_table(root, "t.pandas", order_by="y")] == [2, 4]
    assert by["t.bad_return"].status == "failed" and "returned int" in by["t.bad_return"].error


def test_independent_tables_run_in_parallel(make_project):
    pipe = '''
import time
import headrace as hr
src = hr.files("data/a.csv", format="csv")

@hr.table("p.one", source=src)
def one(raw):
    time.sleep(0.6)
    return raw

@hr.table("p.two", source=src)
def two(raw):
    time.sleep(0.6)
    return raw
'''
    root = make_project({"pipelines/p.py": pipe, "data/a.csv": "x\n1\n"})
    parallel = run_project(root, workers=2)
    a, b = parallel.tasks
    assert a.started_at < b.ended_at and b.started_at < a.ended_at  # intervals overlap
    serial = run_project(root, workers=1, force=True)
    a, b = sorted(serial.tasks, key=lambda t: t.started_at)
    assert a.ended_at <= b.started_at  # one worker: strictly one after the other


def test_retry_policy_backoff_grows_with_jitter_and_cap():
    import random

    from headrace.errors import SourceError, TransientError
    from headrace.runner.retry import RetryPolicy

    policy = RetryPolicy(retries=3, backoff_seconds=1.0, max_backoff_seconds=3.0)
    rng = random.Random(1)
    delays = [[policy.delay(n, rng) for _ in range(200)] for n in (1, 2, 3, 4)]
    for n, ds in zip((1, 2, 3, 4), delays, strict=True):
        cap = min(3.0, 2 ** (n - 1))
        assert all(cap / 2 <= d <= cap for d in ds)
        assert len({round(d, 6) for d in ds}) > 150  # jittered, not lockstep
    assert policy.should_retry(TransientError("x"), 1) and policy.should_retry(ConnectionError(), 3)
    assert not policy.should_retry(TransientError("x"), 4)  # attempts exhausted
    assert not policy.should_retry(SourceError("x"), 1) and not policy.should_retry(ValueError(), 1)


def test_transient_error_exhausts_attempts(make_project):
    pipe = '''
import headrace as hr
src = hr.files("data/a.csv", format="csv")

@hr.table("bronze.down", source=src, retries=1)
def down(raw):
    raise TimeoutError("upstream API timed out")
'''
    root = make_project({"pipelines/p.py": pipe, "data/a.csv": "x\n1\n"})
    result = run_project(root)
    assert result.tasks[0].status == "failed" and result.tasks[0].attempts == 2
    assert "timed out" in result.tasks[0].error


def test_cli_retry_command(make_project):
    import json

    from conftest import cli

    root = make_project({"pipelines/p.py": BROKEN, "data/a.csv": "x\n1\n2\n", "data/b.csv": "x,y\n1,10\n2,20\n"})
    first = cli(root, "run", "--json")
    assert first.returncode == 1
    run_id = json.loads(first.stdout)["run_id"]
    write_files(root, {"fixed.flag": "1"})
    second = cli(root, "retry", run_id)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "bronze.bad" in second.stdout and "bronze.good" not in second.stdout


@pytest.mark.slow
def test_killed_run_leaves_no_partial_table_and_frees_its_lock(make_project):
    """kill -9 in the middle of a table: readers keep the last version; the next run proceeds."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pipe = '''
import time
import headrace as hr
from pathlib import Path
src = hr.files("data/a.csv", format="csv")

@hr.table("bronze.slow", source=src)
def slow(raw, ctx):
    if (ctx.project_root / "slow.flag").exists():
        (ctx.project_root / "started.flag").write_text("1")
        time.sleep(60)
    return raw
'''
    root = make_project({"pipelines/p.py": pipe, "data/a.csv": "x\n1\n"})
    assert run_project(root).status == "success"
    write_files(root, {"slow.flag": "1", "data/a.csv": "x\n1\n2\n3\n"})
    proc = subprocess.Popen([sys.executable, "-m", "headrace", "--project", str(root), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (root / "started.flag").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (root / "started.flag").exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert table_version(root, "bronze.slow") == 0
    assert [r["x"] for r in read_table(root, "bronze.slow")] == [1]
    (root / "slow.flag").unlink()
    result = run_project(root)  # the dead run's lock (same host, dead pid) is taken over
    assert result.status == "success" and table_version(root, "bronze.slow") == 1
    assert sorted(r["x"] for r in read_table(root, "bronze.slow")) == [1, 2, 3]
