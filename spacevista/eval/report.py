"""What an evaluation leaves behind: results.jsonl, summary.json, leaderboard.md, per_scale.png,
results_<name>_metrics.json (the official scorer's metrics), reading_differences.jsonl, and the tables
that put several runs side by side (Markdown and rich). Every JSON file is strict (no NaN)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from spacevista.eval.official import json_key
from spacevista.eval.summary import METRICS
from spacevista.scales import SCALE_SPECS

RESULTS, SUMMARY, LEADERBOARD, PLOT = "results.jsonl", "summary.json", "leaderboard.md", "per_scale.png"
DIFFERENCES = "reading_differences.jsonl"
PAPER_CATEGORIES: tuple[str, ...] = ("TinyTabletop", "Tabletop", "Indoor", "Outdoor")  # the paper's columns
DISPLAY: dict[str, str] = {s.bench_category: s.display for s in SCALE_SPECS}
METRIC_LABELS: dict[str, str] = {"mc_accuracy": "MC accuracy", "num_MRA": "Numeric MRA",
                                 "text_accuracy": "Text accuracy", "count_accuracy": "Count accuracy"}

Run = tuple[str, Mapping[str, Any]]  # (label, summary)


def strict(value: Any) -> Any:
    """`value` made strict JSON: a non-finite float becomes its Python spelling ("nan", "inf"), which
    both readings read back as they read the float; dict keys become strings as json writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {json_key(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """Strict JSON; a value nested too deeply to write becomes a note saying so."""
    try:
        return json.dumps(strict(value), allow_nan=False, **kwargs)
    except RecursionError:
        return json.dumps({"unwritable": "nested too deeply to write"})


def metrics_file(name: str) -> str:
    """Where the official scorer would save its metrics for `results_<name>.jsonl`."""
    return f"results_{re.sub(r'[^A-Za-z0-9._+-]', '_', name)}_metrics.json"


def write_outputs(out_dir: Path, results: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                  metrics: Mapping[str, Any] | None = None, differences: Sequence[Mapping[str, Any]] = ()) -> None:
    """results.jsonl, summary.json, leaderboard.md, per_scale.png, reading_differences.jsonl and, given
    the official metrics, results_<name>_metrics.json in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / RESULTS).open("w", encoding="utf-8") as fh:
        for row in results:
            fh.write(dumps(row) + "\n")
    with (out_dir / DIFFERENCES).open("w", encoding="utf-8") as fh:
        for row in differences:
            fh.write(dumps(row) + "\n")
    if metrics is not None:  # as the official scorer writes it: indent 2, non-ASCII kept
        (out_dir / metrics_file(summary.get("name") or out_dir.name)).write_text(
            dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8", errors="backslashreplace")
    (out_dir / SUMMARY).write_text(dumps(summary, indent=1) + "\n")
    (out_dir / LEADERBOARD).write_text(leaderboard_markdown([(summary.get("name") or out_dir.name, summary)]))
    plot_per_scale(summary, out_dir / PLOT)


def load_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SUMMARY if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {SUMMARY} (an `eval run` or `eval score` output directory)")
    return json.loads(path.read_text())


def categories(runs: Sequence[Run]) -> list[str]:
    """The paper's four columns, plus any other scale (Drone) present in a run."""
    present = {c for _, s in runs for c in s.get("per_category", {})}
    return [s.bench_category for s in SCALE_SPECS
            if s.bench_category in PAPER_CATEGORIES or s.bench_category in present]


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    align = [":--"] * left + ["--:"] * (len(header) - left)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(row) + " |" for row in rows)]


def leaderboard_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """The paper's leaderboard: Overall then one column per scale, one row per run (scores in %)."""
    cats = categories(runs)
    header = ["Model", "Overall", *(DISPLAY[c] for c in cats)]
    rows = [[label, pct(s.get("overall")), *(pct(s.get("per_category", {}).get(c, {}).get("overall")) for c in cats)]
            for label, s in runs]
    return header, rows


