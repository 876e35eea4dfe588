"""The training recipe: one GRPO step after another across Ray actors, under the curriculum.

    sample prompts (curriculum mix) -> generate (routed experts) -> score (stepwise + plugins)
    -> advantages (verl) -> update experts (FSDP learner ranks) -> sync adapters -> log
    -> maybe checkpoint -> curriculum observes per-scale rewards and may advance

Everything heavy lives in the components (data, rollout, rewards, policies, curriculum); this file
only wires them, and reads top to bottom.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from spacevista import checkpointing
from spacevista.actors.learner import LearnerGroup
from spacevista.actors.pool import WorkerPool
from spacevista.actors.setup import (PreparedRun, prepare_run, reward_config_dict, start_ray,
                                     stage_reward_weights, validate_config)
from spacevista.cluster.metrics import RayMetrics
from spacevista.cluster.resources import check_cluster, reserve
from spacevista.configs.schema import TrainConfig
from spacevista.curriculum import Curriculum, StageChange
from spacevista.data.frames import load_images, load_video
from spacevista.data.schema import Record
from spacevista.policies.batch import TrainSample
from spacevista.policies.objectives import compute_advantages
from spacevista.rewards.stepwise import RewardBreakdown, aggregate_breakdowns
from spacevista.scales import format_output
from spacevista.rollout.engine import Completion, GenerationRequest, SamplingParams
from spacevista.tracking import Tracker, console, plot_reward_curves, reward_table


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_reward: float
    history: list[dict[str, float]] = field(default_factory=list)
    stage_changes: list[StageChange] = field(default_factory=list)


# ---- conversions between the components' types --------------------------------------------------
def to_requests(records: list[Record], step: int) -> list[GenerationRequest]:
    """Label routing (the training anchor): each prompt goes to its record's scale expert."""
    return [GenerationRequest(request_id=f"{step}:{i}:{r.id}", messages=list(r.prompt), expert=r.scale,
                              images=load_images(r), videos=[load_video(r, v) for v in range(len(r.videos))])
            for i, r in enumerate(records)]


