"""The end-of-run report: per-scale rewards, first vs last quarter of training, held-out eval before
vs after, summary.json and the PNG of reward curves, all read from the run's logs, so that a resumed
or recovered run reports its whole history (the logs hold one row per step)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spacevista.curriculum import Curriculum, StageChange
from spacevista.scales import SCALES
from spacevista.tracking import Tracker, compare_table, console, plot_reward_curves, read_history

METRICS = ("fixed_total", "format", "scale", "accuracy")


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_reward: float
    history: list[dict[str, float]] = field(default_factory=list)
    stage_changes: list[StageChange] = field(default_factory=list)


def compare(before: list[dict[str, float]], after: list[dict[str, float]], prefix: str) -> dict[str, dict[str, list]]:
    """{scale: {metric: [mean before, mean after]}} over the rows given (None where a scale is absent)."""
    def mean(rows: list[dict[str, float]], key: str) -> float | None:
        vals = [r[key] for r in rows if key in r]
        return round(float(np.mean(vals)), 4) if vals else None

    table = {}
    for scale in ["all", *SCALES]:
        head = prefix if scale == "all" else f"{prefix}/{scale}"
        row = {m: [mean(before, f"{head}/{m}"), mean(after, f"{head}/{m}")] for m in METRICS}
        if any(v != [None, None] for v in row.values()):
            table[scale] = row
    common = [s for s in SCALES if s in table and None not in table[s]["fixed_total"]]
    if common and len(common) < len(table) - 1:  # the curriculum changed the mix: compare like with like
        table["common scales"] = {m: [round(float(np.mean([table[s][m][i] for s in common
                                                            if table[s][m][i] is not None])), 4)
                                      for i in (0, 1)] for m in METRICS}
    return table


def finish(run_dir: Path, curriculum: Curriculum, plot: bool, tracker: Tracker) -> TrainResult:
    """The report over every step in metrics.jsonl and eval.jsonl (this process's steps and any before a resume)."""
    history = read_history(run_dir)
    if not history:
        return TrainResult(run_dir, 0, float("nan"), history, curriculum.history)
    q = max(1, len(history) // 4)
    train_table = compare(history[:q], history[-q:], "reward")
    tracker.show(compare_table(f"training reward, first vs last {q} steps (fixed weights)", train_table, METRICS))
    evals = read_history(run_dir, "eval.jsonl")
    eval_table = compare(evals[:1], evals[-1:], "eval") if len(evals) > 1 else {}
    if eval_table:
        tracker.show(compare_table(f"held-out greedy eval, step {int(evals[0]['step'])} vs step "
                                   f"{int(evals[-1]['step'])}", eval_table, METRICS))
    if plot:
        console.print(f"reward curves: {plot_reward_curves(run_dir)}")
    summary = {"steps": len(history), "first_step": int(history[0]["step"]), "last_step": int(history[-1]["step"]),
               "quarter_steps": q, "train": train_table, "eval": eval_table,
               "stage_changes": [vars(c) for c in curriculum.history]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    final = (eval_table or train_table)["all"]["fixed_total"][1]
    return TrainResult(run_dir, int(history[-1]["step"]), final, history, curriculum.history)
