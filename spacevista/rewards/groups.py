"""Rewards seen per GRPO group (the n completions of one prompt, which share a uid).

GRPO's advantage is a sample's reward against its group's mean, so the totals of one group must be
made of the same terms. The pipeline masks a failed plugin call out of that sample's total only, which
leaves it normalised over other terms than its group mates: identical completions would differ.
`group_totals` leaves a plugin that failed on any sample of a group out of every total of that group.
Pure Python: no torch, no Ray.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

from spacevista.rewards.stepwise import RewardBreakdown, terms_total


def _check_lengths(values: Sequence[object], uids: Sequence[Hashable], what: str) -> None:
    if len(values) != len(uids):
        raise ValueError(f"{len(values)} {what} but {len(uids)} uids")


def group_totals(breakdowns: Sequence[RewardBreakdown], uids: Sequence[Hashable]) -> list[float]:
    """Each sample's total, with every term that failed (score None) on any sample of its group (same
    uid) left out of all that group's totals (recomputed from `terms` by `terms_total`). Totals of
    groups without a failure, and of samples without `terms`, are returned as they are."""
    _check_lengths(breakdowns, uids, "breakdowns")
    failed: dict[Hashable, set[str]] = defaultdict(set)
    for breakdown, uid in zip(breakdowns, uids):
        failed[uid].update(name for name, (_, score) in breakdown.terms.items() if score is None)
    return [terms_total(b.terms, failed[uid]) if failed[uid] and b.terms else b.total
            for b, uid in zip(breakdowns, uids)]


def zero_variance_fraction(totals: Sequence[float], uids: Sequence[Hashable]) -> float:
    """The fraction of groups (same uid) whose totals are all equal, a one-sample group included: GRPO
    gets no signal from them. 0 when there are no samples."""
    _check_lengths(totals, uids, "totals")
    groups: dict[Hashable, set[float]] = defaultdict(set)
    for total, uid in zip(totals, uids):
        groups[uid].add(float(total))
    return sum(len(values) == 1 for values in groups.values()) / len(groups) if groups else 0.0
