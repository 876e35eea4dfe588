"""Aggregate scored rows into the SpaceVista-Bench summary (`summary.json`).

Layout (scores are fractions in [0, 1]; a metric with no samples is null):
  name, reading, overall, total_count,
  per_category.{CAT}: overall, mc_accuracy, num_MRA, text_accuracy, count_accuracy, count,
                      mc_count, num_count, text_count, n_per_answer_type.{mc,numerical,text,count}
  per_type.{TYPE}: score, count                                        (TYPE = original_type)
  router: accuracy, count, per_category.{CAT} (null when no sample names its expert)
  malformed: count, lines [{line, error}]
  (`eval score` adds layout, official_notes, reading_differences and source; `eval run` adds run.)

Under the official reading (the default) the rows are the official scorer's: `overall`, `total_count`,
`per_type` and the four bench categories' numbers equal its metrics (`results_<name>_metrics.json`);
we add Drone and count_accuracy where present. A row whose category is not a scale's exact bench
spelling counts in `overall` only, as in the official scorer. Means are taken as it takes them
(numpy sums), so the numbers agree to the last bit. Router accuracy is the fraction of routed rows
whose expert is their own scale's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from spacevista.eval import official
from spacevista.eval.scoring import Malformed, ScoredRow
from spacevista.scales import SCALE_SPECS

METRIC_BY_TYPE: dict[str, str] = {"mc": "mc_accuracy", "numerical": "num_MRA", "text": "text_accuracy",
                                  "count": "count_accuracy"}
COUNT_BY_TYPE: dict[str, str] = {"mc": "mc_count", "numerical": "num_count", "text": "text_count"}
METRICS: tuple[str, ...] = tuple(METRIC_BY_TYPE.values())


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return official.mean(values) if values else None


def _category_row(rows: Sequence[ScoredRow]) -> dict[str, Any]:
    by_type: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_type[r.answer_type].append(r.score)
    return {"overall": mean(r.score for r in rows),
            **{metric: mean(by_type.get(t, ())) for t, metric in METRIC_BY_TYPE.items()},
            "count": len(rows),
            **{key: len(by_type.get(t, ())) for t, key in COUNT_BY_TYPE.items()},
            "n_per_answer_type": {t: len(by_type.get(t, ())) for t in METRIC_BY_TYPE}}


def _per_type(rows: Sequence[ScoredRow]) -> dict[str, Any]:
    groups, _ = official.group_rows([r.task for r in rows])
    return {official.json_key(task): {"score": mean(rows[i].score for i in members), "count": len(members)}
            for task, members in groups.items()}


def _router(rows: Sequence[ScoredRow]) -> dict[str, Any] | None:
    routed = [r for r in rows if r.routed_expert is not None and r.category is not None]
    if not routed:
        return None
    hits: dict[str, list[float]] = defaultdict(list)
    for r in routed:
        hits[r.category].append(float(r.routed_expert == r.scale))
    return {"accuracy": mean(h for v in hits.values() for h in v), "count": len(routed),
            "per_category": {spec.bench_category: mean(hits[spec.bench_category])
                             for spec in SCALE_SPECS if spec.bench_category in hits}}


def summarize(rows: Sequence[ScoredRow], malformed: Sequence[Malformed] = (), name: str = "",
              reading: str = "official", **extra: Any) -> dict[str, Any]:
    """The summary dict (see the module docstring); `extra` keys (e.g. `run`) are appended."""
    by_category: dict[str, list[ScoredRow]] = defaultdict(list)
    for r in rows:
        if r.category is not None:
            by_category[r.category].append(r)
    return {
        "name": name,
        "reading": reading,
        "overall": mean(r.score for r in rows),
        "total_count": len(rows),
        "per_category": {spec.bench_category: _category_row(by_category[spec.bench_category])
                         for spec in SCALE_SPECS if spec.bench_category in by_category},
        "per_type": _per_type(rows),
        "router": _router(rows),
        "malformed": {"count": len(malformed), "lines": [{"line": m.line, "error": m.error} for m in malformed]},
        **extra,
    }
