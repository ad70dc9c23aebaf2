"""Input batches: the identity of what a run consumed.

A batch id is a content hash of the inputs (file set + content, or an upstream table version).
It keys Delta app transactions for append, and the run fingerprint that makes every write mode
a no-op when nothing changed. :class:`FileState` records, per input file, what a non-append
table has processed, so a run can work on new and changed files only.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import xxhash


@dataclass(frozen=True)
class FileEntry:
    path: Path
    size: int
    mtime_ns: int
    digest: str


@dataclass(frozen=True)
class InputBatch:
    """What one input of one task consumed: a description and its stable id."""

    kind: str
    description: str
    batch_id: str
    files: tuple[FileEntry, ...] = ()
    table_version: int | None = None
    rows: int | None = None  # known up front for database reads


def file_digest(path: Path) -> str:
    """xxh3-128 of the file's bytes. Why content and not size+mtime: those can repeat across
    different contents. Why xxh3: it reads at memory speed (about 25x blake2b), so fingerprinting
    a batch costs a few milliseconds next to parsing it; it identifies content, it is not a
    security boundary."""
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return xxhash.xxh3_128(b"").hexdigest()
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:  # no copy into Python
            return xxhash.xxh3_128(view).hexdigest()


def combine(parts: Iterable[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()


# ---- what a table has processed, per file -------------------------------------------------

Partition = tuple[str | None, ...]
"""A partition's values as text (``None`` for NULL), in the table's ``partition_by`` order."""

#: A file modified this close to the moment it was listed may change again within the same
#: mtime tick (coarse file systems: 1-2 s); its size and mtime are then not trusted next time.
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class ProcessedFile:
    digest: str
    size: int
    mtime_ns: int  # -1: do not trust size + mtime, hash the file again
    group: int | None = None  # index into FileState.groups (overwrite_partitions only)


@dataclass(frozen=True)
class FileState:
    """Which input files a table's rows come from: path -> content digest, and for a
    partitioned table which partitions each file fed (provenance).

    Provenance is kept per *group*: the files processed together in one pass and the
    partitions that pass produced. Each file's own contribution is a subset of its group's
    partitions, so a group is a safe over-approximation: it can widen what a later run
    recomputes, never narrow it. Files that arrive one run at a time get exact groups.
    Written as JSON in each commit's metadata (``headrace.inputs``), next to the data.
    """

    key: str  # the input the files belong to
    config: str  # the table definition's fingerprint when these files were processed
    files: dict[str, ProcessedFile]
    groups: tuple[frozenset[Partition], ...] = ()

    VERSION = 1

    def dumps(self) -> str:
        files = {p: [f.digest, f.size, f.mtime_ns, f.group] for p, f in sorted(self.files.items())}
        groups = [sorted(([*p] for p in g), key=_sort_key) for g in self.groups]
        return json.dumps({"v": self.VERSION, "key": self.key, "config": self.config, "files": files,
                           "groups": groups}, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> FileState | None:
        """The state, or None when it is unreadable or from another format version (the table
        is then recomputed from all its files, which writes a fresh state)."""
        try:
            data = json.loads(text)
            if data.get("v") != cls.VERSION:
                return None
            files = {str(p): ProcessedFile(str(d), int(s), int(m), None if g is None else int(g))
                     for p, (d, s, m, g) in data["files"].items()}
            groups = tuple(frozenset(tuple(p) for p in g) for g in data["groups"])
            return cls(key=str(data["key"]), config=str(data["config"]), files=files, groups=groups)
        except (ValueError, TypeError, KeyError):
            return None

    def known(self) -> dict[str, tuple[int, int, str]]:
        """path -> (size, mtime_ns, digest) for files whose digest may be reused when their
        size and modification time are unchanged (so unchanged files are not read again)."""
        return {p: (f.size, f.mtime_ns, f.digest) for p, f in self.files.items() if f.mtime_ns >= 0}

    def partitions_of(self, paths: Iterable[str]) -> set[Partition]:
        out: set[Partition] = set()
        for path in paths:
            f = self.files.get(path)
            if f is not None and f.group is not None:
                out |= self.groups[f.group]
        return out

    def feeding(self, paths: Iterable[str], partitions: set[Partition]) -> list[str]:
        """Those of ``paths`` whose rows may land in one of ``partitions``."""
        return sorted(p for p in paths if (f := self.files.get(p)) is not None and f.group is not None
                      and not self.groups[f.group].isdisjoint(partitions))


def _sort_key(values: list[str | None]) -> list[tuple[bool, str]]:
    return [(v is None, v or "") for v in values]


@dataclass(frozen=True)
class FilePlan:
    """How the files listed now differ from those a table has processed."""

    new: tuple[FileEntry, ...]
    changed: tuple[FileEntry, ...]
    unchanged: tuple[FileEntry, ...]
    removed: tuple[str, ...]

    @property
    def todo(self) -> tuple[FileEntry, ...]:
        return self.new + self.changed

    def describe(self) -> str:
        total = len(self.new) + len(self.changed) + len(self.unchanged)
        return (f"{len(self.new)} new, {len(self.changed)} changed, {len(self.removed)} removed, "
                f"{len(self.unchanged)} unchanged of {total} file(s)")


def plan_files(state: FileState, entries: Sequence[FileEntry], rel: Callable[[Path], str]) -> FilePlan:
    new, changed, unchanged = [], [], []
    seen = set()
    for entry in entries:
        path = rel(entry.path)
        seen.add(path)
        known = state.files.get(path)
        if known is None:
            new.append(entry)
        elif known.digest != entry.digest:
            changed.append(entry)
        else:
            unchanged.append(entry)
    removed = tuple(sorted(p for p in state.files if p not in seen))
    return FilePlan(tuple(new), tuple(changed), tuple(unchanged), removed)


def record_files(
    entries: Iterable[FileEntry], rel: Callable[[Path], str], *, listed_at_ns: int, group: int | None,
) -> dict[str, ProcessedFile]:
    """Entries as processed files; a file modified just before it was listed is marked so its
    size and mtime are not trusted next time (it may still have been changing)."""
    return {
        rel(e.path): ProcessedFile(e.digest, e.size, e.mtime_ns if e.mtime_ns < listed_at_ns - RACY_NS else -1, group)
        for e in entries
    }


def advance_state(
    state: FileState, plan: FilePlan, rel: Callable[[Path], str], *, config: str, listed_at_ns: int,
    produced: set[Partition] | None, unfed: Collection[Partition] = (),
) -> FileState:
    """The state after processing ``plan.todo`` in one pass that produced the partitions
    ``produced`` (None: not tracked): changed and removed files leave their old groups, the
    processed files form a new group, groups left without files are dropped, and partitions
    no current file feeds (``unfed``) leave every group."""
    gone = {rel(e.path) for e in plan.changed} | set(plan.removed)
    kept = {p: f for p, f in state.files.items() if p not in gone}
    used = sorted({f.group for f in kept.values() if f.group is not None})
    index = {old: new for new, old in enumerate(used)}
    groups = [state.groups[g] - set(unfed) for g in used]
    files = {p: replace(f, group=None if f.group is None else index[f.group]) for p, f in kept.items()}
    for path, fresh in record_files(plan.unchanged, rel, listed_at_ns=listed_at_ns, group=None).items():
        files[path] = replace(fresh, group=files[path].group)  # same content; size and mtime as listed now
    group = None
    if produced is not None and plan.todo:
        group = len(groups)
        groups.append(frozenset(produced))
    files.update(record_files(plan.todo, rel, listed_at_ns=listed_at_ns, group=group))
    return FileState(key=state.key, config=config, files=files, groups=tuple(groups))
