"""Write modes: how a table's new result becomes its next Delta version.

Every mode is idempotent under re-run; the lake's writer (``headrace.lake.writer``) holds the
mechanics. A mode is a frozen dataclass so it can be compared, hashed into a run fingerprint
and printed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from headrace.errors import DefinitionError


@dataclass(frozen=True, kw_only=True)
class Append:
    """Add the new rows. A re-run of the same input batch is a no-op (Delta app transaction)."""

    kind: ClassVar[str] = "append"


@dataclass(frozen=True, kw_only=True)
class Overwrite:
    """Replace the whole table with the new result in one commit."""

    kind: ClassVar[str] = "overwrite"


@dataclass(frozen=True, kw_only=True)
class OverwritePartitions:
    """Replace exactly the partitions present in the new result, in one atomic commit.

    Partitions absent from the new result are left untouched, so re-running one day's input
    rewrites only that day: the idempotent partition overwrite pattern.
    """

    kind: ClassVar[str] = "overwrite_partitions"


@dataclass(frozen=True, kw_only=True)
class Merge:
    """Upsert on key columns; rows matching ``delete_when`` (SQL over the new rows) are deleted.

    Example: ``Merge(keys=("customer_id",), delete_when="s.op = 'D'")`` where ``s`` is the new
    row and ``t`` the existing one.
    """

    kind: ClassVar[str] = "merge"
    keys: tuple[str, ...] = field(default=())
    delete_when: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.keys, str):
            object.__setattr__(self, "keys", (self.keys,))
        else:
            object.__setattr__(self, "keys", tuple(self.keys))
        if not self.keys:
            raise DefinitionError(
                "merge needs at least one key column",
                hint="write Merge(keys=['id']) or, in a model header, keys = ['id']",
            )


WriteMode = Append | Overwrite | OverwritePartitions | Merge

_MODES: dict[str, Callable[..., WriteMode]] = {
    Append.kind: Append,
    Overwrite.kind: Overwrite,
    OverwritePartitions.kind: OverwritePartitions,
    Merge.kind: Merge,
}


def write_mode_names() -> list[str]:
    return sorted(_MODES)


def write_mode_from_config(
    name: str | WriteMode, options: Mapping[str, Any] | None = None, *, where: str = ""
) -> WriteMode:
    """Build a write mode from its name and options (used by SQL headers and ``write="..."``)."""
    if not isinstance(name, str):
        return name
    factory = _MODES.get(name)
    if factory is None:
        from headrace.spec._names import did_you_mean

        raise DefinitionError(
            f"{where}unknown write mode {name!r}.{did_you_mean(name, _MODES)}",
            hint=f"valid write modes: {', '.join(write_mode_names())}",
        )
    opts = dict(options or {})
    if "keys" in opts and isinstance(opts["keys"], Sequence) and not isinstance(opts["keys"], str):
        opts["keys"] = tuple(opts["keys"])
    try:
        return factory(**opts)
    except TypeError as exc:
        raise DefinitionError(
            f"{where}invalid options for write mode {name!r}: {sorted(opts)}",
            hint="append/overwrite/overwrite_partitions take no options; merge takes keys and delete_when",
        ) from exc
