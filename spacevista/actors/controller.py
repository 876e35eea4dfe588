"""The training recipe: one GRPO step after another across Ray actors, under the curriculum.

    sample prompts (curriculum mix) -> generate (routed experts) -> score (stepwise + plugins)
    -> advantages (verl) -> update experts (FSDP learner ranks) -> sync adapters -> log
    -> maybe checkpoint -> curriculum observes per-scale rewards and may advance

Everything heavy lives in the components (data, rollout, rewards, policies, curriculum); this file
only wires them, and reads top to bottom.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from spacevista.cluster import run_storage
from spacevista.actors.learner import LearnerGroup
from spacevista.actors.pool import WorkerPool
from spacevista.actors.recovery import FAULTS, Recovery, RoleFailure
from spacevista.actors.report import TrainResult, finish
from spacevista.actors.workers import RolloutItem
from spacevista.preflight import PreparedRun, prepare_run, registered_plugins, validate_config
from spacevista.cluster.local_ray import start_ray
from spacevista.cluster.metrics import RayMetrics
from spacevista.cluster.plan import check_before_training
from spacevista.cluster.resources import check_cluster, reserve
from spacevista.configs.experts import expert_map, expert_of
from spacevista.configs.schema import RewardWeights, StageConfig, TrainConfig
from spacevista.curriculum import Curriculum
from spacevista.records.schema import Record
from spacevista.learner.batch import TrainSample
from spacevista.learner.checkpoint_files import check_format as check_checkpoint_format
from spacevista.learner.objectives import response_advantages
from spacevista.rewards.groups import group_totals, zero_variance_fraction
from spacevista.rewards.pipeline import plugin_errors
from spacevista.rewards.stepwise import RewardBreakdown, aggregate_breakdowns
from spacevista.scales import AnswerType
from spacevista.rollout.engine import Completion, GenerationRequest, SamplingParams
from spacevista.rollout.snapshot import PolicySnapshot
from spacevista.tracking import Tracker, console, reward_table


ANSWER_COMPONENTS = tuple(t.value for t in AnswerType)


# ---- conversions between the components' types --------------------------------------------------
def rollout_items(records: list[Record], round_id: int | str, experts: Mapping[str, str] | None = None
                  ) -> list[RolloutItem]:
    """Label routing (the training anchor): each prompt goes to the expert serving its record's scale
    (`experts`: configs.experts.expert_map; None: the expert named by the scale). `round_id` (the RL step, or
    `sftN` for the warm-up's step N) makes request ids, and so GRPO's group uids, unique across rounds."""
    return [RolloutItem(f"{round_id}:{i}:{r.id}", r, expert_of(r.scale, experts)) for i, r in enumerate(records)]


def score_items(records: list[Record], completions: list[Completion], n: int) -> list[tuple]:
    """(ground truth, completion, data_source, extra_info) per sample: extra_info as the parquet column
    holds it, so a plugin sees in training what verl would give it."""
    infos = [r.extra_info() for r in records]
    return [(records[i // n].ground_truth_dict(), c.text, records[i // n].data_source, infos[i // n])
            for i, c in enumerate(completions)]


def per_scale_means(breakdowns: list[RewardBreakdown], fixed: RewardWeights) -> dict[str, dict[str, float]]:
    """{scale: {component: mean, "accuracy", "total", "fixed_total", "samples"}} (+ "all").

    `accuracy` is the mean over samples of each sample's answer component (numeric, choice, count or
    text: the only definition of accuracy); `total` uses the stage's weights (what is optimised now);
    `fixed_total` re-weights the same components with the config's fixed weights, so it stays
    comparable when the curriculum shifts weight between components. `samples` counts samples (the
    answer component of counting tasks is `count`).
    """
    table = aggregate_breakdowns(breakdowns, by="scale")
    out = {}
    for scale, row in table.items():
        means = {k: v for k, v in row.items() if k not in ("n", "errors")}
        means["samples"] = row["n"]
        means["accuracy"] = _answer_mean(breakdowns, scale)
        means["fixed_total"] = ((fixed.format * means.get("format", 0.0) + fixed.scale * means.get("scale", 0.0)
                                 + fixed.accuracy * means["accuracy"]) / (fixed.format + fixed.scale + fixed.accuracy))
        out[scale] = means
    return out


def _answer_mean(breakdowns: list[RewardBreakdown], scale: str) -> float:
    """Mean answer component over the scale's samples (one answer component per sample)."""
    vals = [next((b.components[k] for k in ANSWER_COMPONENTS if k in b.components), 0.0)
            for b in breakdowns if scale == "all" or b.scale == scale]
    return float(np.mean(vals)) if vals else 0.0


