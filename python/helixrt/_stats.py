"""Summaries of recent samples for the components' `stats()` snapshots (not a hot path)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean", "p99"]


def mean(samples: Sequence[float]) -> float:
    """The mean, 0.0 without samples."""
    return sum(samples) / len(samples) if samples else 0.0


def p99(samples: Sequence[float]) -> float:
    """The 99th percentile (nearest rank), 0.0 without samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[math.ceil(len(ordered) * 0.99) - 1]
