"""The table DAG: validation, ordering, selection and rendering."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.errors import DefinitionError, SelectionError
from headrace.project.dag import Dag
from headrace.spec import Merge, TableRef, TableSpec
from headrace.spec.builders import files


def spec(name: str, *ups: str, tags: tuple[str, ...] = (), **extra: object) -> TableSpec:
    inputs = {f"i{n}": TableRef(u) for n, u in enumerate(ups)}
    inputs.update(extra)  # type: ignore[arg-type]
    return TableSpec(name=name, inputs=inputs, transform=None, tags=tags, origin=f"p/{name}.py:7")


def dag(*specs: TableSpec) -> Dag:
    return Dag.build({s.name: s for s in specs})


@pytest.fixture
def shop() -> Dag:
    """bronze.orders, bronze.customers -> silver.orders -> gold.sales; gold.kpis <- customers."""
    return dag(
        spec("bronze.orders", tags=("daily",), raw=files("data/orders/*.ndjson", format="ndjson")),
        spec("bronze.customers", raw=files("data/customers.csv", format="csv")),
        spec("silver.orders", "bronze.orders", "bronze.customers", tags=("daily",)),
        spec("gold.sales", "silver.orders"),
        spec("gold.kpis", "bronze.customers"),
    )


# -- order and navigation -----------------------------------------------------------------


def test_order_is_topological_with_name_ties(shop: Dag) -> None:
    assert shop.order() == [
        "bronze.customers",
        "bronze.orders",
        "gold.kpis",
        "silver.orders",
        "gold.sales",
    ]


def test_navigation(shop: Dag) -> None:
    assert shop.parents("silver.orders") == ["bronze.customers", "bronze.orders"]
    assert shop.children("bronze.customers") == ["gold.kpis", "silver.orders"]
    assert shop.ancestors("gold.sales") == {"silver.orders", "bronze.orders", "bronze.customers"}
    assert shop.descendants("bronze.orders") == {"silver.orders", "gold.sales"}
    assert shop.ancestors("bronze.orders") == set()
    with pytest.raises(SelectionError, match=r"Did you mean 'gold\.sales'"):
        shop.parents("gold.sale")


def test_diamond_parent_counted_once() -> None:
    d = dag(spec("a"), spec("b", "a", "a"), spec("c", "a", "b"))
    assert d.order() == ["a", "b", "c"]


# -- validation ---------------------------------------------------------------------------


def test_unknown_ref_names_table_origin_and_suggestion() -> None:
    with pytest.raises(DefinitionError) as info:
        dag(spec("bronze.orders"), spec("silver.orders", "bronze.order"))
    message = info.value.message
    assert "'silver.orders'" in message
    assert "p/silver.orders.py:7" in message
    assert "unknown table 'bronze.order'" in message
    assert "Did you mean 'bronze.orders'?" in message
    assert info.value.table == "silver.orders"


def test_self_reference() -> None:
    with pytest.raises(DefinitionError, match=r"'a\.x' .* reads itself"):
        dag(spec("a.x", "a.x"))


def test_cycle_path_and_hint() -> None:
    with pytest.raises(DefinitionError) as info:
        dag(spec("a", "c"), spec("b", "a"), spec("c", "b"), spec("d", "c"), spec("z"))
    err = info.value
    assert "a -> b -> c -> a" in err.message
    assert err.hint == "remove one of these references"


def test_cycle_downstream_of_a_cycle_is_reported_as_the_cycle() -> None:
    with pytest.raises(DefinitionError, match=r"cycle: m -> n -> m \("):
        dag(spec("a", "n"), spec("m", "n"), spec("n", "m"))


# -- selection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exprs", "expected"),
    [
        ([], ["bronze.customers", "bronze.orders", "gold.kpis", "silver.orders", "gold.sales"]),
        (["silver.orders"], ["silver.orders"]),
        (["gold.*"], ["gold.kpis", "gold.sales"]),
        (["+silver.orders"], ["bronze.customers", "bronze.orders", "silver.orders"]),
        (["bronze.orders+"], ["bronze.orders", "silver.orders", "gold.sales"]),
        (["+silver.orders+"], ["bronze.customers", "bronze.orders", "silver.orders", "gold.sales"]),
        (["tag:daily"], ["bronze.orders", "silver.orders"]),
        (["gold.kpis, gold.sales"], ["gold.kpis", "gold.sales"]),
        (["gold.sales bronze.orders", "gold.sales"], ["bronze.orders", "gold.sales"]),
        (["tag:daily+"], ["bronze.orders", "silver.orders", "gold.sales"]),
        (
            ["+gold.*"],
            ["bronze.customers", "bronze.orders", "gold.kpis", "silver.orders", "gold.sales"],
        ),
        (["  "], ["bronze.customers", "bronze.orders", "gold.kpis", "silver.orders", "gold.sales"]),
    ],
)
def test_select(shop: Dag, exprs: list[str], expected: list[str]) -> None:
    assert shop.select(exprs) == expected


@pytest.mark.parametrize(
    ("expr", "suggestion"),
    [
        ("silver.order", "silver.orders"),
        ("+silver.order+", "silver.orders"),
        ("tag:dialy", "tag:daily"),
        ("platinum.*", None),
    ],
)
def test_select_nothing_is_an_error(shop: Dag, expr: str, suggestion: str | None) -> None:
    with pytest.raises(SelectionError) as info:
        shop.select(["gold.sales", expr])
    assert repr(expr) in info.value.message
    if suggestion:
        assert f"Did you mean {suggestion!r}?" in info.value.message


# -- render -------------------------------------------------------------------------------


def test_render(shop: Dag) -> None:
    lines = shop.render().splitlines()
    assert [line.split()[0] for line in lines] == shop.order()
    by_name = {line.split()[0]: line for line in lines}
    assert by_name["silver.orders"].endswith("[overwrite]  <- bronze.customers, bronze.orders")
    assert "<- files:data/orders/*.ndjson" in by_name["bronze.orders"]
    assert shop.render(["gold.sales"]) == "gold.sales  [overwrite]  <- silver.orders"


def test_render_write_mode() -> None:
    s = TableSpec(name="a.b", inputs={}, transform=None, write=Merge(keys=("id",)))
    assert Dag.build({"a.b": s}).render() == "a.b  [merge]"


# -- properties ---------------------------------------------------------------------------


@st.composite
def acyclic(draw: st.DrawFn) -> dict[str, list[str]]:
    """A random DAG: each node may only read nodes with a smaller index."""
    size = draw(st.integers(min_value=1, max_value=12))
    names = [f"t{draw(st.integers(0, 99)):02d}_{i}" for i in range(size)]
    return {
        name: draw(st.lists(st.sampled_from(names[:i]), max_size=3)) if i else []
        for i, name in enumerate(names)
    }


def build(graph: dict[str, list[str]]) -> Dag:
    return dag(*(spec(name, *ups) for name, ups in graph.items()))


@settings(max_examples=60, deadline=None)
@given(acyclic())
def test_order_respects_every_edge(graph: dict[str, list[str]]) -> None:
    order = build(graph).order()
    assert sorted(order) == sorted(graph)
    position = {name: i for i, name in enumerate(order)}
    for name, ups in graph.items():
        assert all(position[up] < position[name] for up in ups)


@settings(max_examples=60, deadline=None)
@given(acyclic(), st.data())
def test_back_edge_gives_a_real_cycle(graph: dict[str, list[str]], data: st.DataObject) -> None:
    names = list(graph)
    low = data.draw(st.integers(0, len(names) - 1))
    high = data.draw(st.integers(low, len(names) - 1))
    # Make names[high] reachable from names[low] (a chain), then let names[low] read names[high].
    for i in range(low + 1, high + 1):
        graph[names[i]] = [*graph[names[i]], names[i - 1]]
    graph[names[low]] = [*graph[names[low]], names[high]]
    with pytest.raises(DefinitionError) as info:
        build(graph)
    found = re.search(r"(?:cycle: (.*?) \(|table '(.*?)' .* reads itself)", info.value.message)
    assert found is not None
    if found.group(2):
        assert low == high
        return
    path = found.group(1).split(" -> ")
    assert path[0] == path[-1] and len(set(path[:-1])) == len(path) - 1
    for up, down in itertools.pairwise(path):
        assert up in graph[down], f"{down} does not read {up}"
