"""SQL is written once, in DuckDB's dialect; on Spark it is transpiled with sqlglot.

A construct sqlglot cannot express in Spark SQL is an error that names the model and the
construct, raised before Spark sees the query, rather than a query that silently means
something else.
"""

from __future__ import annotations

from headrace.errors import DefinitionError


def to_spark_sql(sql: str, *, where: str) -> str:
    """Transpile one DuckDB statement to Spark SQL; ``where`` names the model for errors."""
    import sqlglot
    from sqlglot.errors import ErrorLevel, ParseError, UnsupportedError

    try:
        statements = sqlglot.transpile(sql, read="duckdb", write="spark", unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as exc:
        raise DefinitionError(
            f"{where}: cannot be translated to Spark SQL: {_first_line(exc)}",
            hint="rewrite that construct in portable SQL (standard functions, CASE, CAST), "
            "or run this table on the duckdb engine",
        ) from None
    except ParseError as exc:
        raise DefinitionError(
            f"{where}: SQL does not parse: {_first_line(exc)}",
            hint="models are written in DuckDB's SQL dialect",
        ) from None
    statements = [s for s in statements if s.strip()]
    if len(statements) != 1:
        raise DefinitionError(
            f"{where}: expected one SQL statement, found {len(statements)}",
            hint="a model or transform is a single SELECT",
        )
    return statements[0]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
