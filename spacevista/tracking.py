"""What users watch: progress bar, per-scale reward tables, TensorBoard/W&B scalars, metrics.jsonl, PNG curves."""

from __future__ import annotations

import json
import math
import numbers
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from spacevista.configs.schema import LogConfig
from spacevista.scales import SCALES

# a log file (not a terminal) would get rich's 80-column default and cut the per-scale tables
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def reward_table(title: str, per_scale: Mapping[str, Mapping[str, float]]) -> Table:
    """Rows: scales (near -> far) and overall; columns: reward components and total."""
    comps = sorted({c for v in per_scale.values() for c in v if c not in ("total", "samples")})
    tail = [c for c in ("total", "samples") if any(c in v for v in per_scale.values())]
    table = Table(title=title)
    table.add_column("scale")
    for c in comps + tail:
        table.add_column(c, justify="right")
    order = [s for s in SCALES if s in per_scale] + [s for s in per_scale if s not in SCALES]
    for scale in order:
        row = per_scale[scale]
        cells = [(str(int(row[c])) if c == "samples" else f"{row[c]:.3f}") if c in row else "-" for c in comps + tail]
        table.add_row(scale, *cells)
    return table


def compare_table(title: str, rows: Mapping[str, Mapping[str, list]], metrics: tuple[str, ...]) -> Table:
    """Rows: scales; cells "before -> after" for each metric."""
    table = Table(title=title)
    table.add_column("scale")
    for m in metrics:
        table.add_column(m, justify="right")

    def cell(pair: list) -> str:
        a, b = pair
        if a is None and b is None:
            return "-"
        return f"{'-' if a is None else f'{a:.3f}'} -> {'-' if b is None else f'{b:.3f}'}"

    for scale, row in rows.items():
        table.add_row(scale, *[cell(row[m]) for m in metrics])
    return table


