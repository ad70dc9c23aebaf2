"""`headrace show TABLE --as-of`: an SCD2 dimension as of a date; any table as of a version."""

from __future__ import annotations

import json

from conftest import cli, run_project, write_files

PIPE = '''
import headrace as hr
from headrace.spec.write_modes import Scd2
src = hr.files("data/c.csv", format="csv")

@hr.table("silver.dim", source=src, write=Scd2(key=["id"], updated_at="changed_at"))
def dim(raw):
    return raw
'''


def test_show_as_of_date_version_and_time(make_project):
    root = make_project({"pipelines/p.py": PIPE,
                         "data/c.csv": "id,city,changed_at\n1,paris,2026-01-01 00:00:00\n2,rome,2026-01-01 00:00:00\n"})
    assert run_project(root).status == "success"
    write_files(root, {"data/c.csv": "id,city,changed_at\n1,lyon,2026-02-10 00:00:00\n2,rome,2026-01-01 00:00:00\n"})
    assert run_project(root).status == "success"
    jan = json.loads(cli(root, "show", "silver.dim", "--as-of", "2026-01-31", "--json").stdout)
    assert jan["rows"] == 2 and sorted(r["city"] for r in jan["sample"]) == ["paris", "rome"]
    feb = json.loads(cli(root, "show", "silver.dim", "--as-of", "2026-02-10", "--json").stdout)
    assert sorted(r["city"] for r in feb["sample"]) == ["lyon", "rome"]
    before = json.loads(cli(root, "show", "silver.dim", "--as-of", "2025-12-31", "--json").stdout)
    assert before["rows"] == 0
    v0 = json.loads(cli(root, "show", "silver.dim", "--as-of", "0", "--json").stdout)
    assert v0["version"] == 0 and v0["rows"] == 2 and all(r["is_current"] for r in v0["sample"])
    bad = cli(root, "show", "silver.dim", "--as-of", "last tuesday")
    assert bad.returncode == 2 and "neither a version number" in bad.stderr
    human = cli(root, "show", "silver.dim", "--as-of", "2026-01-31")
    assert "SCD2 versions valid on 2026-01-31" in human.stdout and "paris" in human.stdout
