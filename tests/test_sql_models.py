"""SQL models: header parsing, naming, ref/source binding and the compiled query."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from headrace.errors import DefinitionError
from headrace.project.sql_models import name_from_path, parse_model, placeholder_for
from headrace.spec import Append, FileSource, Merge, Overwrite, OverwritePartitions, TableRef
from headrace.spec.builders import files

SOURCES = {"products_raw": files("data/products/*.csv", format="csv")}


def write_model(tmp_path: Path, rel: str, text: str) -> Path:
    path = tmp_path / "models" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def parse(tmp_path: Path, rel: str, text: str, sources=SOURCES):
    path = write_model(tmp_path, rel, text)
    return parse_model(path, models_dir=tmp_path / "models", sources=sources)


def run_compiled(query: str, views: dict[str, str]) -> list[tuple]:
    """Execute a compiled model with each placeholder bound to a tiny view."""
    con = duckdb.connect()
    for name, select in views.items():
        con.execute(f"create view {name} as {select}")
    return sorted(con.execute(query).fetchall())


# -- header -------------------------------------------------------------------------------


def test_defaults_without_header(tmp_path: Path) -> None:
    spec = parse(tmp_path, "silver/orders.sql", "select * from ref('bronze.orders')\n")
    assert spec.name == "silver.orders"
    assert spec.write == Overwrite()
    assert spec.partition_by == ()
    assert spec.tags == ()
    assert spec.retries is None
    assert spec.description is None
    assert spec.origin == f"{tmp_path / 'models/silver/orders.sql'}:1"
    assert spec.transform is not None
    assert spec.transform.path == str(tmp_path / "models/silver/orders.sql")


def test_every_header_key(tmp_path: Path) -> None:
    text = """/* headrace
name = "gold.Totals"
write = "merge"
partition_by = ["order_date", "region"]
keys = ["order_id"]
delete_when = "s.op = 'D'"
retries = 3
description = "daily totals"
tags = ["daily", "finance"]
*/
select 1 as order_id
"""
    spec = parse(tmp_path, "whatever.sql", text)
    assert spec.name == "gold.totals"
    assert spec.write == Merge(keys=("order_id",), delete_when="s.op = 'D'")
    assert spec.partition_by == ("order_date", "region")
    assert spec.retries == 3
    assert spec.description == "daily totals"
    assert spec.tags == ("daily", "finance")
    assert spec.origin.endswith("whatever.sql:11")
    assert spec.transform is not None
    assert spec.transform.sql == text


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("append", Append()),
        ("overwrite", Overwrite()),
        ("overwrite_partitions", OverwritePartitions()),
    ],
)
def test_write_modes(tmp_path: Path, mode: str, expected: object) -> None:
    spec = parse(tmp_path, "a/b.sql", f'/* headrace\nwrite = "{mode}"\n*/\nselect 1')
    assert spec.write == expected


def test_string_partition_by_and_tags(tmp_path: Path) -> None:
    text = '/* headrace partition_by = "day"\ntags = "daily" */ select 1 as day'
    spec = parse(tmp_path, "a/b.sql", text)
    assert spec.partition_by == ("day",)
    assert spec.tags == ("daily",)


def test_unknown_header_key_names_line_and_suggests(tmp_path: Path) -> None:
    text = '/* headrace\nwrite = "append"\npartiton_by = ["d"]\n*/\nselect 1'
    with pytest.raises(DefinitionError) as info:
        parse(tmp_path, "a/b.sql", text)
    err = info.value
    assert "b.sql:3" in err.message
    assert "'partiton_by'" in err.message
    assert "Did you mean 'partition_by'?" in err.message
    assert err.hint is not None and "partition_by" in err.hint and "delete_when" in err.hint
    assert err.line == 3


def test_toml_syntax_error_has_file_line(tmp_path: Path) -> None:
    text = '\n/* headrace\nwrite = "append"\nretries = = 2\n*/\nselect 1'
    with pytest.raises(DefinitionError) as info:
        parse(tmp_path, "a/b.sql", text)
    assert "b.sql:4" in info.value.message
    assert info.value.line == 4


def test_unknown_write_mode(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"b.sql:2: unknown write mode 'apend'.*'append'"):
        parse(tmp_path, "a/b.sql", '/* headrace\nwrite = "apend"\n*/\nselect 1')


def test_keys_need_merge(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="invalid options"):
        parse(tmp_path, "a/b.sql", '/* headrace\nkeys = ["id"]\n*/\nselect 1 as id')


def test_wrong_types_in_header(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"b.sql:3: retries must be an integer"):
        parse(tmp_path, "a/b.sql", '/* headrace\nwrite = "append"\nretries = "3"\n*/\nselect 1')
    with pytest.raises(DefinitionError, match=r"tags must be a string or a list"):
        parse(tmp_path, "a/b.sql", "/* headrace\ntags = [1]\n*/\nselect 1")


def test_unclosed_header(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="never closed"):
        parse(tmp_path, "a/b.sql", '/* headrace\nwrite = "append"\nselect 1')


def test_ordinary_leading_comment_is_not_a_header(tmp_path: Path) -> None:
    spec = parse(tmp_path, "a/b.sql", "/* just notes */\nselect 1 as x")
    assert spec.write == Overwrite()
    assert spec.origin.endswith(":2")


# -- naming -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "name"),
    [("silver/orders.sql", "silver.orders"), ("x.sql", "main.x"), ("a/b/c.sql", "a.b_c")],
)
def test_name_from_path(tmp_path: Path, rel: str, name: str) -> None:
    models = tmp_path / "models"
    assert name_from_path(models / rel, models) == name
    assert parse(tmp_path, rel, "select 1").name == name


def test_invalid_name_from_path(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="invalid table name"):
        parse(tmp_path, "silver/my-orders.sql", "select 1")


def test_placeholder_names() -> None:
    assert placeholder_for("ref", "bronze.orders") == "ref__bronze__orders"
    assert placeholder_for("source", "products_raw") == "src__products_raw"


# -- references and the compiled query ----------------------------------------------------

ORDERS = "select * from (values (1, 10, 100), (2, 20, 200), (3, 10, 300)) t(order_id, customer_id, product_id)"
CUSTOMERS = "select * from (values (10, 'NL'), (20, 'DE')) t(customer_id, country)"
PRODUCTS = "select * from (values (100, 'pen'), (200, 'ink')) t(id, label)"


def test_refs_sources_and_compiled_sql_runs(tmp_path: Path) -> None:
    text = """/* headrace
write = "overwrite_partitions"
partition_by = "country"
*/
select o.order_id, c.country, p.label
from ref('bronze.orders') as o
join ref('bronze.customers') c using (customer_id)
left join source('products_raw') p on p.id = o.product_id
"""
    spec = parse(tmp_path, "silver/orders.sql", text)
    assert dict(spec.inputs) == {
        "ref__bronze__orders": TableRef("bronze.orders"),
        "ref__bronze__customers": TableRef("bronze.customers"),
        "src__products_raw": SOURCES["products_raw"].named("products_raw"),
    }
    source = spec.inputs["src__products_raw"]
    assert isinstance(source, FileSource) and source.name == "products_raw"
    assert spec.origin.endswith("orders.sql:5")
    assert spec.transform is not None
    query = spec.transform.query
    assert "ref(" not in query.lower() and "source(" not in query.lower()
    assert "AS o" in query and "AS c" in query and "AS p" in query
    rows = run_compiled(
        query,
        {
            "ref__bronze__orders": ORDERS,
            "ref__bronze__customers": CUSTOMERS,
            "src__products_raw": PRODUCTS,
        },
    )
    assert rows == [(1, "NL", "pen"), (2, "DE", "ink"), (3, "NL", None)]


def test_refs_in_cte_subquery_and_repeated(tmp_path: Path) -> None:
    text = """-- leading comment
