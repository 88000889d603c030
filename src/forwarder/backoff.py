"""Exponential backoff with jitter, for every retry the forwarder schedules itself.

A model call sent back through the broker, a callback tried again, a Firehose batch sent again:
each waits ``base`` doubled per attempt up to ``cap``, then a random part of it, so that the
workers (or greenlets) that failed together, on one restart of what they call, spread out instead
of returning at the same instant. Each still waits at least half its backoff.
"""

from __future__ import annotations

import random

__all__ = ["backoff"]

# 2**64 times any base is past every cap, and 2.0**1100 would overflow.
_MAX_DOUBLINGS = 64


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait before try ``attempt + 1``: from ``base`` (attempt 0), at most ``cap``."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), _MAX_DOUBLINGS))
    return ceiling * random.uniform(0.5, 1.0)
