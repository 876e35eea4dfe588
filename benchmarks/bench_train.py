"""End-to-end RL step: our `spacevista train` (Ray actors) vs TRL's `GRPOTrainer` on the same work.

    OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/bench_train.py \
        [--steps 20] [--warmup 2] [--trl-threads 1 2] [--results benchmarks/RESULTS.md]

TRL is a benchmark-only dependency: `.venv/bin/pip install 'trl>=1.16,<1.17'` (the `bench` extra).

What is held equal (all read from one composed `TrainConfig`, the embedded default):
- the policy: the exact tiny Qwen2.5-VL directory our run builds (`setup.prepare_model(cfg)`), float32;
- the batch: rollout.prompts_per_step prompts x rollout.n samples = completions per step; TRL's
  `per_device_train_batch_size` counts completions, so it is set to that product, `num_generations`
  = rollout.n, one generation batch and one optimizer step per step (gradient_accumulation_steps=1);
- generation: rollout.max_tokens new tokens at most, temperature / top_p from the config, top_k off,
  the vision placeholder tokens suppressed (our rollout never samples them either);
- the prompts: the same records in the same order. Our run is timed first; its metrics.jsonl says
  which curriculum stage each step used, and TRL's dataset replays our `ScaleSampler` (same seed)
  with those stages' scale weights. Media: our prompts carry a 4-frame video; TRL 1.16's GRPO
  VLM path cannot train on video (its log-prob forward passes only `pixel_values`/`image_grid_thw`),
  so TRL gets the first frame as an image (56x56: 4 visual tokens instead of the video's 8);
- the update: LoRA with our rank/alpha/dropout on the same target modules (the language model's
  q/k/v/o/gate/up/down projections; vision tower frozen), lr / weight decay / grad clip / betas from
  learner.optim, constant schedule, KL coefficient `beta` = learner.objective.kl_coef (a reference
  forward with the adapter off, as ours does with the experts off), clip epsilon = clip_ratio,
  token-mean loss (TRL `loss_type="dapo"`), group-std advantage scaling, one iteration per batch,
  no gradient checkpointing (TRL defaults it to True). We train five per-scale experts, each sample
  through its scale's expert; TRL trains one adapter: the same LoRA FLOPs per sample.
- the reward: `spacevista.rewards.compute_score` (the stepwise reward) wrapped as a TRL reward function.

Ours runs as the embedded default (local Ray it starts itself; 1 rollout + 1 reward actor; FSDP learner
ranks: 2 by default, and a 1-rank variant), SFT warm-up off, no eval, no plots, no TensorBoard.
Each variant runs in its own subprocess. Step time: ours `time/step_s` from metrics.jsonl (prompt
sampling + frame decoding through the learner update and adapter publication); TRL the time from
`on_step_begin` to `on_step_end` (generation, reward, reference and policy forward/backward,
optimizer), with the end-to-end interval between consecutive `on_step_end`s shown too. The first
`--warmup` steps are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_OVERRIDES = ["learner.sft.steps=0", "eval_every=0", "log.plot=false", "log.tensorboard=false",
                  "cluster.temp_dir=/tmp/svbench-ray"]


SETS: list[str] = []  # --set KEY=VALUE: Hydra overrides for both peers' config (the work held equal)


def _overrides(steps: int, learners: int | None = None) -> list[str]:
    out = [f"steps={steps}", f"checkpoint_every={steps}", "resume=never", *BASE_OVERRIDES, *SETS]
    if learners is not None and learners != 2:
        out.append(f"cluster.learner.count={learners}")
    return out


def _config(steps: int, learners: int | None = None):
    from spacevista.configs.loader import compose, to_train_config

    return to_train_config(compose(_overrides(steps, learners)))


# ---- workers (each runs in its own process) ------------------------------------------------------
def worker_ours(args: argparse.Namespace) -> dict:
    from spacevista.actors.controller import run_training

    cfg = _config(args.steps, args.learners)
    run_dir = Path(args.out) / f"ours-{args.learners}rank"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    run_training(cfg, run_dir)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["step"])

    def col(key: str) -> list[float]:
        return [float(r.get(key, float("nan"))) for r in rows]

    return {"kind": "ours", "learners": args.learners, "async": cfg.async_rollout, "run_dir": str(run_dir),
            "wall_s": wall,
            "completions": cfg.rollout.prompts_per_step * cfg.rollout.n,
            "step_s": col("time/step_s"), "generate_s": col("time/generate_s"), "reward_s": col("time/reward_s"),
            "learn_s": col("time/learn_s"), "learner_compute_s": col("learner/step_time_s"),
            "length_mean": col("response/length_mean"), "stage": [int(x) for x in col("curriculum/stage")]}


def wait_for_quiet(limit: float, max_wait_s: int = 600) -> list[float]:
    waited = 0
    while os.getloadavg()[0] > limit and waited < max_wait_s:
        print(f"load average {os.getloadavg()[0]:.2f} > {limit}: waiting 60 s", flush=True)
        time.sleep(60)
        waited += 60
    return [round(x, 2) for x in os.getloadavg()]


def run_worker(extra: list[str], args: argparse.Namespace, name: str) -> dict:
    out = Path(args.out) / f"{name}.json"
    out.unlink(missing_ok=True)
    load_before = wait_for_quiet(args.max_load)
    cmd = [sys.executable, __file__, "--out", args.out, "--steps", str(args.steps), "--json", str(out), *extra,
           *[f"--set={kv}" for kv in SETS]]
    print(f"\n=== {name} (load {load_before}) ===\n{' '.join(cmd)}", flush=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hog)]
    try:
        subprocess.run(cmd, check=True, env=env, cwd=REPO)
    finally:
        for hog in hogs:  # our own busy loops, by pid
            hog.kill()
            hog.wait()
    result = json.loads(out.read_text())
    result["load_before"], result["load_after"] = load_before, [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(result))
    return result


def summarize(r: dict, warmup: int) -> dict:
    def med(key: str) -> float | None:
        vals = [v for v in r.get(key, [])[warmup:] if v == v]
        return statistics.median(vals) if vals else None

    step = med("step_s")
    vals = r["step_s"][warmup:]
    return {"step": step, "samples_s": r["completions"] / step, "min": min(vals), "max": max(vals), "n": len(vals),
            "generate": med("generate_s"), "reward": med("reward_s"), "learn": med("learn_s"),
            "learner_compute": med("learner_compute_s"), "interval": med("interval_s"), "length": med("length_mean")}


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2, help="steps skipped at the start of every run")
    p.add_argument("--learners", type=int, nargs="+", default=[2, 1], help="our learner rank counts to time")
    p.add_argument("--trl-threads", type=int, nargs="+", default=None,
                   help="torch threads for TRL runs (default: OMP_NUM_THREADS, else 1)")
    p.add_argument("--max-load", type=float, default=1.5, help="wait (<= 10 min) while the 1-min load is above")
    p.add_argument("--out", default="/tmp/svbench-train", help="run directories and per-run JSON")
    p.add_argument("--results", help="append the table and command to this markdown file")
    p.add_argument("--from-json", action="store_true",
                   help="do not run: rebuild the table from the per-run JSON files an earlier run left in --out")
    # worker mode (internal)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override of the config both peers read (repeatable), e.g. --set rollout.n=4")
    p.add_argument("--hog", type=int, default=0,
                   help="busy-loop processes (ordinary priority) running beside each timed run: a shared machine")
    p.add_argument("--worker", choices=["ours", "trl"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--stages", default="")
    p.add_argument("--json")
    args = p.parse_args()
    SETS.extend(args.set)

    if args.worker:
        args.learners = args.learners[0]
        if args.worker == "ours":
            result = worker_ours(args)
        else:
            from trl_peer import worker_trl  # benchmarks/ is on sys.path: this script's own folder

            result = worker_trl(args, _config(args.steps))
        Path(args.json).write_text(json.dumps(result))
        return

    Path(args.out).mkdir(parents=True, exist_ok=True)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    trl_threads = args.trl_threads or [int(omp) if omp.isdigit() else 1]
    args.trl_threads = trl_threads
    results = []
    if args.from_json:
        names = [f"ours-{k}rank" for k in args.learners] + [f"trl-{t}t" for t in trl_threads]
        results = [json.loads((Path(args.out) / f"{n}.json").read_text()) for n in names]
    else:
        for k in args.learners:
            results.append(run_worker(["--worker", "ours", "--learners", str(k)], args, f"ours-{k}rank"))
        stages = results[0]["stage"] if results else []
        for t in trl_threads:
            results.append(run_worker(["--worker", "trl", "--threads", str(t), "--stages", json.dumps(stages)],
                                      args, f"trl-{t}t"))

    trl_runs = [r for r in results if r["kind"] == "trl"]
    refs = [(r["threads"], summarize(r, args.warmup)) for r in trl_runs]
    header = ("| run | torch threads / process | steps timed | median s/step (min-max) | samples/s | generate s | "
              "reward s | learn s | mean completion tokens | "
              + " | ".join(f"s/step ÷ TRL {t} thread{'s' if t > 1 else ''}" for t, _ in refs) + " |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        s = summarize(r, args.warmup)
        if r["kind"] == "ours":
            name = (f"ours: `spacevista train`, {r['learners']} learner rank{'s' if r['learners'] > 1 else ''}"
                    + (", async rollout" if r.get("async") else ", sync"))
            threads = f"1 (each of {r['learners'] + 2} actors)"
            learn = f"{fmt(s['learn'])} (learner compute {fmt(s['learner_compute'])})"
        else:
            name = "TRL `GRPOTrainer`"
            threads = str(r["threads"])
            learn = f"{fmt(s['learn'])} (incl. ref fwd)"
        ratios = " | ".join(fmt(s["step"] / ref["step"], 2) for _, ref in refs)
        lines.append(f"| {name} | {threads} | {s['n']} | {fmt(s['step'])} ({fmt(s['min'])}-{fmt(s['max'])}) | "
                     f"{s['samples_s']:.1f} | {fmt(s['generate'])} | {fmt(s['reward'], 4)} | {learn} | "
                     f"{fmt(s['length'], 1)} | {ratios} |")
    table = "\n".join(lines)
    print("\n" + table)
    for r in results:
        s = summarize(r, args.warmup)
        extra = f", end-to-end interval median {fmt(s['interval'])} s" if r["kind"] == "trl" else ""
        print(f"{_label(r)}: wall {r['wall_s']:.1f} s for {len(r['step_s'])} steps{extra}; "
              f"load before {r['load_before']}, after {r['load_after']}")
    if args.results:
        write_results(args, results, table)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _label(r: dict) -> str:
    return f"ours-{r['learners']}rank" if r["kind"] == "ours" else f"trl-{r['threads']}t"


def write_results(args: argparse.Namespace, results: list[dict], table: str) -> None:
    import torch
    import transformers

    trl_runs = [r for r in results if r["kind"] == "trl"]
    cfg = _config(args.steps)
    ro, lora, opt, obj = cfg.rollout, cfg.model.lora, cfg.learner.optim, cfg.learner.objective
    cmd = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} RAY_USAGE_STATS_ENABLED=0 "
           f".venv/bin/python benchmarks/bench_train.py --steps {args.steps} --warmup {args.warmup} "
           f"--learners {' '.join(map(str, args.learners))}"
           + "".join(f" --set {kv}" for kv in args.set) + (f" --hog {args.hog}" if args.hog else "")
           + (f" --trl-threads {' '.join(str(r['threads']) for r in trl_runs)}" if trl_runs else "")
           + f" --results {args.results}")
    loads = "; ".join(f"{_label(r)} {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}" for r in results)
    versions = trl_runs[0]["versions"] if trl_runs else {}
    split = []
    for r in results:
        s = summarize(r, args.warmup)
        vals = r["step_s"][args.warmup:]
        spikes = sum(v > 2 * s["step"] for v in vals)
        part = (f"{_label(r)}: generate {100 * s['generate'] / s['step']:.0f}%, "
                f"reward {100 * s['reward'] / s['step']:.1f}%, learn {100 * s['learn'] / s['step']:.0f}%")
        if r["kind"] == "ours" and s["learner_compute"] is not None:
            part += (f" (the rank's own update {s['learner_compute']:.3f} s; the other "
                     f"{s['learn'] - s['learner_compute']:.3f} s is collate, adapter publication and Ray round trips)")
        if r["kind"] == "trl":
            part += f"; end-to-end interval between steps {s['interval']:.3f} s"
        if spikes:
            part += f"; {spikes} of {len(vals)} timed steps took > 2x the median (other work on the shared cores)"
        split.append(f"- {part}.")
    rewards_note = ("Every sampled completion scored 0 in every run (the random-init policy never writes the "
                    "`<think>/<scale>/<answer>` format; TRL logs `frac_reward_zero_std` = 1), so advantages were 0; "
                    "both still run generation, the reference and policy forwards, the backward and the optimizer "
                    "step, so the timing holds, but nothing was learned.")
    text = f"""
