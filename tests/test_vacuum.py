"""`headrace vacuum`: removes files no version needs (old versions' files, files a crashed run
left uncommitted) and nothing a current reader needs."""

from __future__ import annotations

import json
import os
import time

from deltalake import DeltaTable

from conftest import cli, read_table, run_project, write_files

PIPE = '''
import headrace as hr
src = hr.files("data/a.csv", format="csv")

@hr.table("bronze.a", source=src, write="overwrite")
def a(raw):
    return raw
'''


def test_vacuum_removes_orphans_and_old_files_only(make_project):
    root = make_project({"pipelines/p.py": PIPE, "data/a.csv": "x\n1\n2\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/a.csv": "x\n3\n"})
    assert run_project(root).status == "success"
    folder = root / "lake/bronze/a"
    orphan = folder / "part-deadbeef-0000-0000-0000-000000000000.parquet"  # a crashed run's file
    orphan.write_bytes(b"PAR1 not really")
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    live = {os.path.basename(u) for u in DeltaTable(str(folder)).file_uris()}
    on_disk = {p.name for p in folder.glob("*.parquet")}
    assert len(on_disk) == 3  # version 0's file, version 1's file, the orphan
    dry = json.loads(cli(root, "vacuum", "--retention-hours", "0", "--dry-run", "--json").stdout)
    assert len(dry[0]["files"]) == 2 and {p.name for p in folder.glob("*.parquet")} == on_disk
    proc = cli(root, "vacuum", "--retention-hours", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in folder.glob("*.parquet")} == live
    assert read_table(root, "bronze.a") == [{"x": 3}]
