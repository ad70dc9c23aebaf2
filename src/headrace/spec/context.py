"""The run context a table function can ask for with a ``ctx`` parameter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path


@dataclass(frozen=True)
class RunContext:
    """Identity of the current run and attempt, e.g. to tag rows with ``ctx.run_id``.

    ``ds`` is the logical date of a backfill or ``run --ds`` (None for a plain run): a table
    partitioned by date computes that day's partition, e.g. ``raw.filter(f"day = '{ctx.ds}'")``.
    """

    run_id: str
    table: str
    attempt: int
    project_root: Path
    ds: date | None = None

    @property
    def ds_end(self) -> date | None:
        """The exclusive end of the logical interval (one day)."""
        return self.ds + timedelta(days=1) if self.ds else None


def render_template(sql: str, ds: date | None) -> str:
    """Fill ``{{ ds }}`` and ``{{ ds_end }}`` in a model's SQL (written inside quotes, so the
    model still parses: ``where day = '{{ ds }}'``). Without a logical date they are left as
    they are, and a model that needs one fails with a clear binder error."""
    if ds is None:
        return sql
    out = sql
    for name, value in (("ds", ds), ("ds_end", ds + timedelta(days=1))):
        for form in ("{{ " + name + " }}", "{{" + name + "}}"):
            out = out.replace(form, value.isoformat())
    return out