def score_items(records: list[Record], completions: list[Completion], n: int) -> list[tuple]:
    return [(records[i // n].ground_truth_dict(), c.text, records[i // n].data_source, None)
            for i, c in enumerate(completions)]


def per_scale_means(breakdowns: list[RewardBreakdown]) -> dict[str, dict[str, float]]:
    """{scale: {component: mean, "accuracy": the answer component, "total", "count"}} (+ "all")."""
    table = aggregate_breakdowns(breakdowns, by="scale")
    out = {}
    for scale, row in table.items():
        answer = [row[k] for k in ("numeric", "choice", "count", "text") if k in row]
        out[scale] = {k: v for k, v in row.items() if k not in ("n", "errors")}
        out[scale]["count"] = row["n"]
        if answer:  # mean over answer types weighted by how often each occurs is in "total"; this is the plain mean
            out[scale]["accuracy"] = float(np.mean(answer))
    return out


def train_samples(requests: list[GenerationRequest], records: list[Record], completions: list[Completion],
                  advantages: torch.Tensor, n: int) -> list[TrainSample]:
    return [TrainSample(messages=requests[i // n].messages, images=requests[i // n].images,
                        videos=requests[i // n].videos, response_ids=c.response_ids, old_logprobs=c.logprobs,
                        advantage=float(advantages[i]), expert=c.expert, scale_label=records[i // n].scale,
                        uid=requests[i // n].request_id, record_id=records[i // n].id)
            for i, c in enumerate(completions)]


def sft_targets(records: list[Record]) -> list[str]:
    """The reference completion in the output format (synthetic records carry one with a reasoning line)."""
    return [r.meta.get("reference") or format_output("", r.scale, r.answer.text()) for r in records]


# ---- the loop ----------------------------------------------------------------------------------
def train(cfg: TrainConfig, run_dir: Path, config_dict: dict[str, Any] | None = None) -> TrainResult:
    validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]SpaceVista-RL[/bold] run directory: {run_dir}")
    prep: PreparedRun = prepare_run(cfg, run_dir)
    owns_ray = start_ray(cfg.cluster, run_dir)
    try:
        return _train(cfg, run_dir, prep, config_dict)
    finally:
        if owns_ray:
            ray.shutdown()


def _train(cfg: TrainConfig, run_dir: Path, prep: PreparedRun, config_dict: dict[str, Any] | None) -> TrainResult:
    check_cluster(cfg.cluster)
    run_name = run_dir.name
    curriculum = Curriculum(cfg.curriculum)
    sampler = prep.sampler
    resume_from = checkpointing.resolve_resume(cfg.resume, run_dir)
    start_step = 0
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    learners = LearnerGroup(cfg, prep.model_path, reserve("learner", cfg.cluster.learner), run_name)
    if resume_from is not None:
        state = learners.load(resume_from)
        curriculum.load_state_dict(state["curriculum"])
        sampler.load_state_dict(state["sampler"])
        start_step = checkpointing.checkpoint_step(resume_from)
        console.print(f"resumed from {resume_from} (step {start_step}, stage {curriculum.stage.name!r})")
    elif cfg.learner.sft.steps > 0:
        _sft_warmup(cfg, prep, learners)

    policy_path = learners.export_policy(run_dir / "policy") if cfg.learner.sft.full_params else prep.model_path
    rollout = WorkerPool.rollout(cfg, str(policy_path), reserve("rollout", cfg.cluster.rollout), run_name)
    reward = WorkerPool.reward(cfg, reward_config_dict(cfg.reward), reserve("reward", cfg.cluster.reward), run_name)
    expert_refs = learners.expert_refs(version=start_step)  # what rollout workers must serve now

    tracker = Tracker(run_dir, cfg.log, cfg.steps, start_step, config_dict)
    metrics = RayMetrics(cfg.cluster.metrics_prefix) if cfg.log.ray_metrics else None
    n = cfg.rollout.n
    history: list[dict[str, float]] = []
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            stage = curriculum.stage
            sampler.set_weights(curriculum.scale_weights())
            records = prep.dataset.take(sampler.next_batch(cfg.rollout.prompts_per_step))
            requests = to_requests(records, step)
            params = SamplingParams(n=n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                    max_tokens=cfg.rollout.max_tokens, seed=cfg.seed * 100_003 + step)

            completions = rollout.generate(requests, params, version=step - 1, experts=expert_refs)
            t_gen = time.perf_counter()
            breakdowns = reward.score(score_items(records, completions, n), stage_reward_weights(stage))
            t_rew = time.perf_counter()

            scores = torch.tensor([b.total for b in breakdowns], dtype=torch.float32)
            uids = [r.request_id for r in requests for _ in range(n)]
            advantages = compute_advantages(scores, torch.ones(len(uids), 1), uids, cfg.learner.objective)[:, 0]
            samples = train_samples(requests, records, completions, advantages, n)
            learn_metrics, changed = learners.rl_step(samples, version=step)
            expert_refs.update(changed)
            t_learn = time.perf_counter()

            per_scale = per_scale_means(breakdowns)
            scalars = _scalars(per_scale, learn_metrics, completions, curriculum.stage_index,
                               {"generate": t_gen - t0, "reward": t_rew - t_gen, "learn": t_learn - t_rew,
                                "step": time.perf_counter() - t0})
            change = curriculum.observe(step, {s: v for s, v in per_scale.items() if s != "all"})
            tracker.log(step, scalars, {"stage": stage.name, "reward": f"{scalars['reward/total']:.3f}",
                                        "samples/s": f"{scalars['perf/samples_per_s']:.1f}"})
            history.append({"step": step, **scalars})
            _log_samples(run_dir, step, records, completions, breakdowns, n, cfg.log.samples_per_step)
            if metrics is not None:
                metrics.record_step(step, curriculum.stage_index, stage.name,
                                    {s: v for s, v in per_scale.items() if s != "all"},
                                    scalars["perf/samples_per_s"],
                                    {"generate": ("rollout", t_gen - t0), "reward": ("reward", t_rew - t_gen),
                                     "learn": ("learner", t_learn - t_rew)},
                                    {"reward": sum(b.error is not None for b in breakdowns)})
            if change is not None:
                tracker.message(f"step {step}: curriculum {change.from_stage!r} -> {change.to_stage!r} ({change.reason})")
                tracker.show(reward_table(f"stage {change.from_stage!r} finished at step {step}", per_scale))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                learners.save(run_dir, step, curriculum.state_dict(), sampler.state_dict(), cfg.keep_checkpoints)
        result = _finish(run_dir, history, curriculum, cfg.log.plot, tracker)
    finally:
        tracker.close()
        rollout.shutdown()
        reward.shutdown()
        learners.shutdown()
    return result


def _sft_warmup(cfg: TrainConfig, prep: PreparedRun, learners: LearnerGroup) -> None:
    """Supervised warm-up on reference completions (the paper trains SFT, then RL)."""
    sft = cfg.learner.sft
    sampler = prep.sft_sampler
    for i in range(1, sft.steps + 1):
        records = prep.dataset.take(sampler.next_batch(sft.batch_size))
        requests = to_requests(records, -i)
        samples = [TrainSample(messages=q.messages, images=q.images, videos=q.videos, response_ids=[],
                               expert=q.expert, scale_label=r.scale, uid=q.request_id, record_id=r.id)
                   for q, r in zip(requests, records)]
        m = learners.sft_step(samples, sft_targets(records))
        if i == 1 or i % 10 == 0 or i == sft.steps:
            console.print(f"sft {i}/{sft.steps}: loss {m.get('sft_loss', float('nan')):.3f}")


def _scalars(per_scale: dict[str, dict[str, float]], learn: dict[str, float], completions: list[Completion],
             stage_index: int, timings: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for scale, row in per_scale.items():
        prefix = "reward" if scale == "all" else f"reward/{scale}"
        out.update({f"{prefix}/{k}": float(v) for k, v in row.items()})
    lengths = [len(c.response_ids) for c in completions]
    out["response/length_mean"] = float(np.mean(lengths))
    out["response/truncated_frac"] = float(np.mean([c.finish_reason == "length" for c in completions]))
    out["curriculum/stage"] = float(stage_index)
    out.update({f"time/{k}_s": v for k, v in timings.items()})
    out["perf/samples_per_s"] = len(completions) / timings["step"]
    out["perf/gen_tokens_per_s"] = sum(lengths) / max(timings["generate"], 1e-9)
    out.update({f"learner/{k}": float(v) for k, v in learn.items()})
    return out


def _log_samples(run_dir: Path, step: int, records: list[Record], completions: list[Completion],
                 breakdowns: list[RewardBreakdown], n: int, k: int) -> None:
    """The first `k` completions of the step with their rewards, for reading what the policy writes."""
    if k <= 0:
        return
    with (run_dir / "samples.jsonl").open("a") as fh:
        for i, (c, b) in enumerate(zip(completions[:k], breakdowns[:k])):
            r = records[i // n]
            fh.write(json.dumps({"step": step, "record": r.id, "scale": r.scale, "task": r.task, "expert": c.expert,
                                 "answer": r.answer.text(), "completion": c.text, "reward": b.total,
                                 "components": b.components, "reasons": b.reasons}) + "\n")


def _finish(run_dir: Path, history: list[dict[str, float]], curriculum: Curriculum, plot: bool,
            tracker: Tracker) -> TrainResult:
    """End-of-run report: reward per scale in the first vs last quarter of steps, and the PNG."""
    if not history:
        return TrainResult(run_dir, 0, float("nan"), history, curriculum.history)
    q = max(1, len(history) // 4)
    first, last = history[:q], history[-q:]
    keys = sorted({k for row in history for k in row if k.startswith("reward/") and k.endswith("/total")})
    table = {}
    for k in ["reward/total"] + [k for k in keys if k != "reward/total"]:
        scale = "all" if k == "reward/total" else k.split("/")[1]
        a = [r[k] for r in first if k in r]
        b = [r[k] for r in last if k in r]
        table[scale] = {"first_quarter": float(np.mean(a)) if a else float("nan"),
                        "last_quarter": float(np.mean(b)) if b else float("nan")}
    tracker.show(reward_table(f"mean stepwise reward, first vs last quarter ({q} steps each)", table))
    if plot:
        png = plot_reward_curves(run_dir)
        console.print(f"reward curves: {png}")
    final = table["all"]["last_quarter"]
    return TrainResult(run_dir, int(history[-1]["step"]), final, history, curriculum.history)