def train_samples(items: list[RolloutItem], completions: list[Completion], advantages: list[list[float]],
                  n: int) -> list[TrainSample]:
    """The learner's trajectories: the prompt as the rollout encoded it (an object-store ref), the
    sampled ids and log-probs, per-token advantages; the n samples of a request share its uid."""
    return [TrainSample(prompt=c.prompt, response_ids=c.response_ids, rollout_logprobs=c.logprobs,
                        advantage=advantages[i], expert=c.expert, scale_label=items[i // n].expert,
                        uid=items[i // n].request_id, record_id=items[i // n].record.id)
            for i, c in enumerate(completions)]


def sft_samples(records: list[Record], round_id: str, experts: Mapping[str, str] | None = None) -> list[TrainSample]:
    """SFT warm-up samples: each learner rank decodes and encodes its own share of the prompts. The
    router learns the routed expert (`scale_label`): the scale itself in the per-scale layout."""
    return [TrainSample(response_ids=[], expert=item.expert, scale_label=item.expert, uid=item.request_id,
                        record_id=item.record.id, **_prompt_media(item.request()))
            for item in rollout_items(records, round_id, experts)]


def _prompt_media(request: GenerationRequest) -> dict[str, Any]:
    return {"messages": request.messages, "images": request.images, "videos": request.videos}


def sft_targets(records: list[Record]) -> list[str]:
    """The reference completion in the output format (synthetic records carry one with a reasoning line)."""
    return [r.reference_completion() for r in records]


# ---- the loop ----------------------------------------------------------------------------------
def run_training(cfg: TrainConfig, run_dir: Path, config_dict: dict[str, Any] | None = None) -> TrainResult:
    """The recipe (`spacevista train` after its config checks): prepare, start Ray, warm up, then the RL loop
    with evals and checkpoints; recovers from lost roles as `cluster.max_recoveries` allows."""
    validate_config(cfg)
    if (requested := run_storage.resolve_resume(cfg.resume, run_dir)) is not None:
        check_checkpoint_format(requested)  # an old pickled checkpoint fails before Ray, saying how to upgrade it
    run_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]SpaceVista-RL[/bold] run directory: {run_dir}")
    prep: PreparedRun = prepare_run(cfg, run_dir)
    check_before_training(cfg, prep.model_path)  # GPU roles that cannot fit fail here, naming the part
    owns_ray = start_ray(cfg.cluster, run_dir)
    try:
        check_cluster(cfg.cluster)
        recovery = Recovery(run_dir, cfg.cluster.max_recoveries, run_storage.resolve_resume(cfg.resume, run_dir),
                            cfg.cluster.metrics_prefix if cfg.log.ray_metrics else None)
        while True:  # attempts: a lost rank, worker or node, or a frozen call, restarts from the last checkpoint
            attempt = dataclasses.replace(prep, sampler=copy.deepcopy(prep.sampler),
                                          sft_sampler=copy.deepcopy(prep.sft_sampler))  # as prepared: step 0's
            try:
                return _train(cfg, run_dir, attempt, config_dict, recovery)
            except (RoleFailure, *FAULTS) as fault:
                recovery.recover(fault)  # an event; raises once cluster.max_recoveries are spent
    finally:
        if owns_ray:
            ray.shutdown()


def _train(cfg: TrainConfig, run_dir: Path, prep: PreparedRun, config_dict: dict[str, Any] | None,
           recovery: Recovery) -> TrainResult:
    """One attempt: build every role, continue from `recovery.checkpoint` (step 0 if none), run to the end."""
    run_name = run_dir.name
    curriculum = Curriculum(cfg.curriculum)
    sampler = prep.sampler
    resume_from = recovery.checkpoint
    start_step = 0
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    with contextlib.ExitStack() as roles:  # every role is torn down however the attempt ends
        learners = LearnerGroup(cfg, prep.model_path, reserve("learner", cfg.cluster.learner), run_name)
        roles.callback(learners.shutdown)
        pending: _Rollout | None = None
        pending_state: dict[str, Any] | None = None
        if resume_from is not None:
            state, pending_state = learners.load(resume_from)
            curriculum.load_state_dict(state["curriculum"])
            sampler.load_state_dict(state["sampler"])
            start_step = run_storage.checkpoint_step(resume_from)
            console.print(f"resumed from {resume_from} (step {start_step}, stage {curriculum.stage.name!r})")
        elif cfg.learner.sft.steps > 0:
            _sft_warmup(cfg, prep, learners)

        policy_path = learners.export_policy(run_dir / "policy") or prep.model_path
        rollout = WorkerPool.rollout(str(policy_path), cfg.model, cfg.rollout, reserve("rollout", cfg.cluster.rollout),
                                     run_name, cfg.cluster)
        roles.callback(rollout.shutdown)
        reward = WorkerPool.reward(cfg.reward, reserve("reward", cfg.cluster.reward), run_name,
                                   registered_plugins(cfg.reward), cfg.cluster)
        roles.callback(reward.shutdown)
        snapshot = learners.snapshot()  # what rollout workers must serve now (SFT's or the checkpoint's weights)
        if pending_state is not None:
            pending = _Rollout.from_dict(pending_state, cfg, prep, rollout)

        tracker = Tracker(run_dir, cfg.log, cfg.steps, start_step, config_dict)  # drops rows past start_step
        roles.callback(tracker.close)
        metrics = RayMetrics(cfg.cluster.metrics_prefix) if cfg.log.ray_metrics else None
        n = cfg.rollout.n
        evaluate = _Evaluator(cfg, prep, rollout, reward)
        if start_step == 0 and evaluate.records:
            tracker.log_eval(0, evaluate(0, snapshot))
        for step in range(start_step + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            if pending is None:  # sync mode, or the first step of an async run
                pending = _launch(cfg, step, curriculum, sampler, prep, rollout, snapshot)
            current, pending = pending, None
            stage, records, items = current.stage, current.records, current.items
            completions = current.completions if current.completions is not None else rollout.gather(current.refs)
            t_gen = time.perf_counter()
            breakdowns = reward.score(score_items(records, completions, n), stage.reward_weights, stage.plugin_weights)
            t_rew = time.perf_counter()
            if cfg.async_rollout:  # generate step k+1 with the weights before update k (after the last step too:
                # it is kept with the final checkpoint, so a later `resume` with more steps continues exactly)
                pending = _launch(cfg, step + 1, curriculum, sampler, prep, rollout, snapshot)
            uids = [item.request_id for item in items for _ in range(n)]
            for b, total in zip(breakdowns, group_totals(breakdowns, uids)):  # a plugin failing in a group: left
                b.total = total  # out of the whole group's totals, so it makes no reward difference (and is logged)
            scores = torch.tensor([b.total for b in breakdowns], dtype=torch.float32)
            advantages = response_advantages(scores, [len(c.response_ids) for c in completions], uids,
                                             cfg.learner.objective)
            samples = train_samples(items, completions, advantages, n)
            staleness = float(np.mean([snapshot.version - c.adapter_version for c in completions]))
            learn_metrics, change = learners.rl_step(samples)
            snapshot = snapshot.updated(change)
            t_learn = time.perf_counter()

            per_scale = per_scale_means(breakdowns, cfg.reward.weights)
            scalars = _scalars(per_scale, learn_metrics, completions, curriculum.stage_index,
                               {"generate": t_gen - t0, "reward": t_rew - t_gen, "learn": t_learn - t_rew,
                                "step": time.perf_counter() - t0})
            scalars["rollout/staleness"] = staleness  # learner updates between the sampling policy and this one
            scalars["faults/recoveries"] = float(recovery.count)
            scalars["reward/zero_variance_groups"] = zero_variance_fraction(scores.tolist(), uids)  # no GRPO signal
            plugin_failures = plugin_errors(breakdowns)
            scalars.update({f"reward/plugin_errors/{name}": float(v) for name, v in plugin_failures.items()})
            change = curriculum.observe(step, {s: v for s, v in per_scale.items() if s != "all"})
            tracker.log(step, scalars, {"stage": stage.name, "reward": f"{scalars['reward/total']:.3f}",
                                        "samples/s": f"{scalars['perf/samples_per_s']:.1f}",
                                        "logp gap": f"{scalars.get('learner/mismatch/logprob_gap_max', 0.0):.1e}"})
            _log_samples(run_dir, step, records, completions, breakdowns, n, cfg.log.samples_per_step)
            if metrics is not None:
                metrics.record_step(step, curriculum.stage_index, stage.name, per_scale,
                                    scalars["perf/samples_per_s"],
                                    {"generate": ("rollout", t_gen - t0), "reward": ("reward", t_rew - t_gen),
                                     "learn": ("learner", t_learn - t_rew)},
                                    {"reward": sum(b.error is not None for b in breakdowns),
                                     **{f"plugin/{k}": v for k, v in plugin_failures.items()}})
                metrics.record_queue("rollout", len(pending.items) if pending else 0)
            if change is not None:
                tracker.message(f"step {step}: curriculum {change.from_stage!r} -> {change.to_stage!r} "
                                f"({change.reason})")
                tracker.show(reward_table(f"stage {change.from_stage!r} finished at step {step}", per_scale))
            if evaluate.records and (step % cfg.eval_every == 0 or step == cfg.steps):
                tracker.log_eval(step, evaluate(step, snapshot))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if pending is not None:  # async: keep step k+1's rollout with the checkpoint, so resume is exact
                    pending.completions, pending.refs = rollout.gather(pending.refs), []
                state = {"curriculum": curriculum.state_dict(), "sampler": sampler.state_dict(),
                         "expert_of_scale": expert_map(cfg.model.experts, cfg.model.expert_of_scale)}
                recovery.committed(learners.save(run_dir, step, state, cfg.keep_checkpoints,
                                                 pending.to_dict() if pending is not None else None))
        return finish(run_dir, curriculum, cfg.log.plot, tracker)


COMPLETION_FIELDS = ("request_id", "sample_index", "expert", "response_ids", "text", "logprobs", "finish_reason",
                     "adapter_version")


@dataclass
class _Rollout:
    """One step's prompts and its generation in flight."""

    step: int
    stage: StageConfig
    indices: list[int]  # the records' rows in the training set
    records: list[Record]
    items: list[RolloutItem]
    refs: list
    completions: list | None = None  # set once gathered (and so when restored from a checkpoint)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (JSON): which rows, which stage, what was sampled; the prompts
        are encoded again on resume (deterministic), so no tensor or object is stored."""
        return {"step": self.step, "stage": self.stage.name, "indices": self.indices,
                "completions": [{k: getattr(c, k) for k in COMPLETION_FIELDS} for c in self.completions]}

    @classmethod
    def from_dict(cls, state: dict[str, Any], cfg: TrainConfig, prep: PreparedRun, rollout: WorkerPool) -> _Rollout:
        stage = next(s for s in cfg.curriculum.stages if s.name == state["stage"])
        records = prep.dataset.take(state["indices"])
        items = rollout_items(records, state["step"], expert_map(cfg.model.experts, cfg.model.expert_of_scale))
        prompts = rollout.encode(items)
        n = len(state["completions"]) // max(len(items), 1)
        completions = [Completion(prompt=prompts[i // n], **c) for i, c in enumerate(state["completions"])]
        return cls(state["step"], stage, state["indices"], records, items, [], completions)


def _launch(cfg: TrainConfig, step: int, curriculum: Curriculum, sampler, prep: PreparedRun, rollout: WorkerPool,
            snapshot: PolicySnapshot) -> _Rollout:
    """Draw `step`'s prompts under the current stage and start generating them (non-blocking)."""
    stage = curriculum.stage
    sampler.set_weights(curriculum.scale_weights())
    indices = [int(i) for i in sampler.next_batch(cfg.rollout.prompts_per_step)]
    records = prep.dataset.take(indices)
    items = rollout_items(records, step, expert_map(cfg.model.experts, cfg.model.expert_of_scale))
    params = SamplingParams(n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                            max_tokens=cfg.rollout.max_tokens, seed=cfg.seed * 100_003 + step)
    refs = rollout.generate_async(items, params, snapshot)
    return _Rollout(step, stage, indices, records, items, refs)


class _Evaluator:
    """Greedy generation on a fixed, scale-balanced slice of the held-out split, scored with the
    config's fixed reward weights: a learning signal that the curriculum's shifting mix cannot bias."""

    def __init__(self, cfg: TrainConfig, prep: PreparedRun, rollout: WorkerPool, reward: WorkerPool):
        self.cfg, self.rollout, self.reward = cfg, rollout, reward
        self.records: list[Record] = []
        if prep.test_path is not None and cfg.eval_every > 0 and cfg.eval_prompts_per_scale > 0:
            from spacevista.records.io import RecordDataset

            test = RecordDataset(prep.test_path)
            picked = [i for s in expert_map(cfg.model.experts, cfg.model.expert_of_scale)
                      for i in [j for j, sc in enumerate(test.scales) if sc == s][:cfg.eval_prompts_per_scale]]
            self.records = test.take(picked)
        self.weights = dataclasses.replace(cfg.reward.weights, gate_scale=False)

    def __call__(self, step: int, snapshot: PolicySnapshot) -> dict[str, dict[str, float]]:
        params = SamplingParams(n=1, temperature=0.0, max_tokens=self.cfg.rollout.max_tokens)
        items = rollout_items(self.records, step, expert_map(self.cfg.model.experts, self.cfg.model.expert_of_scale))
        completions = self.rollout.generate(items, params, snapshot, prompts="drop")
        breakdowns = self.reward.score(score_items(self.records, completions, 1), self.weights)
        return per_scale_means(breakdowns, self.cfg.reward.weights)


def _sft_warmup(cfg: TrainConfig, prep: PreparedRun, learners: LearnerGroup) -> None:
    """Supervised warm-up on reference completions (the paper trains SFT, then RL)."""
    sft = cfg.learner.sft
    sampler = prep.sft_sampler
    for i in range(1, sft.steps + 1):
        records = prep.dataset.take(sampler.next_batch(sft.batch_size))
        m = learners.sft_step(sft_samples(records, f"sft{i}", expert_map(cfg.model.experts, cfg.model.expert_of_scale)),
                              sft_targets(records))
        if i == 1 or i % 10 == 0 or i == sft.steps:
            console.print(f"sft {i}/{sft.steps}: loss {m.get('sft_loss', float('nan')):.3f}")


def _scalars(per_scale: dict[str, dict[str, float]], learn: dict[str, float], completions: list[Completion],
             stage_index: int, timings: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for scale, row in per_scale.items():
        prefix = "reward" if scale == "all" else f"reward/{scale}"
        out.update({f"{prefix}/{k}": float(v) for k, v in row.items()})
        # the headline `total` (console, TensorBoard) uses the fixed weights, so it is comparable across
        # curriculum stages; what the stage's weights optimise is `stage_total`
        out[f"{prefix}/total"], out[f"{prefix}/stage_total"] = float(row["fixed_total"]), float(row["total"])
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
                                 "policy_version": c.adapter_version,
                                 "answer": r.answer.text(), "completion": c.text, "reward": b.total,
                                 "components": b.components, "reasons": b.reasons}) + "\n")

