"""The table dependency graph: validation, deterministic order, selection and a text view.

Edges run from an upstream table to the tables that read it (``TableRef`` inputs). Sources
are leaves outside the graph. Everything is checked once, at build time, so the runner can
trust that every reference resolves and that there is no cycle.
"""

from __future__ import annotations

import fnmatch
import heapq
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from headrace.errors import DefinitionError, SelectionError
from headrace.spec._names import did_you_mean
from headrace.spec.tables import TableSpec

_SPLIT = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class Dag:
    """An immutable, validated graph of the project's tables."""

    tables: Mapping[str, TableSpec]
    _parents: Mapping[str, tuple[str, ...]]
    _children: Mapping[str, tuple[str, ...]]
    _order: tuple[str, ...]

    @classmethod
    def build(cls, tables: Mapping[str, TableSpec]) -> Dag:
        """Check references and cycles, then fix the topological order once."""
        parents = {name: tuple(_resolved_parents(spec, tables)) for name, spec in tables.items()}
        children: dict[str, list[str]] = {name: [] for name in tables}
        for name, ups in parents.items():
            for up in ups:
                children[up].append(name)
        order = _topological(parents, children)
        if len(order) < len(tables):
            cycle = _find_cycle(parents, set(tables) - set(order))
            raise _cycle_error(cycle, tables)
        return cls(
            tables=dict(tables),
            _parents=parents,
            _children={k: tuple(sorted(v)) for k, v in children.items()},
            _order=tuple(order),
        )

    # -- navigation -----------------------------------------------------------------------

    def order(self) -> list[str]:
        """All tables, upstream first; ties are broken by name so runs are reproducible."""
        return list(self._order)

    def parents(self, name: str) -> list[str]:
        return list(self._parents[self._known(name)])

    def children(self, name: str) -> list[str]:
        return list(self._children[self._known(name)])

    def ancestors(self, name: str) -> set[str]:
        return _reach(self._known(name), self._parents)

    def descendants(self, name: str) -> set[str]:
        return _reach(self._known(name), self._children)

    def _known(self, name: str) -> str:
        if name not in self.tables:
            raise SelectionError(
                f"unknown table {name!r}.{did_you_mean(name, self.tables)}",
                hint="run `headrace dag` to list the tables",
                table=name,
            )
        return name

    # -- selection ------------------------------------------------------------------------

    def select(self, exprs: Sequence[str]) -> list[str]:
        """Resolve ``--select`` expressions into tables, in topological order.

        Expressions are unioned: ``name``, a glob (``silver.*``), ``+name`` (with
        ancestors), ``name+`` (with descendants), ``+name+`` and ``tag:x``. No expression
        means every table. An expression that matches nothing is an error, because a typo
        silently running nothing is worse than stopping.
        """
        terms = [t for e in exprs for t in _SPLIT.split(e.strip()) if t]
        if not terms:
            return self.order()
        chosen: set[str] = set()
        for term in terms:
            chosen |= self._select_one(term)
        return [name for name in self._order if name in chosen]

    def _select_one(self, term: str) -> set[str]:
        up, down = term.startswith("+"), term.endswith("+") and len(term) > 1
        core = term[1 if up else 0 : len(term) - 1 if down else len(term)]
        base = self._match(core, term)
        found = set(base)
        for name in base:
            if up:
                found |= self.ancestors(name)
            if down:
                found |= self.descendants(name)
        return found

    def _match(self, core: str, term: str) -> set[str]:
        if core.startswith("tag:"):
            tag = core[4:]
            found = {n for n, spec in self.tables.items() if tag in spec.tags}
            known = sorted({f"tag:{t}" for spec in self.tables.values() for t in spec.tags})
        elif any(ch in core for ch in "*?["):
            found = set(fnmatch.filter(self.tables, core))
            known = sorted(self.tables)
        else:
            found = {core} if core in self.tables else set()
            known = sorted(self.tables)
        if not found:
            raise SelectionError(
                f"selection {term!r} matches no table.{did_you_mean(core, known)}",
                hint="use a table name, a glob like 'silver.*', +name, name+ or tag:x; "
                "`headrace dag` lists the tables",
            )
        return found

    # -- rendering ------------------------------------------------------------------------

    def render(self, names: Sequence[str] | None = None) -> str:
        """One plain line per table, upstream first: name, write mode, then direct inputs."""
        wanted = set(self._order if names is None else names)
        rows = [name for name in self._order if name in wanted]
        if not rows:
            return "(no tables)"
        width = max(len(name) for name in rows)
        return "\n".join(self._render_row(name, width) for name in rows)

    def _render_row(self, name: str, width: int) -> str:
        spec = self.tables[name]
        inputs = list(self._parents[name])
        inputs += sorted(f"{s.kind}:{getattr(s, 'path', None) or s.describe()}" for s in spec.sources().values())
        arrow = f"  <- {', '.join(inputs)}" if inputs else ""
        return f"{name:<{width}}  [{spec.write.kind}]{arrow}"


# -- graph helpers ------------------------------------------------------------------------


def _resolved_parents(spec: TableSpec, tables: Mapping[str, TableSpec]) -> list[str]:
    """The table's upstream names, after checking each one exists and is not itself."""
    ups = spec.upstream_tables()
    for up in ups:
        if up == spec.name:
            raise DefinitionError(
                f"table {spec.name!r} ({spec.origin}) reads itself",
                hint="a table cannot be its own input; read the upstream table instead",
                table=spec.name,
            )
        if up not in tables:
            known = [n for n in tables if n != spec.name]
            raise DefinitionError(
                f"table {spec.name!r} ({spec.origin}) references unknown table {up!r}."
                f"{did_you_mean(up, known)}",
                hint="check the name in ref(...)/inputs, or define that table in pipelines/ or models/",
                table=spec.name,
            )
    return ups


def _topological(
    parents: Mapping[str, Sequence[str]], children: Mapping[str, Sequence[str]]
) -> list[str]:
    """Kahn's algorithm with a heap, so among ready tables the smallest name goes first."""
    waiting = {name: len(set(ups)) for name, ups in parents.items()}
    ready = [name for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for child in set(children[name]):
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    return order


def _find_cycle(parents: Mapping[str, Sequence[str]], stuck: set[str]) -> list[str]:
    """Return one cycle among the tables Kahn's algorithm could not order.

    Every stuck table has a stuck parent, so walking parents from any stuck table must
    revisit a table; the walk from that point is a cycle. It is reversed to read in data-flow
    order (``a -> b`` means b reads a) and rotated to start at its smallest name.
    """
    node = min(stuck)
    seen: dict[str, int] = {}
    path: list[str] = []
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(p for p in parents[node] if p in stuck)
    cycle = path[seen[node] :]
    cycle.reverse()
    first = cycle.index(min(cycle))
    return cycle[first:] + cycle[:first]


def _cycle_error(cycle: list[str], tables: Mapping[str, TableSpec]) -> DefinitionError:
    shown = " -> ".join([*cycle, cycle[0]])
    origins = "; ".join(f"{n} at {tables[n].origin}" for n in cycle)
    return DefinitionError(
        f"tables form a cycle: {shown} ({origins})",
        hint="remove one of these references",
        table=cycle[0],
    )


def _reach(start: str, edges: Mapping[str, Iterable[str]]) -> set[str]:
    """Everything reachable from ``start`` along ``edges``, excluding ``start`` itself."""
    found: set[str] = set()
    stack = list(edges[start])
    while stack:
        node = stack.pop()
        if node not in found:
            found.add(node)
            stack.extend(edges[node])
    return found
