"""Aggregate scored samples into the SpaceVista-Bench summary (`summary.json`).

Layout (scores are fractions in [0, 1]; a metric with no samples is null):
  name, overall, total_count,
  per_category.{CAT}: overall, mc_accuracy, num_MRA, text_accuracy, count_accuracy, count,
                      n_per_answer_type.{mc,numerical,text,count}     (CAT as the bench spells it)
  per_type.{TYPE}: score, count                                        (TYPE = task / original_type)
  router: accuracy, count, per_category.{CAT} (null when no sample names its expert)
  malformed: count, lines [{line, error}]

`overall` (whole file and per category) is the mean of the per-sample scores: each question weighs
the same whatever its answer type, as in the bench's own scorer. `count` is a number of samples;
`count_accuracy` scores our count tasks (the public bench files counting under `num_MRA`).
Router accuracy is the fraction of samples whose routed expert is their own scale's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from spacevista.eval.scoring import BENCH_NAME, Malformed, ScoredSample
from spacevista.scales import SCALE_SPECS, AnswerType

METRIC_BY_TYPE: dict[AnswerType, str] = {AnswerType.CHOICE: "mc_accuracy", AnswerType.NUMERIC: "num_MRA",
                                         AnswerType.TEXT: "text_accuracy", AnswerType.COUNT: "count_accuracy"}
METRICS: tuple[str, ...] = tuple(METRIC_BY_TYPE.values())


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _category_row(scored: Sequence[ScoredSample]) -> dict[str, Any]:
    by_type: dict[AnswerType, list[float]] = defaultdict(list)
    for s in scored:
        by_type[s.sample.truth.type].append(s.score)
    return {"overall": mean(s.score for s in scored),
            **{metric: mean(by_type.get(t, ())) for t, metric in METRIC_BY_TYPE.items()},
            "count": len(scored),
            "n_per_answer_type": {BENCH_NAME[t]: len(by_type.get(t, ())) for t in METRIC_BY_TYPE}}


def _router(scored: Sequence[ScoredSample]) -> dict[str, Any] | None:
    routed = [s for s in scored if s.sample.routed_expert is not None]
    if not routed:
        return None
    hits: dict[str, list[float]] = defaultdict(list)
    for s in routed:
        hits[s.sample.category].append(float(s.sample.routed_expert == s.sample.scale))
    return {"accuracy": mean(h for v in hits.values() for h in v), "count": len(routed),
            "per_category": {spec.bench_category: mean(hits[spec.bench_category])
                             for spec in SCALE_SPECS if spec.bench_category in hits}}


def summarize(scored: Sequence[ScoredSample], malformed: Sequence[Malformed] = (), name: str = "",
              **extra: Any) -> dict[str, Any]:
    """The summary dict (see the module docstring); `extra` keys (e.g. `run`) are appended."""
    by_category: dict[str, list[ScoredSample]] = defaultdict(list)
    by_task: dict[str, list[float]] = defaultdict(list)
    for s in scored:
        by_category[s.sample.category].append(s)
        by_task[s.sample.task].append(s.score)
    return {
        "name": name,
        "overall": mean(s.score for s in scored),
        "total_count": len(scored),
        "per_category": {spec.bench_category: _category_row(by_category[spec.bench_category])
                         for spec in SCALE_SPECS if spec.bench_category in by_category},
        "per_type": {task: {"score": mean(scores), "count": len(scores)} for task, scores in sorted(by_task.items())},
        "router": _router(scored),
        "malformed": {"count": len(malformed), "lines": [{"line": m.line, "error": m.error} for m in malformed]},
        **extra,
    }