def leaderboard_markdown(runs: Sequence[Run]) -> str:
    """Leaderboard, answer types per scale, task types, router accuracy: Markdown, scores in %."""
    cats = categories(runs)
    lines = ["# SpaceVista-Bench results", "",
             "Scores in % (mean per-sample score: accuracy for multiple choice, text and counts; MRA over "
             "thresholds 0.50..0.95 for numbers).", "", *_md_table(*leaderboard_rows(runs))]
    by_metric = [[label, METRIC_LABELS[m], *(pct(s.get("per_category", {}).get(c, {}).get(m)) for c in cats)]
                 for label, s in runs for m in METRICS
                 if any(row.get(m) is not None for row in s.get("per_category", {}).values())]
    lines += ["", "## By answer type", "", *_md_table(["Model", "Metric", *(DISPLAY[c] for c in cats)], by_metric, 2)]
    tasks = sorted({t for _, s in runs for t in s.get("per_type", {})})
    by_task = [[task, *(_task_cell(s.get("per_type", {}).get(task)) for _, s in runs)] for task in tasks]
    lines += ["", "## By task type (score, n)", "", *_md_table(["Task", *(label for label, _ in runs)], by_task)]
    routed = [(label, s["router"]) for label, s in runs if s.get("router")]
    if routed:
        rows = [[label, pct(r["accuracy"]), *(pct(r["per_category"].get(c)) for c in cats)] for label, r in routed]
        lines += ["", "## Router accuracy", "", *_md_table(["Model", "Overall", *(DISPLAY[c] for c in cats)], rows)]
    bad = [(label, s["malformed"]["count"]) for label, s in runs if s.get("malformed", {}).get("count")]
    if bad:
        lines += ["", *(f"- {label}: {n} malformed line(s) not scored (see summary.json)" for label, n in bad)]
    return "\n".join(lines) + "\n"


def _task_cell(row: Mapping[str, Any] | None) -> str:
    return "–" if row is None else f"{pct(row['score'])} ({row['count']})"


def leaderboard_table(runs: Sequence[Run], title: str = "SpaceVista-Bench (scores in %)") -> Table:
    """The leaderboard as a rich table, with router accuracy and malformed lines where any run has them."""
    header, rows = leaderboard_rows(runs)
    has_router = any(s.get("router") for _, s in runs)
    has_malformed = any(s.get("malformed", {}).get("count") for _, s in runs)
    table = Table(title=title)
    table.add_column(header[0], overflow="fold")
    for column in [*header[1:], *(["router"] if has_router else []), *(["malformed"] if has_malformed else [])]:
        table.add_column(column, justify="right")
    for row, (_, s) in zip(rows, runs):
        if has_router:
            row.append(pct((s.get("router") or {}).get("accuracy")))
        if has_malformed:
            row.append(str(s.get("malformed", {}).get("count", 0)))
        table.add_row(*row)
    return table


def category_table(summary: Mapping[str, Any]) -> Table:
    """One run per scale: n, overall, each answer-type metric and router accuracy (scores in %)."""
    table = Table("scale", "n", "overall", *(METRIC_LABELS[m] for m in METRICS), "router",
                  title=f"{summary.get('name') or 'eval'}: per scale (scores in %)")
    router = summary.get("router") or {"per_category": {}}
    for cat, row in summary["per_category"].items():
        table.add_row(DISPLAY[cat], str(row["count"]), pct(row["overall"]), *(pct(row[m]) for m in METRICS),
                      pct(router["per_category"].get(cat)))
    table.add_row("all", str(summary["total_count"]), pct(summary["overall"]), *[""] * len(METRICS),
                  pct(router.get("accuracy")), style="bold")
    return table


def plot_per_scale(summary: Mapping[str, Any], out: Path) -> Path:
    """Grouped bars per scale: overall and each answer-type metric present (fractions in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_category = summary.get("per_category", {})
    cats = list(per_category)
    series = ["overall", *(m for m in METRICS if any(per_category[c].get(m) is not None for c in cats))]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * max(len(cats), 1), 4.0), dpi=110)
    width = 0.8 / len(series)
    for i, metric in enumerate(series):
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(cats))]
        ys = [per_category[c].get(metric) for c in cats]  # None: no such question at this scale, no bar
        bars = ax.bar(xs, [float("nan") if y is None else y for y in ys], width,
                      label=METRIC_LABELS.get(metric, "Overall"))
        ax.bar_label(bars, labels=["" if y is None else pct(y) for y in ys], fontsize=6)
    ax.set_xticks(range(len(cats)), [DISPLAY[c] for c in cats])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score (bar labels in %)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    overall = summary.get("overall")
    ax.set_title(f"{summary.get('name') or 'eval'}: overall {pct(overall)}%", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
