"""SQL is written once, in DuckDB's dialect; on Spark it is transpiled with sqlglot.

A construct sqlglot cannot express in Spark SQL is an error that names the model and the
construct, raised before Spark sees the query, rather than a query that silently means
something else.
"""

from __future__ import annotations

from headrace.errors import DefinitionError, engine_message


def to_spark_sql(sql: str, *, where: str) -> str:
    """Transpile one DuckDB statement to Spark SQL; ``where`` names the model for errors."""
    import sqlglot
    from sqlglot.errors import ErrorLevel, ParseError, UnsupportedError

    try:
        statements = sqlglot.transpile(sql, read="duckdb", write="spark", unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as exc:
        raise DefinitionError(
            f"{where}: cannot be translated to Spark SQL: {engine_message(exc, 1)}",
            hint="rewrite that construct in portable SQL (standard functions, CASE, CAST), "
            "or run this table on the duckdb engine",
        ) from None
    except ParseError as exc:
        raise DefinitionError(
            f"{where}: SQL does not parse: {engine_message(exc, 1)}",
            hint="models are written in DuckDB's SQL dialect",
        ) from None
    statements = [s for s in statements if s.strip()]
    if len(statements) != 1:
        raise DefinitionError(
            f"{where}: expected one SQL statement, found {len(statements)}",
            hint="a model or transform is a single SELECT",
        )
    return statements[0]


def audit_to_spark_sql(sql: str) -> str:
    """Transpile headrace's own audit SQL (checks, merge-key checks) to Spark SQL.

    The check compiler writes DuckDB SQL with a few constructs Spark spells differently or
    lacks; they are rewritten here so the checks themselves run on Spark:

    * ``arg_min(v, k, n) FILTER (WHERE c)`` (the failing-row sample: the n rows with the
      smallest k) becomes the first n of the sorted list of (k, v) pairs collected where c
      holds; ``arg_max`` sorts on -k. Only flagged rows reach that aggregate, so the list is
      as long as the failures of one audit;
    * ``epoch_ns(t)`` -> ``unix_micros(CAST(t AS TIMESTAMP_LTZ)) * 1000`` (the session is UTC);
    * ``row(...)`` -> ``struct(...)``; ``GROUPING(a, b)`` -> ``grouping_id(a, b)`` (same bits);
    * ``regexp_full_match(s, p)`` -> ``s RLIKE '^(?:p)$'``;
    * a table alias used as a value (the whole row) -> ``struct(alias.*)``.
    """
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")
    aliases = {t.alias_or_name for t in tree.find_all(exp.Table)} | {
        s.alias for s in tree.find_all(exp.Subquery) if s.alias}

    def spark(node: exp.Expression) -> str:
        return node.sql(dialect="spark")

    def simple(node: exp.Expression) -> exp.Expr:
        if isinstance(node, exp.Anonymous) and node.name.upper() == "EPOCH_NS":
            return sqlglot.parse_one(f"UNIX_MICROS(CAST({spark(node.expressions[0])} AS TIMESTAMP_LTZ)) * 1000",
                                     read="spark")
        if isinstance(node, exp.Anonymous) and node.name.upper() == "ROW":
            return exp.Struct(expressions=list(node.expressions))
        if isinstance(node, exp.Grouping) and len(node.expressions) > 1:
            return exp.Anonymous(this="GROUPING_ID", expressions=list(node.expressions))
        if type(node).__name__ == "RegexpFullMatch":
            pattern = node.expression
            if isinstance(pattern, exp.Literal) and pattern.is_string:
                anchored = exp.Literal.string(f"^(?:{pattern.this})$")
                return exp.RegexpLike(this=node.this, expression=anchored)
        if (isinstance(node, exp.Column) and not node.table and node.name in aliases
                and isinstance(node.parent, exp.Alias)):
            return sqlglot.parse_one(f"STRUCT({node.name}.*)", read="spark")
        return node

    tree = tree.transform(simple)

    def samples(node: exp.Expression) -> exp.Expr:
        if not (isinstance(node, exp.Filter) and isinstance(node.this, exp.ArgMin | exp.ArgMax)
                and node.this.args.get("count") is not None):
            return node
        agg = node.this
        cond = node.expression.this if isinstance(node.expression, exp.Where) else node.expression
        order = spark(agg.expression)
        if isinstance(agg, exp.ArgMax):
            order = f"-({order})"
        # compare on k alone: v may hold columns Spark cannot order (maps)
        text = (f"TRANSFORM(SLICE(ARRAY_SORT(COLLECT_LIST(CASE WHEN {spark(cond)} THEN "
                f"NAMED_STRUCT('k', {order}, 'v', {spark(agg.this)}) END), "
                "(l, r) -> CASE WHEN l.k < r.k THEN -1 WHEN l.k > r.k THEN 1 ELSE 0 END), "
                f"1, {spark(agg.args['count'])}), x -> x.v)")
        return sqlglot.parse_one(text, read="spark")

    tree = tree.transform(samples)
    return tree.sql(dialect="spark")
