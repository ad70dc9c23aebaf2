"""Typed, pure definitions of what a project declares: sources, tables, write modes.

Nothing here does I/O; runners, engines and the lake read these objects.
"""

from headrace.spec.sources import FileFormat, FileSource, SourceSpec
from headrace.spec.tables import PythonTransform, SqlTransform, TableRef, TableSpec, ref
from headrace.spec.write_modes import (
    Append,
    Merge,
    Overwrite,
    OverwritePartitions,
    WriteMode,
    write_mode_from_config,
)

__all__ = [
    "Append",
    "FileFormat",
    "FileSource",
    "Merge",
    "Overwrite",
    "OverwritePartitions",
    "PythonTransform",
    "SourceSpec",
    "SqlTransform",
    "TableRef",
    "TableSpec",
    "WriteMode",
    "ref",
    "write_mode_from_config",
]
