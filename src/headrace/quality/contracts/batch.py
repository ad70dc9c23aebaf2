"""A validated batch in one call, and what the contract says to do with its bad rows.

How the caller uses the package: ``validate_files`` runs the whole sequence::

    batch = validate_files(con, spec, files, contract, table="hr_checked", duplicates="prepass")
    good = con.sql(batch.good_sql())              # typed rows, no __hr_ columns
    bad = con.sql(batch.quarantine_sql())         # __hr_file, __hr_line, __hr_raw, __hr_violations
    check_outcome(contract, batch.rows, batch.quarantined, source="orders")  # fail / ratio
    ...
    batch.drop(con)

which is, step by step::

    with open_raw_reader(con, spec, files, contract=contract) as raw:   # probes the files
        plan = plan_validation(contract, f"({raw.sql})", raw.fields, duplicates="hr_dups")
        con.execute(f"CREATE TEMP TABLE hr_dups AS {plan.duplicates_sql(f'({raw.sql_for(plan.key_fields)})')}")
        con.execute(f"CREATE TEMP TABLE hr_checked AS {plan.sql}")       # the one full pass
    plan.good_sql("hr_checked"), plan.quarantine_sql("hr_checked"), plan.counts_sql("hr_checked")

Why a temp table: the validated rows are needed twice (good rows and quarantine), a DuckDB
view re-runs on every use, and a filter over the view would be pushed below the JSON
extraction and evaluate it twice. ``__hr_raw`` is NULL on rows without violations, so the
table holds the typed values plus the raw text of the bad rows only.

The runner takes the faster stored path instead (``stored.store_validated``), with the same
result; ``check_outcome`` applies to the counts of either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb

from headrace.errors import DataQualityError
from headrace.quality.contracts.readers import open_raw_reader
from headrace.quality.contracts.rules import ValidationPlan, plan_validation
from headrace.sources.files import quote_ident
from headrace.spec.contracts import Contract
from headrace.spec.sources import FileSource

# ---- the whole sequence ----------------------------------------------------------------------


@dataclass(frozen=True)
class ValidatedBatch:
    """A validated input stored in the temp table ``table``, with its counts.

    ``good_sql()`` and ``quarantine_sql()`` read that table; drop it with ``drop(con)``.
    """

    table: str
    plan: ValidationPlan
    rows: int
    quarantined: int
    fields: tuple[str, ...]

    def good_sql(self) -> str:
        return self.plan.good_sql(quote_ident(self.table))

    def quarantine_sql(self) -> str:
        return self.plan.quarantine_sql(quote_ident(self.table))

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(f"DROP TABLE IF EXISTS {quote_ident(self.table)}")
        con.execute(f"DROP TABLE IF EXISTS {quote_ident(self.table + '_dups')}")


def validate_files(
    con: duckdb.DuckDBPyConnection,
    spec: FileSource,
    files: Sequence[Path],
    contract: Contract,
    *,
    table: str,
    duplicates: Literal["window", "prepass"] = "window",
    workdir: Path | None = None,
) -> ValidatedBatch:
    """Probe, read, validate and store ``files`` in the temp table ``table``: the
    recommended sequence, in one function. ``duplicates="prepass"`` finds duplicate keys by
    a second, key-only read instead of a window over all rows (less memory, same time)."""
    with open_raw_reader(con, spec, files, contract=contract, workdir=workdir) as raw:
        dups = f"{table}_dups" if duplicates == "prepass" and contract.keys else None
        plan = plan_validation(
            contract, f"({raw.sql})", raw.fields, duplicates=quote_ident(dups) if dups else None
        )
        if dups:
            keys_sql = f"({raw.sql_for(plan.key_fields)})"
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {quote_ident(dups)} AS {plan.duplicates_sql(keys_sql)}"
            )
        con.execute(f"CREATE OR REPLACE TEMP TABLE {quote_ident(table)} AS {plan.sql}")
    rows, quarantined = con.execute(plan.counts_sql(quote_ident(table))).fetchall()[0]
    return ValidatedBatch(
        table=table, plan=plan, rows=int(rows), quarantined=int(quarantined), fields=raw.fields
    )


# ---- the outcome -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ContractOutcome:
    """Counts after validation and what the contract says to do with the bad rows."""

    rows: int
    quarantined: int
    action: str  # "quarantine" | "drop" | "none"

    @property
    def good(self) -> int:
        return self.rows - self.quarantined

    @property
    def ratio(self) -> float:
        return self.quarantined / self.rows if self.rows else 0.0


def check_outcome(contract: Contract, rows: int, quarantined: int, *, source: str) -> ContractOutcome:
    """Apply ``on_violation`` and ``max_quarantine_ratio``: raise DataQualityError to stop
    the run, else say whether bad rows go to quarantine or are dropped."""
    outcome = ContractOutcome(rows=rows, quarantined=quarantined, action="none")
    if not quarantined:
        return outcome
    if contract.on_violation == "fail":
        raise DataQualityError(
            f"source {source!r}: {quarantined} of {rows} records break the contract",
            hint="see the violations with on_violation='quarantine', or fix the input",
        )
    limit = contract.max_quarantine_ratio
    if limit is not None and outcome.ratio > limit:
        raise DataQualityError(
            f"source {source!r}: {quarantined} of {rows} records ({outcome.ratio:.1%}) break the "
            f"contract, above max_quarantine_ratio {limit:.1%}",
            hint="inspect the quarantined records; raise the ratio only if this is expected",
        )
    return ContractOutcome(rows=rows, quarantined=quarantined, action=contract.on_violation)
