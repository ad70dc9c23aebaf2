"""`headrace export airflow`: the generated DAG file parses, and its tasks, commands and
dependencies mirror the project DAG."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path
from typing import Any

import pytest

import headrace.project.airflow as airflow_module
from headrace.project.airflow import render_airflow_dag, task_id_for

from conftest import BASE_TOML, cli, open_ws

PIPE = '''
import headrace as hr
src = hr.files("data/a.csv", format="csv")

@hr.table("bronze.a", source=src)
def a(raw):
    return raw

@hr.table("bronze.side", source=src)
def side(raw):
    return raw

@hr.table("silver.b", inputs={"a": "bronze.a"})
def b(a):
    return a

@hr.table("gold.c", inputs={"b": "silver.b", "s": "bronze.side"})
def c(b, s):
    return "select * from b"

@hr.table("gold.other", inputs={"a": "bronze.a"})
def other(a):
    return a
'''
FILES = {"pipelines/p.py": PIPE, "data/a.csv": "id\n1\n"}
SCHEDULES = '\n[schedules.daily]\ncron = "0 6 * * *"\ntimezone = "Europe/Paris"\nselect = ["+gold.c"]\n'


def parse_dag(text: str) -> dict[str, Any]:
    """Tasks (task_id -> bash_command), `>>` edges by task id and the DAG(...) keywords."""
    tree = ast.parse(text)
    variables: dict[str, str] = {}
    commands: dict[str, str] = {}
    edges: set[tuple[str, str]] = set()
    dag_kwargs: dict[str, Any] = {}
    default_args: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            call = node.value
            if isinstance(call.func, ast.Name) and call.func.id == "BashOperator":
                kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
                variables[node.targets[0].id] = kw["task_id"]  # type: ignore[attr-defined]
                commands[kw["task_id"]] = kw["bash_command"]
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "default_args":
            default_args = {ast.literal_eval(k): v for k, v in zip(node.value.keys, node.value.values, strict=True)}  # type: ignore[attr-defined]
        if isinstance(node, ast.withitem) and isinstance(node.context_expr, ast.Call):
            for k in node.context_expr.keywords:
                try:
                    dag_kwargs[k.arg] = ast.literal_eval(k.value)  # type: ignore[index]
                except ValueError:
                    dag_kwargs[k.arg] = ast.unparse(k.value)  # type: ignore[index]
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.RShift):
            edges.add((variables[node.left.id], variables[node.right.id]))  # type: ignore[attr-defined]
    return {"commands": commands, "edges": edges, "dag": dag_kwargs, "default_args": default_args}


def test_export_all_tables(make_project, tmp_path: Path) -> None:
    root = make_project(FILES)
    target = tmp_path / "dags" / "hr.py"
    proc = cli(root, "export", "airflow", "--output", str(target))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {target} (5 tasks)" in proc.stdout
    dag = parse_dag(target.read_text())
    assert list(dag["commands"]) == ["bronze.a", "bronze.side", "gold.other", "silver.b", "gold.c"]
    for table, command in dag["commands"].items():
        assert shlex.split(command) == ["headrace", "--project", str(root.resolve()), "run", "--select", table]
    assert dag["edges"] == {("bronze.a", "silver.b"), ("silver.b", "gold.c"), ("bronze.side", "gold.c"),
                            ("bronze.a", "gold.other")}
    assert dag["dag"]["dag_id"] == "headrace_t" and dag["dag"]["schedule"] is None
    assert dag["dag"]["catchup"] is False and dag["dag"]["max_active_runs"] == 1
    assert ast.literal_eval(dag["default_args"]["retries"]) == 2  # [run] retries in BASE_TOML
    assert "tz='UTC'" in dag["dag"]["start_date"]


def test_export_a_schedule_uses_its_cron_selection_and_zone(make_project) -> None:
    root = make_project(FILES, toml=BASE_TOML + SCHEDULES)
    proc = cli(root, "export", "airflow", "--schedule", "daily", "--dag-id", "my dag",
               "--executable", "/opt/venv/bin/headrace")
    assert proc.returncode == 0, proc.stderr
    dag = parse_dag(proc.stdout)  # no --output: the file goes to stdout
    assert set(dag["commands"]) == {"bronze.a", "silver.b", "bronze.side", "gold.c"}
    assert dag["edges"] == {("bronze.a", "silver.b"), ("silver.b", "gold.c"), ("bronze.side", "gold.c")}
    assert dag["dag"]["schedule"] == "0 6 * * *" and dag["dag"]["dag_id"] == "my_dag"
    assert "tz='Europe/Paris'" in dag["dag"]["start_date"]
    assert all(c.startswith("/opt/venv/bin/headrace --project ") for c in dag["commands"].values())


def test_export_unknown_schedule_and_target(make_project) -> None:
    root = make_project(FILES, toml=BASE_TOML + SCHEDULES)
    proc = cli(root, "export", "airflow", "--schedule", "dayly")
    assert proc.returncode == 2 and "unknown schedule 'dayly'. Did you mean 'daily'?" in proc.stderr
    assert cli(root, "export", "dagster").returncode == 2


def test_render_is_pure_and_quotes_paths(make_project, tmp_path: Path) -> None:
    root = make_project(FILES, name="with space")
    ws = open_ws(root)
    try:
        text = render_airflow_dag(ws.project, dag_id="d", schedule="@daily", project_dir=root,
                                  tables=["bronze.a", "silver.b"], profile="prod", retries=4)
    finally:
        ws.close()
    dag = parse_dag(text)
    assert dag["edges"] == {("bronze.a", "silver.b")}
    assert shlex.split(dag["commands"]["silver.b"]) == [
        "headrace", "--project", str(root.resolve()), "--profile", "prod", "run", "--select", "silver.b"]
    assert dag["dag"]["schedule"] == "@daily"
    imports = [n for n in ast.walk(ast.parse(Path(airflow_module.__file__).read_text()))
               if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in imports for a in n.names] + [n.module or "" for n in imports if isinstance(n, ast.ImportFrom)]
    assert not any(name.startswith("airflow") for name in names)  # generating needs no Airflow


@pytest.mark.parametrize(("table", "task_id"), [("bronze.orders", "bronze.orders"), ("a b/c", "a_b_c")])
def test_task_ids(table: str, task_id: str) -> None:
    assert task_id_for(table) == task_id
