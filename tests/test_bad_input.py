"""Bad input gets a one- or two-line error naming the file/table, and nothing half-written."""

from __future__ import annotations

from deltalake import DeltaTable

from conftest import BASE_TOML, cli, run_project, table_version, write_files

OK_PIPE = '''
import headrace as hr
src = hr.files("data/a.csv", format="csv")

@hr.table("bronze.a", source=src)
def a(raw):
    return raw
'''


def _assert_short_error(proc, *needles: str, code: int) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 2, proc.stderr
    assert lines[0].startswith("error:")
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def test_config_typo(make_project):
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n"},
                        toml=BASE_TOML.replace("workers = 2", "workerz = 2"))
    _assert_short_error(cli(root, "run"), "workerz", "workers", code=2)


def test_no_project(tmp_path):
    _assert_short_error(cli(tmp_path, "run"), "no headrace.toml", code=2)


def test_unknown_ref_names_file_and_name(make_project):
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n",
                         "models/silver/s.sql": "select * from ref('bronze.aa')\n"})
    _assert_short_error(cli(root, "run"), "bronze.aa", "s.sql", "bronze.a", code=2)


def test_cycle_prints_path(make_project):
    root = make_project({
        "models/s/a.sql": "select * from ref('s.b')\n",
        "models/s/b.sql": "select * from ref('s.a')\n",
    })
    _assert_short_error(cli(root, "run"), "s.a -> s.b -> s.a", code=2)


def test_sql_that_does_not_parse(make_project):
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n",
                         "models/silver/s.sql": "select x from ref('bronze.a') where (x = \n"})
    _assert_short_error(cli(root, "run"), "s.sql:1", code=2)


def test_sql_binding_error_names_table_and_file(make_project):
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n",
                         "models/silver/s.sql": "select nope from ref('bronze.a')\n"})
    proc = cli(root, "run")
    assert proc.returncode == 1
    assert "silver.s" in proc.stdout and "nope" in proc.stdout and "s.sql" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_empty_glob(make_project):
    root = make_project({"pipelines/p.py": OK_PIPE.replace("data/a.csv", "data/none/*.csv")})
    r = run_project(root)
    assert r.status == "failed"
    assert "no files match 'data/none/*.csv'" in r.tasks[0].error
    assert r.tasks[0].attempts == 1


def test_ragged_csv_names_file_and_line(make_project):
    rows = "".join(f"{i},{i * 2}\n" for i in range(3000))
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x,y\n" + rows + "1,2,3\n4,5\n"})
    r = run_project(root)
    assert r.status == "failed"
    err = r.tasks[0].error
    assert "a.csv line 3002" in err and "Expected Number of Columns: 2 Found: 3" in err
    assert not (root / "lake/bronze/a/_delta_log").exists()


def test_malformed_json_names_file_and_line(make_project):
    pipe = OK_PIPE.replace('"data/a.csv", format="csv"', '"data/*.ndjson", format="ndjson"')
    root = make_project({"pipelines/p.py": pipe, "data/a.ndjson": '{"x": 1}\n{"x": 2\n{"x": 3}\n'})
    r = run_project(root)
    assert r.status == "failed"
    assert "a.ndjson" in r.tasks[0].error and "line 3" in r.tasks[0].error


def test_unreadable_file(make_project):
    import os

    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n"})
    os.chmod(root / "data/a.csv", 0)
    try:
        if os.access(root / "data/a.csv", os.R_OK):  # running as root: permissions do not apply
            (root / "data/a.csv").unlink()
            (root / "data/a.csv").mkdir()
            (root / "data/a.csv" / "x").write_text("")
        r = run_project(root)
        assert r.status == "failed"
        assert "a.csv" in r.tasks[0].error
    finally:
        if (root / "data/a.csv").is_file():
            os.chmod(root / "data/a.csv", 0o644)


def test_function_that_raises_keeps_last_good_version(make_project):
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n"})
    assert run_project(root).status == "success"
    write_files(root, {"pipelines/p.py": OK_PIPE.replace("return raw", "raise RuntimeError('boom in transform')"),
                       "data/a.csv": "x\n1\n2\n"})
    proc = cli(root, "run")
    assert proc.returncode == 1
    assert "boom in transform" in proc.stdout and "p.py:" in proc.stdout
    assert "headrace retry" in proc.stdout
    assert table_version(root, "bronze.a") == 0
    assert DeltaTable(str(root / "lake/bronze/a")).to_pyarrow_table().num_rows == 1


def test_pipeline_import_error(make_project):
    root = make_project({"pipelines/p.py": "import headrace as hr\nx = 1/0\n"})
    _assert_short_error(cli(root, "run"), "p.py:2", "ZeroDivisionError", code=2)


def test_unknown_select(make_project):
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n"})
    _assert_short_error(cli(root, "run", "--select", "bronze.b"), "bronze.b", "bronze.a", code=2)


def test_state_store_unreachable(make_project):
    toml = BASE_TOML.replace('state = "sqlite:///.headrace/state.db"',
                             'state = "postgresql://postgres:secret@127.0.0.1:1/nowhere"')
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n"}, toml=toml)
    proc = cli(root, "run")
    _assert_short_error(proc, "127.0.0.1:1", code=1)
    assert "secret" not in proc.stderr
    assert not (root / "lake").exists()


def test_missing_env_var(make_project):
    toml = BASE_TOML.replace('state = "sqlite:///.headrace/state.db"', 'state = "${HR_TEST_UNSET_URL}"')
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n"}, toml=toml)
    _assert_short_error(cli(root, "run"), "HR_TEST_UNSET_URL", code=2)


def test_debug_shows_traceback(make_project):
    root = make_project({"pipelines/p.py": OK_PIPE, "data/a.csv": "x\n1\n"},
                        toml=BASE_TOML.replace("workers = 2", "workerz = 2"))
    proc = cli(root, "--debug", "run")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_partition_column_missing(make_project):
    pipe = OK_PIPE.replace('@hr.table("bronze.a", source=src)',
                           '@hr.table("bronze.a", source=src, write="overwrite_partitions", partition_by="day")')
    root = make_project({"pipelines/p.py": pipe, "data/a.csv": "x\n1\n"})
    r = run_project(root)
    assert r.status == "failed" and "['day']" in r.tasks[0].error and "x" in (r.tasks[0].hint or "")
