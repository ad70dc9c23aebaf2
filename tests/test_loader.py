"""The project loader: importing pipeline files, collecting specs, SQL models and the DAG."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from headrace.errors import DefinitionError
from headrace.project.loader import Project, load_project
from headrace.spec import FileSource, SqlTransform, TableRef


def make_project(root: Path, files: dict[str, str]) -> SimpleNamespace:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return SimpleNamespace(root=root, pipelines_dir=root / "pipelines", models_dir=root / "models")


BRONZE = """\
    import headrace.spec.builders as hr

    orders_raw = hr.files("data/orders/*.ndjson", format="ndjson")
    same_orders = orders_raw
    customers_src = hr.files("data/customers.csv", format="csv", name="customers_raw")

    @hr.table("bronze.orders", source=orders_raw, write="append")
    def orders(rows):
        return rows

    @hr.table("bronze.customers", source=customers_src)
    def customers(rows):
        return rows
"""

EVENTS = """\
    import headrace.spec.builders as hr
    from helpers import LABEL

    @hr.table("bronze.events", source=hr.files("data/events/*.csv", format="csv"), tags=[LABEL])
    def events(raw):
        return raw
"""

HELPERS = 'LABEL = "v1"\n'

SILVER_SQL = """\
    /* headrace
    write = "merge"
    keys = ["order_id"]
    */
    select o.*, c.country
    from ref('bronze.orders') o
    join ref('bronze.customers') c using (customer_id)
    left join source('customers_raw') r on r.id = o.customer_id
