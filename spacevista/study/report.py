"""A study's report: per variant and scale, mean +- standard error over seeds; paired differences
against the baseline with a 95% t interval; a PNG; a markdown file with the commands that reproduce it.

Scores come from each `eval run` output: its summary, or the mean of the result rows' lenient scores (the
study's default: one reading for every dataset); the report prints them in percent like the eval tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spacevista.scales import SCALE_SPECS
from spacevista.study.presets import Study

OVERALL = "Overall"
CATEGORIES = tuple(spec.bench_category for spec in SCALE_SPECS)


READINGS = ("lenient", "summary")


def scores(summary: Mapping[str, Any], reading: str = "summary") -> dict[str, float]:
    """{"Overall" or a bench category: score} from one eval output (categories without rows are left out).

    summary: the eval summary's own numbers (`eval run`'s reading: the SpaceVista-Bench scorer's for bench
    entries, which scores a ground truth with a unit such as "48.2 cm" as exact text); lenient: the mean of
    each result row's `lenient_score` (our parsers: units converted, MRA on numbers), from `summary["rows"]`."""
    if reading == "summary":
        out = {OVERALL: summary["overall"]}
        for category, row in (summary.get("per_category") or {}).items():
            if row.get("overall") is not None:
                out[category] = row["overall"]
        return {k: float(v) for k, v in out.items() if v is not None}
    rows = summary["rows"]
    out = {OVERALL: float(np.mean([r["lenient_score"] for r in rows]))}
    for category in CATEGORIES:
        values = [r["lenient_score"] for r in rows if r.get("category") == category]
        if values:
            out[category] = float(np.mean(values))
    return out


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n); nan for one value)."""
    arr = np.asarray(values, dtype=float)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan")
    return float(arr.mean()), se


def paired(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Mean paired difference, its standard error, the 95% t interval and the paired t-test's p-value."""
    from scipy import stats

    diff = np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)
    mean, se = mean_se(diff)
    n = len(diff)
    if n < 2:
        return {"n": n, "mean": mean, "se": se, "low": float("nan"), "high": float("nan"), "p": float("nan")}
    half = float(stats.t.ppf(0.975, n - 1)) * se
    p = float(stats.ttest_rel(values, baseline).pvalue) if se > 0 else (1.0 if mean == 0 else 0.0)
    return {"n": n, "mean": mean, "se": se, "low": mean - half, "high": mean + half, "p": p}


def analyse(study: Study, summaries: Mapping[str, Mapping[int, Mapping[str, Any]]],
            reading: str = "summary") -> dict[str, Any]:
    """{variants: {name: {metric: {mean, se, n, values}}}, differences: {name: {metric: paired(...)}}}; the
    differences use the seeds both the variant and the baseline have."""
    per_seed = {name: {seed: scores(s, reading) for seed, s in runs.items()} for name, runs in summaries.items()}
    present = {metric for runs in per_seed.values() for row in runs.values() for metric in row}
    metrics = [OVERALL, *(c for c in CATEGORIES if c in present)]
    variants: dict[str, dict[str, Any]] = {}
    for name, runs in per_seed.items():
        variants[name] = {}
        for metric in metrics:
            values = [runs[s][metric] for s in sorted(runs) if metric in runs[s]]
            if values:
                mean, se = mean_se(values)
                variants[name][metric] = {"mean": mean, "se": se, "n": len(values),
                                          "values": {s: runs[s][metric] for s in sorted(runs) if metric in runs[s]}}
    base = per_seed.get(study.baseline, {})
    differences: dict[str, dict[str, Any]] = {}
    for name, runs in per_seed.items():
        if name == study.baseline:
            continue
        differences[name] = {}
        for metric in metrics:
            seeds = [s for s in sorted(runs) if s in base and metric in runs[s] and metric in base[s]]
            if seeds:
                differences[name][metric] = {**paired([runs[s][metric] for s in seeds],
                                                      [base[s][metric] for s in seeds]), "seeds": seeds}
    return {"study": study.name, "question": study.question, "baseline": study.baseline, "reading": reading,
            "metrics": metrics,
            "variants": variants, "differences": differences}


def _pct(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def markdown(analysis: Mapping[str, Any], commands: Sequence[str], seeds: Sequence[int]) -> str:
    metrics = analysis["metrics"]
    lines = [f"# Study `{analysis['study']}`", "", analysis["question"], "",
             f"Seeds {list(seeds)}; scores in percent on the full held-out split (`eval run`, "
             f"{analysis.get('reading', 'summary')} reading); "
             "mean +- standard error over seeds.", "",
             "| variant | n | " + " | ".join(metrics) + " |", "| :-- | --: |" + " --: |" * len(metrics)]
    for name, row in analysis["variants"].items():
        n = max((cell["n"] for cell in row.values()), default=0)
        cells = [f"{_pct(row[m]['mean'])} +- {_pct(row[m]['se'])}" if m in row else "-" for m in metrics]
        label = f"{name} (baseline)" if name == analysis["baseline"] else name
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences against `{analysis['baseline']}` (same seed), in points: mean [95% t interval], "
              "paired t-test p", "", "| variant | " + " | ".join(metrics) + " |", "| :-- |" + " --: |" * len(metrics)]
    for name, row in analysis["differences"].items():
        cells = [f"{100 * row[m]['mean']:+.1f} [{_pct(row[m]['low'])}, {_pct(row[m]['high'])}] p={row[m]['p']:.2f}"
                 if m in row else "-" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (Overall):", ""]
    for name, row in analysis["variants"].items():
        if OVERALL in row:
            lines.append(f"- {name}: " + ", ".join(f"seed {s} {_pct(v)}" for s, v in row[OVERALL]["values"].items()))
    lines += ["", "Reproduce:", "", "```bash", *commands, "```", ""]
    return "\n".join(lines)


def plot(analysis: Mapping[str, Any], out: Path) -> Path:
    """Grouped bars: metric x variant, error bars = standard error over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, variants = analysis["metrics"], list(analysis["variants"])
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics) + 2), 4), dpi=110)
    for i, name in enumerate(variants):
        row = analysis["variants"][name]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(metrics))]
        means = [100 * row[m]["mean"] if m in row else 0.0 for m in metrics]
        ses = [100 * row[m]["se"] if m in row and math.isfinite(row[m]["se"]) else 0.0 for m in metrics]
        ax.bar(xs, means, width, yerr=ses, capsize=3, label=name)
    ax.set_xticks(range(len(metrics)), metrics, fontsize=8)
    ax.set_ylabel("held-out score (%)")
    ax.set_title(f"study {analysis['study']}: mean +- s.e. over seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def write_report(out_dir: Path, analysis: Mapping[str, Any], commands: Sequence[str], seeds: Sequence[int]) -> Path:
    """report.md, report.json and report.png in `out_dir`; returns the markdown's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps({**analysis, "commands": list(commands)}, indent=1))
    plot(analysis, out_dir / "report.png")
    path = out_dir / "report.md"
    path.write_text(markdown(analysis, commands, seeds))
    return path
