"""Capped exponential backoff, one policy for everything that waits out an outage (gateway, job, supervisor)."""

from __future__ import annotations


class Backoff:
    """Delays first, 2*first, 4*first, ... capped at `cap` seconds; `reset()` after a success."""

    def __init__(self, first_s: float = 0.5, cap_s: float = 30.0):
        self.first_s = first_s
        self.cap_s = cap_s
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt, counting this failure."""
        self.failures += 1
        return min(self.cap_s, self.first_s * 2 ** min(self.failures - 1, 30))

    def reset(self) -> None:
        self.failures = 0