with big as (select * from ref('bronze.orders') where order_id > 1)
select b.order_id
from big b
where b.customer_id in (select customer_id from ref('bronze.customers') where country = 'NL')
  and b.order_id in (select order_id from REF('bronze.orders'))
"""
    spec = parse(tmp_path, "silver/big.sql", text)
    assert set(spec.inputs) == {"ref__bronze__orders", "ref__bronze__customers"}
    assert spec.upstream_tables() == ["bronze.customers", "bronze.orders"]
    assert spec.origin.endswith("big.sql:2")
    assert spec.transform is not None
    rows = run_compiled(
        spec.transform.query,
        {"ref__bronze__orders": ORDERS, "ref__bronze__customers": CUSTOMERS},
    )
    assert rows == [(3,)]


def test_ref_text_in_strings_and_comments_is_ignored(tmp_path: Path) -> None:
    text = "select 'ref(''x.y'')' as s -- source('nope')\nfrom ref('a.b')"
    spec = parse(tmp_path, "a/c.sql", text)
    assert list(spec.inputs) == ["ref__a__b"]


def test_union_query_is_accepted(tmp_path: Path) -> None:
    spec = parse(tmp_path, "a/u.sql", "select 1 as x from ref('a.b') union all select 2")
    assert spec.transform is not None
    assert run_compiled(spec.transform.query, {"ref__a__b": "select 1"}) == [(1,), (2,)]


def test_ref_argument_must_be_one_string(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"c.sql:2: ref\(\) takes one quoted name"):
        parse(tmp_path, "a/c.sql", "select *\nfrom ref(bronze.orders)")
    with pytest.raises(DefinitionError, match=r"takes one quoted name"):
        parse(tmp_path, "a/c.sql", "select * from ref('a', 'b')")


def test_ref_outside_table_position(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"only stand where a table does"):
        parse(tmp_path, "a/c.sql", "select ref('a.b') from t")


def test_unknown_source_with_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError) as info:
        parse(tmp_path, "a/c.sql", "select *\n\nfrom source('product_raw')")
    err = info.value
    assert "c.sql:3" in err.message
    assert "unknown source 'product_raw'" in err.message
    assert "Did you mean 'products_raw'?" in err.message
    assert err.line == 3


def test_parse_error_has_line_and_column(tmp_path: Path) -> None:
    text = "/* headrace\nwrite = 'append'\n*/\nselect a,\nfrom where x"
    with pytest.raises(DefinitionError) as info:
        parse(tmp_path, "a/c.sql", text)
    err = info.value
    assert err.line == 5
    assert "c.sql:5:" in err.message
    assert "cannot parse SQL" in err.message
    assert "<Token" not in err.message
    assert len(err.message.splitlines()) <= 2


def test_parse_error_column_on_the_header_closing_line(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"c\.sql:2:\d+: cannot parse") as info:
        parse(tmp_path, "a/c.sql", '/* headrace\nwrite = "append" */ select (1')
    column = int(info.value.message.split(":")[2])
    assert column > len('write = "append" */')


def test_unterminated_string(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"c.sql:3: cannot read the SQL") as info:
        parse(tmp_path, "a/c.sql", "select 1\nfrom t\nwhere x = 'abc\n")
    assert info.value.line == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("delete from x", "must be a SELECT query, found a DELETE"),
        ("create table x as select 1", "must be a SELECT query"),
        ("select 1; select 2", "exactly one statement, found 2"),
        ("-- nothing here\n", "no SQL statement"),
    ],
)
def test_statement_shape(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        parse(tmp_path, "a/c.sql", text)


def test_trailing_semicolon_is_fine(tmp_path: Path) -> None:
    spec = parse(tmp_path, "a/c.sql", "select 1 as x;\n-- end\n")
    assert spec.transform is not None
    assert run_compiled(spec.transform.query, {}) == [(1,)]
