"""Retention: which unused items go, and why: those not opened for --keep-days, then the least
recently used while the data dir is over --disk-budget-mb (clips and images in one order: they
share the data dir).

A pure choice over what the caller offers (never an item in use, nor the one just uploaded); the
caller deletes what it answers and says why in the library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def choose(
    idle: Iterable[T],
    *,
    used_at: Callable[[T], float],
    size_of: Callable[[T], int],
    now: float,
    keep_days: float,
    disk_used: int,
    budget_mb: int,
    kind_of: Callable[[T], str],
) -> list[tuple[T, str]]:
    """The items to delete, least recently used first, each with the reason a person reads."""
    gone: list[tuple[T, str]] = []
    left = []
    for item in sorted(idle, key=used_at):
        days = (now - used_at(item)) / 86400
        if keep_days > 0 and days > keep_days:
            gone.append((item, f"not opened for {days:.1f} days (kept {keep_days:g})"))
            disk_used -= size_of(item)
        else:
            left.append(item)
    budget = budget_mb * 1_000_000
    for item in left:
        if budget_mb <= 0 or disk_used <= budget:
            break
        why = (
            f"the data dir held {disk_used / 1e6:.1f} MB, over the {budget_mb} MB budget; "
            f"this was the least recently used {kind_of(item)}"
        )
        gone.append((item, why))
        disk_used -= size_of(item)
    return gone
