"""Source specifications: where raw data comes from.

A source is declared once (usually at module level in ``pipelines/*.py``) and named after
the variable that holds it unless ``name=`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

FileFormat = Literal["csv", "ndjson", "json", "parquet"]
FILE_FORMATS: tuple[str, ...] = ("csv", "ndjson", "json", "parquet")
Compression = Literal["auto", "none", "gzip", "zstd"]


@dataclass(frozen=True, kw_only=True)
class FileSource:
    """Files matched by a glob, relative to the project root (or absolute).

    CSV options: ``delimiter``, ``header``, ``quote``, ``escape``, ``null_string``.
    ``compression`` is detected from the file suffix unless given. ``columns`` optionally fixes
    column names to types (DuckDB type names) instead of inferring them.
    """

    kind: ClassVar[str] = "files"
    path: str
    format: FileFormat
    name: str | None = None
    delimiter: str | None = None
    header: bool = True
    quote: str | None = None
    escape: str | None = None
    null_string: str | None = None
    compression: Compression = "auto"
    columns: tuple[tuple[str, str], ...] = field(default=())
    filename_column: str | None = None

    def named(self, name: str) -> FileSource:
        from dataclasses import replace

        return replace(self, name=name)

    def describe(self) -> str:
        return f"{self.format} files {self.path}"


from headrace.spec.database import DatabaseSource  # noqa: E402  (defined after FileSource on purpose)
from headrace.spec.kafka import KafkaSource  # noqa: E402

SourceSpec = FileSource | DatabaseSource | KafkaSource
SOURCE_TYPES = (FileSource, DatabaseSource, KafkaSource)
