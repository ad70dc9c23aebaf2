"""The micro-batch loop behind ``headrace stream``.

Each batch is an ordinary run of the selection, so everything a run guarantees holds per batch:
a table over a Kafka topic reads the messages after its last commit's offsets, exactly once; a
file source picks up new files; upstream changes flow down the DAG in the same batch; a batch
with nothing new commits nothing. Batches start ``interval`` apart (at once when one took
longer). A failed batch is reported and the loop goes on: the next batch retries what failed,
from the same offsets. SIGTERM/SIGINT stop the loop after the current batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from headrace.runner.events import RunResult

log = logging.getLogger("headrace.streaming")


@dataclass(frozen=True)
class Batch:
    number: int
    result: RunResult

    def to_json(self) -> dict[str, Any]:
        tasks = self.result.tasks
        return {
            "batch": self.number, "run_id": self.result.run_id, "status": self.result.status,
            "seconds": round(self.result.seconds, 3),
            "tables": {t.table: t.status for t in tasks},
            "rows_out": sum(t.rows_out or 0 for t in tasks if t.status == "success"),
            "rows_quarantined": sum(t.rows_quarantined or 0 for t in tasks),
        }


class MicroBatchLoop:
    """Runs ``run_batch`` every ``interval`` seconds until stopped or ``max_batches`` ran."""

    def __init__(self, run_batch: Callable[[], RunResult], *, interval: float, max_batches: int | None = None,
                 on_batch: Callable[[Batch], None] | None = None) -> None:
        self.run_batch = run_batch
        self.interval = interval
        self.max_batches = max_batches
        self.on_batch = on_batch
        self._stop = threading.Event()
        self.batches: list[Batch] = []

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, handle_signals: bool = False) -> Sequence[Batch]:
        from headrace.runner.scheduler import install_signal_handlers

        restore = install_signal_handlers(self) if handle_signals else None
        try:
            while not self.stopping and (self.max_batches is None or len(self.batches) < self.max_batches):
                started = time.monotonic()
                batch = Batch(len(self.batches) + 1, self.run_batch())
                self.batches.append(batch)
                if self.on_batch is not None:
                    self.on_batch(batch)
                if self.max_batches is not None and len(self.batches) >= self.max_batches:
                    break
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            if restore is not None:
                restore()
        log.info("stream stopped after %d batch(es)", len(self.batches))
        return self.batches
