"""Input batches: the identity of what a run consumed.

A batch id is a content hash of the inputs (file set + content, or an upstream table version).
It keys Delta app transactions for append, and the run fingerprint that makes every write mode
a no-op when nothing changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


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


def file_digest(path: Path) -> str:
    """blake2b of the file's bytes; why: size+mtime can repeat across different contents."""
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def combine(parts: Iterable[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()
