"""``headrace stream``: the selection as micro-batches, one run each, until a signal or
--max-batches; a batch with nothing new commits nothing; SIGTERM ends after the batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import cli, read_table, table_version

PIPE = '''
import headrace as hr

events = hr.files("data/*.ndjson", format="ndjson")

@hr.table("bronze.events", source=events, write="append")
def bronze_events(raw):
    return raw

@hr.table("gold.total", inputs={"e": "bronze.events"}, write="overwrite")
def total(e):
    return "SELECT count(*) AS n, CAST(sum(v) AS BIGINT) AS v FROM e"
'''


def _file(root: Path, n: int) -> None:
    (root / "data" / f"e{n}.ndjson").write_text("".join(json.dumps({"id": n * 10 + i, "v": i}) + "\n"
                                                          for i in range(3)))


def test_batches_pick_up_what_is_new_and_nothing_else(make_project: Any) -> None:
    root = make_project({"pipelines/p.py": PIPE})
    (root / "data").mkdir()
    _file(root, 1)
    done = cli(root, "stream", "--interval", "200ms", "--max-batches", "2", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    batches = [json.loads(line) for line in done.stdout.splitlines()]
    assert [b["batch"] for b in batches] == [1, 2]
    assert batches[0]["tables"] == {"bronze.events": "success", "gold.total": "success"}
    assert batches[0]["rows_out"] == 3 + 1
    assert batches[1]["tables"] == {"bronze.events": "unchanged", "gold.total": "unchanged"}
    assert table_version(root, "bronze.events") == 0 and table_version(root, "gold.total") == 0

    text = cli(root, "stream", "-s", "bronze.events+", "-i", "1s", "--max-batches", "1")
    assert text.returncode == 0 and "batch 1" in text.stdout and "unchanged" in text.stdout
    bad = cli(root, "stream", "-i", "soon")
    assert bad.returncode != 0 and "not a duration" in bad.stdout + bad.stderr


def test_sigterm_stops_after_the_current_batch(make_project: Any) -> None:
    root = make_project({"pipelines/p.py": PIPE})
    (root / "data").mkdir()
    _file(root, 1)
    proc = subprocess.Popen([sys.executable, "-m", "headrace", "--project", str(root), "stream", "-i", "300ms",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())  # the first batch has run
        assert first["tables"]["bronze.events"] == "success"
        _file(root, 2)  # arrives while streaming: a later batch appends it
        deadline = time.monotonic() + 60
        while len(read_table(root, "bronze.events")) < 6:
            assert time.monotonic() < deadline, "the new file was not picked up"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err
    assert sorted(r["id"] for r in read_table(root, "bronze.events")) == [10, 11, 12, 20, 21, 22]
    assert read_table(root, "gold.total") == [{"n": 6, "v": 6}]