"""

GOLD_SQL = "select count(*) as n from ref('silver.orders')\n"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    config = make_project(
        tmp_path,
        {
            "pipelines/bronze.py": BRONZE,
            "pipelines/events.py": EVENTS,
            "pipelines/_private.py": "raise RuntimeError('never imported')",
            "helpers.py": HELPERS,
            "models/silver/orders.sql": SILVER_SQL,
            "models/gold.sql": GOLD_SQL,
        },
    )
    return load_project(config)


def test_small_project(project: Project, tmp_path: Path) -> None:
    assert set(project.tables) == {
        "bronze.orders",
        "bronze.customers",
        "bronze.events",
        "silver.orders",
        "main.gold",
    }
    assert project.dag.order()[-2:] == ["silver.orders", "main.gold"]
    assert project.root == tmp_path
    assert set(project.sources) == {"orders_raw", "customers_raw", "bronze.events.raw"}
    assert project.tables["bronze.events"].tags == ("v1",)
    silver = project.tables["silver.orders"]
    assert isinstance(silver.transform, SqlTransform)
    assert silver.inputs["ref__bronze__orders"] == TableRef("bronze.orders")
    assert silver.inputs["src__customers_raw"] == project.sources["customers_raw"]


def test_table_inputs_hold_named_sources(project: Project) -> None:
    orders = project.tables["bronze.orders"].inputs["rows"]
    assert isinstance(orders, FileSource) and orders.name == "orders_raw"
    events = project.tables["bronze.events"].inputs["raw"]
    assert isinstance(events, FileSource) and events.name == "bronze.events.raw"


def test_no_project_modules_left_behind(project: Project, tmp_path: Path) -> None:
    assert "helpers" not in sys.modules
    assert str(tmp_path) not in sys.path
    mods = [n for n, m in sys.modules.items() if n.startswith("headrace_project_")]
    assert any(n.endswith(".bronze") for n in mods)


def test_reload_in_one_process_sees_new_code(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {"pipelines/events.py": EVENTS, "helpers.py": HELPERS, "models/m.sql": "select 1"},
    )
    first = load_project(config)
    (tmp_path / "helpers.py").write_text('LABEL = "v2"\n')
    (tmp_path / "pipelines/events.py").write_text(
        textwrap.dedent(EVENTS).replace("bronze.events", "bronze.events2")
    )
    second = load_project(config)
    assert first.tables["bronze.events"].tags == ("v1",)
    assert set(second.tables) == {"bronze.events2", "main.m"}
    assert second.tables["bronze.events2"].tags == ("v2",)


def test_relative_imports_and_subfolders(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {
            "pipelines/_shared.py": 'import headrace.spec.builders as hr\nSRC = hr.files("d/*.csv", format="csv")\n',
            "pipelines/sub/a.py": """\
                import headrace.spec.builders as hr
                from .._shared import SRC as shared_src

                @hr.table("sub.a", source=shared_src)
                def a(x):
                    return x
            """,
        },
    )
    project = load_project(config)
    assert set(project.sources) == {"shared_src"}
    assert project.tables["sub.a"].inputs["x"] == project.sources["shared_src"]


def test_plain_import_of_another_pipeline_is_not_a_duplicate(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {
            "pipelines/bronze.py": BRONZE,
            "pipelines/silver.py": """\
                import headrace.spec.builders as hr
                from bronze import orders, orders_raw

                @hr.table("silver.orders", inputs={"o": "bronze.orders"})
                def silver(o):
                    return o
            """,
        },
    )
    project = load_project(config)
    assert project.dag.parents("silver.orders") == ["bronze.orders"]
    assert "bronze" not in sys.modules


def test_missing_folders_are_fine_but_no_tables_is_an_error(tmp_path: Path) -> None:
    config = make_project(tmp_path, {"models/only.sql": "select 1 as x"})
    assert list(load_project(config).tables) == ["main.only"]
    empty = make_project(tmp_path / "empty", {"pipelines/nothing.py": "X = 1\n"})
    with pytest.raises(DefinitionError, match="defines no tables") as info:
        load_project(empty)
    assert info.value.hint is not None and "pipelines" in info.value.hint


def test_duplicate_table_across_python_and_sql(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {"pipelines/bronze.py": BRONZE, "models/bronze/orders.sql": "select 1"},
    )
    with pytest.raises(DefinitionError) as info:
        load_project(config)
    message = info.value.message
    assert "'bronze.orders' is defined twice" in message
    assert "bronze.py:7" in message and "orders.sql:1" in message


def test_duplicate_table_across_python_files(tmp_path: Path) -> None:
    config = make_project(tmp_path, {"pipelines/a.py": BRONZE, "pipelines/b.py": BRONZE})
    with pytest.raises(DefinitionError, match=r"defined twice: .*a\.py:7 and .*b\.py:7"):
        load_project(config)


def test_duplicate_sql_models(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {
            "models/silver/x.sql": "select 1",
            "models/y.sql": '/* headrace\nname = "silver.x"\n*/\nselect 2',
        },
    )
    with pytest.raises(DefinitionError, match=r"'silver.x' is defined twice"):
        load_project(config)


def test_two_sources_with_one_name(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {
            "pipelines/a.py": 'import headrace.spec.builders as hr\nraw = hr.files("a/*.csv", format="csv")\n',
            "pipelines/b.py": 'import headrace.spec.builders as hr\nraw = hr.files("b/*.csv", format="csv")\n',
            "models/m.sql": "select 1",
        },
    )
    with pytest.raises(DefinitionError) as info:
        load_project(config)
    assert "two different sources are named 'raw'" in info.value.message
    assert "a.py" in info.value.message and "b.py" in info.value.message


def test_same_source_declared_equally_twice_is_fine(tmp_path: Path) -> None:
    text = 'import headrace.spec.builders as hr\nraw = hr.files("a/*.csv", format="csv")\n'
    config = make_project(
        tmp_path, {"pipelines/a.py": text, "pipelines/b.py": text, "models/m.sql": "select 1"}
    )
    assert list(load_project(config).sources) == ["raw"]


def test_import_error_has_file_and_line(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {"pipelines/bad.py": "import os\n\nvalue = {}['missing']\n", "models/m.sql": "select 1"},
    )
    with pytest.raises(DefinitionError) as info:
        load_project(config)
    err = info.value
    assert err.message == f"{tmp_path / 'pipelines/bad.py'}:3: KeyError: 'missing'"
    assert err.line == 3
    assert not [n for n in sys.modules if n.startswith("headrace_project_") and n.endswith(".bad")]


def test_error_inside_a_helper_points_at_the_pipeline_line(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {
            "broken.py": "def f():\n    raise ValueError('bad value\\nsecond line')\n",
            "pipelines/p.py": "import broken\n\n\nbroken.f()\n",
        },
    )
    with pytest.raises(DefinitionError) as info:
        load_project(config)
    assert info.value.message.endswith("p.py:4: ValueError: bad value")


def test_definition_error_in_pipeline_keeps_its_hint(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {
            "pipelines/p.py": 'import headrace.spec.builders as hr\n\nx = hr.files("a", format="cvs")\n'
        },
    )
    with pytest.raises(DefinitionError, match=r"p\.py:3: unknown file format 'cvs'") as info:
        load_project(config)
    assert info.value.hint is not None and "csv" in info.value.hint


def test_syntax_error_has_line(tmp_path: Path) -> None:
    config = make_project(tmp_path, {"pipelines/syn.py": "x = 1\ny = (\nz = 3 +\n"})
    with pytest.raises(DefinitionError, match=r"syn\.py:\d+: SyntaxError: ") as info:
        load_project(config)
    assert info.value.line in (2, 3, 4)
    assert info.value.path == str(tmp_path / "pipelines/syn.py")


def test_sql_model_errors_propagate(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {"pipelines/bronze.py": BRONZE, "models/s.sql": "select * from source('orders_rw')"},
    )
    with pytest.raises(DefinitionError, match="Did you mean 'orders_raw'"):
        load_project(config)


def test_unknown_ref_in_model_is_caught_by_the_dag(tmp_path: Path) -> None:
    config = make_project(
        tmp_path,
        {"pipelines/bronze.py": BRONZE, "models/s/x.sql": "select *\nfrom ref('bronze.order')"},
    )
    with pytest.raises(
        DefinitionError, match=r"'s.x' \(.*x\.sql:1\).*Did you mean 'bronze.orders'"
    ):
        load_project(config)
