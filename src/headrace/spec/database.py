"""Database sources: a table or a query of PostgreSQL, MySQL/MariaDB or SQLite, read as Arrow.

Pure data: nothing here connects. ``cursor`` names a column that grows as rows are added or
changed (``updated_at``, an id); with it, a run reads only rows past the last watermark,
minus ``lookback`` to catch rows that committed late. Reading is in
:mod:`headrace.sources.database`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

from headrace.errors import DefinitionError
from headrace.spec._durations import duration_seconds

# scheme in the URL -> dialect
DIALECTS: dict[str, str] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
}
URL_FORMS = "postgresql://user:pass@host:5432/db, mysql://user:pass@host:3306/db (or mariadb://), sqlite:///relative/path.db or sqlite:////absolute/path.db"

def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"3d"``, ``"1w"``, ``"1h30m"``, ``"2 hours"`` -> timedelta.

    >>> parse_duration("1h30m")
    datetime.timedelta(seconds=5400)
    """
    seconds = duration_seconds(text)
    if seconds is None:
        raise DefinitionError(
            f"invalid duration {text!r}",
            hint="write a number and a unit, e.g. '90s', '15m', '2h', '3d', '1w' or '1h30m'",
        )
    return timedelta(seconds=seconds)


def dialect_of(url: str) -> str:
    """The dialect a URL names (``postgresql``, ``mysql`` or ``sqlite``); DefinitionError else."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in DIALECTS:
        from headrace.spec._names import did_you_mean

        base = scheme.split("+", 1)[0]
        hint_extra = f" (drop the driver suffix: {base}://)" if base in DIALECTS else ""
        raise DefinitionError(
            f"unsupported database URL {mask_url(url)!r}: scheme {scheme or '(none)'!r} is not "
            f"one of postgresql, mysql, mariadb, sqlite.{did_you_mean(base, DIALECTS)}{hint_extra}",
            hint=f"URL forms: {URL_FORMS}",
        )
    return DIALECTS[scheme]


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, kw_only=True)
class DatabaseSource:
    """A table (``table=``) or a query (``query=``) of a database, read as Arrow in chunks.

    ``url``: ``postgresql://``, ``mysql://``/``mariadb://`` or ``sqlite:///path`` (a relative
    SQLite path is relative to the project root). ``cursor``: a column whose value grows with
    new or changed rows; with a previous watermark only rows with ``cursor > watermark -
    lookback`` are read. ``lookback``: a duration (``"2h"`` or a ``timedelta``) for date and
    timestamp cursors, an ``int`` for integer cursors. ``chunk_rows``: the most rows per batch.
    """

    kind: ClassVar[str] = "database"
    url: str
    table: str | None = None
    query: str | None = None
    cursor: str | None = None
    lookback: str | timedelta | int | None = None  # a str is parsed into a timedelta at creation
    chunk_rows: int = 100_000
    name: str | None = None

    def __post_init__(self) -> None:
        where = f"database source{f' {self.name!r}' if self.name else ''}: "
        if not isinstance(self.url, str) or not self.url:
            raise DefinitionError(f"{where}url must be a non-empty string", hint=f"URL forms: {URL_FORMS}")
        dialect = dialect_of(self.url)
        if dialect == "sqlite" and not sqlite_path(self.url):
            raise DefinitionError(
                f"{where}{self.url!r} names no database file",
                hint="sqlite:///relative/path.db (from the project root) or sqlite:////absolute/path.db",
            )
        if (self.table is None) == (self.query is None):
            raise DefinitionError(
                f"{where}give exactly one of table= or query=",
                hint="table='public.orders' reads a whole table; query='SELECT ...' reads a query",
            )
        for field_name in ("table", "query", "cursor"):
            value = getattr(self, field_name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DefinitionError(f"{where}{field_name}= must be a non-empty string")
        if self.table is not None and not all(part.strip() for part in self.table.split(".")):
            raise DefinitionError(f"{where}invalid table name {self.table!r}", hint="e.g. 'orders' or 'sales.orders'")
        if isinstance(self.chunk_rows, bool) or not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise DefinitionError(f"{where}chunk_rows must be a positive integer, got {self.chunk_rows!r}")
        lookback = self.lookback
        if isinstance(lookback, str):
            try:
                lookback = parse_duration(lookback)
            except DefinitionError as exc:
                raise DefinitionError(f"{where}lookback: {exc.message}", hint=exc.hint) from None
            object.__setattr__(self, "lookback", lookback)
        if lookback is not None:
            if isinstance(lookback, bool) or not isinstance(lookback, timedelta | int):
                raise DefinitionError(
                    f"{where}lookback must be a duration ('2h', a timedelta) or an int, got {lookback!r}"
                )
            if self.cursor is None:
                raise DefinitionError(f"{where}lookback= needs cursor=", hint="name the column that grows, e.g. cursor='updated_at'")
            if (lookback.total_seconds() if isinstance(lookback, timedelta) else lookback) < 0:
                raise DefinitionError(f"{where}lookback must not be negative")

    @property
    def dialect(self) -> str:
        return dialect_of(self.url)

    def named(self, name: str) -> DatabaseSource:
        return replace(self, name=name)

    def describe(self) -> str:
        what = f"table {self.table}" if self.table is not None else "query"
        text = f"{self.dialect} {what} at {mask_url(self.url)}"
        if self.cursor:
            text += f" (cursor {self.cursor}"
            text += f", lookback {self.lookback})" if self.lookback is not None else ")"
        return text


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///path`` URL: ``sqlite:///a.db`` -> ``a.db`` (relative),
    ``sqlite:////tmp/a.db`` -> ``/tmp/a.db``."""
    rest = url.split("://", 1)[1]
    if rest.startswith("/"):
        rest = rest[1:]
    return rest.split("?", 1)[0]


def database(
    url: str,
    *,
    table: str | None = None,
    query: str | None = None,
    cursor: str | None = None,
    lookback: str | timedelta | int | None = None,
    chunk_rows: int = 100_000,
    name: str | None = None,
) -> DatabaseSource:
    """Declare a database table or query as a source.

    >>> database("postgresql://app@db/shop", table="orders", cursor="updated_at", lookback="2h").lookback
    datetime.timedelta(seconds=7200)
    """
    return DatabaseSource(
        url=url, table=table, query=query, cursor=cursor, lookback=lookback, chunk_rows=chunk_rows, name=name,
    )
