"""File sources: glob listing, content fingerprints and DuckDB readers for CSV, JSON, Parquet."""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from pathlib import Path

from headrace.errors import SourceError
from headrace.sources.batches import FileEntry, InputBatch, combine, file_digest
from headrace.spec.sources import FileSource


def sql_string(value: str) -> str:
    """Quote a value as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def list_files(
    spec: FileSource, root: Path, *, source_name: str, known: Mapping[str, tuple[int, int, str]] | None = None,
) -> InputBatch:
    """Resolve the glob to a sorted file list with content digests.

    ``known`` maps a path (relative to ``root`` when inside it) to a ``(size, mtime_ns,
    digest)`` recorded earlier: a file whose size and modification time are unchanged keeps
    that digest instead of being read again. An empty match or an unreadable file is an error
    here, before any engine work, so the message can name the pattern and the file.
    """
    pattern = spec.path if Path(spec.path).is_absolute() else str(root / spec.path)
    # glob.glob, not Path.glob: the pattern may be absolute and may contain '**'
    matches = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())  # noqa: PTH207
    if not matches:
        raise SourceError(
            f"source {source_name!r}: no files match {spec.path!r}",
            hint=f"check the path (relative to {root}) or add data before running",
            path=spec.path,
        )
    entries: list[FileEntry] = []
    for name in matches:
        path = Path(name)
        try:
            st = path.stat()
            seen = (known or {}).get(str(path.relative_to(root)) if path.is_relative_to(root) else str(path))
            if seen is not None and seen[:2] == (st.st_size, st.st_mtime_ns):
                digest = seen[2]
            else:
                digest = file_digest(path)
        except OSError as exc:
            raise SourceError(
                f"source {source_name!r}: cannot read {path}: {exc.strerror or exc}",
                hint="check the file's permissions",
                path=str(path),
            ) from exc
        entries.append(FileEntry(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, digest=digest))
    batch_id = combine(f"{e.path.relative_to(root) if e.path.is_relative_to(root) else e.path}:{e.digest}" for e in entries)
    return InputBatch(
        kind="files",
        description=f"{len(entries)} {spec.format} file(s) {spec.path}",
        batch_id=batch_id,
        files=tuple(entries),
    )


def _option_list(spec: FileSource) -> list[str]:
    opts: list[str] = []
    if spec.compression != "auto":
        opts.append(f"compression={sql_string(spec.compression)}")
    if spec.filename_column:
        opts.append("filename=true")
    if spec.columns:
        cols = ", ".join(f"{sql_string(k)}: {sql_string(v)}" for k, v in spec.columns)
        opts.append(f"columns={{{cols}}}")
    return opts


def reader_sql(spec: FileSource, files: Sequence[Path], *, extra: Sequence[str] = ()) -> str:
    """The DuckDB table function call that reads these files with the source's options."""
    file_list = "[" + ", ".join(sql_string(str(p)) for p in files) + "]"
    opts = _option_list(spec)
    if spec.format == "csv":
        opts.append(f"header={'true' if spec.header else 'false'}")
        opts.append(f"delim={sql_string(spec.delimiter or ',')}")
        if spec.quote is not None:
            opts.append(f"quote={sql_string(spec.quote)}")
        if spec.escape is not None:
            opts.append(f"escape={sql_string(spec.escape)}")
        if spec.null_string is not None:
            opts.append(f"nullstr={sql_string(spec.null_string)}")
        func = "read_csv"
    elif spec.format in ("ndjson", "json"):
        fmt = "newline_delimited" if spec.format == "ndjson" else "auto"
        opts.append(f"format={sql_string(fmt)}")
        func = "read_json"
    else:
        opts.append("union_by_name=true")
        func = "read_parquet"
    opts.extend(extra)
    body = ", ".join([file_list, *opts])
    sql = f"SELECT * FROM {func}({body})"
    if spec.filename_column:
        sql = f"SELECT * EXCLUDE (filename), filename AS {quote_ident(spec.filename_column)} FROM {func}({body})"
    return sql


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