class Tracker:
    """Fan one step's metrics out to every sink the config enables; metrics.jsonl is always written."""

    def __init__(self, run_dir: Path, cfg: LogConfig, total_steps: int, start_step: int,
                 config_dict: dict[str, Any] | None = None):
        self.run_dir = run_dir
        self.cfg = cfg
        self.history_path = run_dir / "metrics.jsonl"
        drop_rows_after(run_dir, start_step)
        self.tb = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step + 1)
        self.wandb = None
        if cfg.wandb_project:
            import wandb
            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(run_dir), config=config_dict,
                                    resume="allow", name=run_dir.name)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                        disable=not cfg.progress, dynamic_ncols=True)
        self.nonfinite: Counter[str] = Counter()  # {metric: rows where it was not a finite number}
        self._last_bad: set[str] = set()

    def log(self, step: int, scalars: Mapping[str, float], postfix: Mapping[str, Any]) -> None:
        """One training step. A value that is not a finite number is never dropped silently: it is
        written as null in metrics.jsonl, counted in `nonfinite` (and in TensorBoard's
        `tracking/nonfinite_metrics`), left out of the TensorBoard/W&B scalars (a gap there), shown
        in the console when the set of such metrics changes and on the progress bar while any is."""
        row, finite, bad = split_finite(scalars)
        with self.history_path.open("a") as fh:
            fh.write(json.dumps({"step": step, **row}, allow_nan=False) + "\n")
        self.nonfinite.update(bad.keys())
        if bad.keys() != self._last_bad:
            listed = ", ".join(f"{k}={v}" for k, v in bad.items()) or "none now"
            self.message(f"step {step}: non-finite metrics (null in metrics.jsonl, a gap in TensorBoard/W&B): "
                         f"{listed}")
            self._last_bad = set(bad)
        if self.tb is not None:
            for k, v in finite.items():
                self.tb.add_scalar(k, v, step)
            self.tb.add_scalar("tracking/nonfinite_metrics", float(len(bad)), step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(finite, step=step)
        self.bar.set_postfix({**postfix, **({"non-finite": len(bad)} if bad else {})}, refresh=False)
        self.bar.update(1)

    def log_eval(self, step: int, per_scale: Mapping[str, Mapping[str, float]]) -> None:
        """Held-out greedy evaluation: eval.jsonl, TensorBoard/W&B under eval/."""
        row, flat, bad = split_finite({(f"eval/{k}" if s == "all" else f"eval/{s}/{k}"): v
                                       for s, scale_row in per_scale.items() for k, v in scale_row.items()})
        with (self.run_dir / "eval.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, **row}, allow_nan=False) + "\n")
        self.nonfinite.update(bad.keys())
        if bad:
            self.message(f"eval @ step {step}: non-finite metrics (null in eval.jsonl): "
                         + ", ".join(f"{k}={v}" for k, v in bad.items()))
        if self.tb is not None:
            for k, v in flat.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(flat, step=step)
        self.message(f"eval @ step {step}: fixed-weight reward {per_scale['all']['fixed_total']:.3f} "
                     f"(format {per_scale['all'].get('format', 0):.2f}, scale {per_scale['all'].get('scale', 0):.2f}, "
                     f"accuracy {per_scale['all'].get('accuracy', 0):.2f})")

    def show(self, table: Table) -> None:
        self.bar.clear()
        console.print(table)
        self.bar.refresh()

    def message(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def split_finite(scalars: Mapping[str, Any]) -> tuple[dict[str, float | None], dict[str, float], dict[str, str]]:
    """(the JSONL row: every key, None where the value is not a finite number; the finite values;
    {key: what it was} for the others: "nan", "inf", or the type of what is not a number)."""
    row: dict[str, float | None] = {}
    finite: dict[str, float] = {}
    bad: dict[str, str] = {}
    for k, v in scalars.items():
        if not isinstance(v, numbers.Real):  # numpy's scalars are; a string or a tensor is not
            row[k], bad[k] = None, type(v).__name__
            continue
        value = float(v)
        if math.isfinite(value):
            row[k] = finite[k] = value
        else:
            row[k], bad[k] = None, repr(value)
    return row, finite, bad


STEP_LOGS = ("metrics.jsonl", "eval.jsonl", "samples.jsonl")  # JSONL logs with one or more rows per step


def drop_rows_after(run_dir: Path, step: int, names: tuple[str, ...] = STEP_LOGS) -> None:
    """Before a run continues from checkpoint `step`, keep only the rows it logged up to that step
    (none when it starts at step 0, whose evaluation runs again), so that no step appears twice.
    Each log is rewritten atomically (temp file + rename)."""
    for name in names:
        path = run_dir / name
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        kept = [x for x in lines if x.strip() and step > 0 and _row_step(x) <= step]
        if len(kept) == len(lines):
            continue
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        tmp.replace(path)


def _row_step(line: str) -> float:
    """The row's step (a row that does not parse, e.g. cut by a crash mid-write, counts as past any step)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def read_history(run_dir: Path, name: str = "metrics.jsonl", nulls: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL log by step; after a resume, a re-run step's newer row replaces the older one.
    A null (a value that was not a finite number when logged) is left out of its row, so that readers
    that average `r[key] for r in rows if key in r` skip it, unless `nulls` keeps it as None."""
    rows: dict[int, dict[str, Any]] = {}
    path = run_dir / name
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[int(row["step"])] = row if nulls else {k: v for k, v in row.items() if v is not None}
    return [rows[k] for k in sorted(rows)]


def plot_reward_curves(run_dir: Path, out: Path | None = None, smoothing: float = 0.8) -> Path | None:
    """PNG of the fixed-weight reward per scale (and overall) against step, smoothed (exponential moving
    average; the raw overall curve faint behind it), curriculum stage changes marked, and the held-out
    greedy eval (eval.jsonl) as points; None if there is no history."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(run_dir)
    if not rows:
        return None
    out = out or run_dir / "reward_curves.png"
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for key, label in [("reward/fixed_total", "all scales")] + [(f"reward/{s}/fixed_total", s) for s in SCALES]:
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            xs, ys = zip(*pts)
            overall = label == "all scales"
            line, = ax.plot(xs, _ema(ys, smoothing), label=label, linewidth=2.2 if overall else 1.2)
            if overall:
                ax.plot(xs, ys, color=line.get_color(), alpha=0.25, linewidth=1)
    stages = [(r["step"], r["curriculum/stage"]) for r in rows if r.get("curriculum/stage") is not None]
    for (_, before), (step, stage) in zip(stages, stages[1:]):
        if stage != before:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
            ax.text(step, 0.02, f" stage {int(stage)}", fontsize=7, color="grey", rotation=90, va="bottom")
    evals = [(r["step"], r["eval/fixed_total"]) for r in read_history(run_dir, "eval.jsonl")
             if r.get("eval/fixed_total") is not None]
    if evals:
        ax.plot(*zip(*evals), "ko--", markersize=4, linewidth=1, label="held-out eval (greedy)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"stepwise reward (fixed weights; EMA {smoothing:g})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(f"SpaceVista-RL reward by scale — {run_dir.name}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _ema(values: Sequence[float], alpha: float) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing), debiased so the first points are not pulled to 0."""
    out, acc = [], 0.0
    for i, value in enumerate(values, start=1):
        acc = alpha * acc + (1 - alpha) * value
        out.append(acc / (1 - alpha ** i) if alpha < 1 else value)
    return out