## End-to-end RL step: ours vs TRL `GRPOTrainer` (`benchmarks/bench_train.py`, {time.strftime('%Y-%m-%d')})

Command: `{cmd}`
(`trl` installed into the main venv for this only: `.venv/bin/pip install 'trl>=1.16,<1.17'` added trl
{versions.get('trl', '-')} and changed nothing else.)
Machine: {_cpu_model()}, {os.cpu_count()} cores shared with other jobs, Python {platform.python_version()};
torch {torch.__version__}, transformers {transformers.__version__}. One run of each, one after another;
1-minute load average before -> after each: {loads}.

Work per step (both): the embedded default's tiny Qwen2.5-VL (float32, the directory
`prepare_model(cfg)` returns),
{ro.prompts_per_step} prompts x {ro.n} samples = {ro.prompts_per_step * ro.n} completions,
at most {ro.max_tokens} new tokens, temperature {ro.temperature}, vision placeholder tokens suppressed;
LoRA r={lora.rank} / alpha={lora.alpha} on the language model's q/k/v/o/gate/up/down projections, vision
tower frozen (ours: five per-scale experts, each sample through its scale's; TRL: one adapter via
`peft_config`, the same LoRA work per sample); lr {opt.lr}, constant, grad clip {opt.grad_clip};
KL coefficient {obj.kl_coef} (a reference forward with the adapters off), clip {obj.clip_ratio}, token-mean
loss (TRL `loss_type="dapo"`), one update per batch; stepwise reward (TRL: `compute_score` wrapped as its
reward function). Same records in the same order: TRL replays our `ScaleSampler` (same seed) with the
curriculum stage our 2-rank run used at each step. Media: ours a 4-frame 56x56 video (8 visual tokens);
TRL 1.16's GRPO cannot train on video (its log-prob forward passes only image tensors), so TRL gets the
first frame as an image (4 visual tokens). {args.steps} steps a run, the first {args.warmup} skipped.
Ours: local Ray started by `train`, 1 rollout + 1 reward actor + N FSDP learner ranks (gloo), one torch
thread per actor, SFT warm-up off, no eval / plots / TensorBoard; step time = `time/step_s` from
metrics.jsonl. TRL: one process, `GRPOConfig(use_cpu=True, bf16=False, gradient_checkpointing=False,
...)`; step time = `on_step_begin` -> `on_step_end` (its generate / reward columns time `_generate` /
`_calculate_rewards`; learn = the rest, reference forward included).
samples/s = completions per step / median step time.

{table}

Where the time goes (medians, share of the step):
{chr(10).join(split)}

{rewards_note}
Ours also trains the scale router's classifier in every learner step (TRL has no counterpart; small), and
ours' prompts carry twice TRL's visual tokens (video vs one frame).

TRL 1.16 notes: `GRPOConfig` defaults `gradient_checkpointing=True`, `bf16=True` and `learning_rate=1e-6` (all set
here); `per_device_train_batch_size` counts completions and `generation_batch_size` defaults to it (x processes x
steps_per_generation), which must be a multiple of `num_generations`; `shuffle_dataset=False` keeps the dataset
order; with plain-string prompt content and an `image` column, TRL inserts the image slot before the user text;
the reward function gets conversational completions as `[{{"role": "assistant", "content": ...}}]` and extra dataset
columns as keyword arguments; the tiny policy's config (eos `[2, 0]`, bos 0) differs from the tokenizer's
(eos 0, bos None), so transformers rewrites the config's ids with a warning (generation still stops on both).
"""
    with open(args.results, "a") as fh:
        fh.write(text)
    print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
