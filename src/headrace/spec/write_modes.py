"""Write modes: how a table's new result becomes its next Delta version.

Every mode is idempotent under re-run; the lake's writer (``headrace.delta.writer``) holds the
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


SCD2_COLUMNS: tuple[str, ...] = ("valid_from", "valid_to", "is_current", "row_hash")
"""The columns an SCD2 table adds to its input columns, in this order."""

SCD2_DELETES: tuple[str, ...] = ("close", "ignore")


@dataclass(frozen=True, kw_only=True)
class Scd2:
    """Slowly changing dimension, type 2: every change of a key's tracked columns is kept as
    a version with ``valid_from``/``valid_to`` (NULL while current), ``is_current`` and
    ``row_hash`` (the hash of the tracked columns).

    Each run's result is a snapshot of the dimension. A new key gets a current version; a key
    whose tracked columns changed gets its current version closed and a new one; a key absent
    from the snapshot is closed (``deletes="close"``) or kept (``deletes="ignore"``, for
    incremental feeds). ``track`` lists the columns whose changes make a version (``"all"``:
    every column but the key and ``updated_at``). ``updated_at`` names the column giving each
    row's version time (late rows are placed into history); without it a version starts at the
    run's time. Example: ``Scd2(key=["customer_id"], track=["email", "city"])``.
    """

    kind: ClassVar[str] = "scd2"
    key: tuple[str, ...] = field(default=())
    track: tuple[str, ...] | str = "all"
    updated_at: str | None = None
    deletes: str = "close"

    def __post_init__(self) -> None:
        key = _names(self.key, "key", 'Scd2(key=["customer_id"]) or, in a model header, key = ["customer_id"]')
        if not key:
            raise DefinitionError(
                "scd2 needs at least one key column",
                hint='write Scd2(key=["customer_id"]) or, in a model header, key = ["customer_id"]',
            )
        object.__setattr__(self, "key", key)
        track: tuple[str, ...] | str
        if isinstance(self.track, str) and self.track == "all":
            track = "all"
        else:
            track = _names(self.track, "track", 'track = "all" or track = ["email", "city"]')
            if not track:
                raise DefinitionError(
                    "scd2 track is empty",
                    hint='track = "all" versions every change; or list the columns, e.g. track = ["email"]',
                )
        object.__setattr__(self, "track", track)
        if self.updated_at is not None and (not isinstance(self.updated_at, str) or not self.updated_at):
            raise DefinitionError(
                f"scd2 updated_at must be a column name, got {self.updated_at!r}",
                hint='e.g. updated_at = "updated_at"; leave it out to version at the run\'s time',
            )
        if self.deletes not in SCD2_DELETES:
            raise DefinitionError(
                f"scd2 deletes must be one of {', '.join(SCD2_DELETES)}, got {self.deletes!r}",
                hint="'close' ends the version of a key missing from the snapshot; 'ignore' keeps it "
                     "(for feeds that carry only changed rows)",
            )
        named = [*key, *(track if isinstance(track, tuple) else ()), *([self.updated_at] if self.updated_at else [])]
        reserved = sorted({n for n in named if n in SCD2_COLUMNS})
        if reserved:
            raise DefinitionError(
                f"scd2 columns {reserved} are written by headrace and cannot be key, track or updated_at",
                hint=f"rename them in the transform; scd2 adds {', '.join(SCD2_COLUMNS)}",
            )
        if isinstance(track, tuple):
            both = sorted(set(track) & set(key))
            if both:
                raise DefinitionError(
                    f"scd2 key columns {both} are also in track",
                    hint="the key identifies a row's versions and is never tracked; remove it from track",
                )
            if self.updated_at in track:
                raise DefinitionError(
                    f"scd2 updated_at column {self.updated_at!r} is also in track",
                    hint="updated_at is the version's time, not a tracked value; remove it from track",
                )
        if self.updated_at in key:
            raise DefinitionError(
                f"scd2 updated_at column {self.updated_at!r} is also a key column",
                hint="the key names the entity; updated_at gives each version's time",
            )

    @property
    def keys(self) -> tuple[str, ...]:
        """The key columns (the name other write modes use, for checks and samples)."""
        return self.key


def _names(value: Any, what: str, example: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    try:
        names = tuple(items)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) and n for n in names):
        raise DefinitionError(f"scd2 {what} must be a column name or a list of them, got {value!r}",
                              hint=f"e.g. {example}")
    return names


WriteMode = Append | Overwrite | OverwritePartitions | Merge | Scd2

_MODES: dict[str, Callable[..., WriteMode]] = {
    Append.kind: Append,
    Overwrite.kind: Overwrite,
    OverwritePartitions.kind: OverwritePartitions,
    Merge.kind: Merge,
    Scd2.kind: Scd2,
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
    if name == Scd2.kind and "keys" in opts and "key" not in opts:
        opts["key"] = opts.pop("keys")  # hr.table(keys=...) and a header's keys = [...] name the key
    if "keys" in opts and isinstance(opts["keys"], Sequence) and not isinstance(opts["keys"], str):
        opts["keys"] = tuple(opts["keys"])
    try:
        return factory(**opts)
    except DefinitionError as exc:
        if not where:
            raise
        raise DefinitionError(f"{where}{exc.message}", hint=exc.hint) from None
    except TypeError as exc:
        raise DefinitionError(
            f"{where}invalid options for write mode {name!r}: {sorted(opts)}",
            hint="append/overwrite/overwrite_partitions take no options; merge takes keys and delete_when; "
                 "scd2 takes key, track, updated_at and deletes",
        ) from exc
