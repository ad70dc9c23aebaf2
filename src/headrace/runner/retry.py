"""Retry policy: exponential backoff with jitter, only for errors classed as transient."""

from __future__ import annotations

import random
from dataclasses import dataclass

from headrace.errors import HeadraceError, is_retryable


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0

    @property
    def attempts(self) -> int:
        return 1 + max(0, self.retries)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based): half fixed, half jitter.

        Why "equal jitter": two runs failing on the same conflict must not retry in lockstep,
        yet each wait should still grow with the attempt number.
        """
        cap = min(self.max_backoff_seconds, self.backoff_seconds * (2 ** (attempt - 1)))
        r = rng or random
        return cap / 2 + r.uniform(0, cap / 2)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        return attempt < self.attempts and classify_transient(error)


def classify_transient(error: BaseException) -> bool:
    """Transient: headrace's TransientError, and network/timeouts raised by user code."""
    if isinstance(error, HeadraceError):
        return is_retryable(error)
    return isinstance(error, ConnectionError | TimeoutError)
