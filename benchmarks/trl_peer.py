"""TRL's `GRPOTrainer` on the embedded default's work: the peer side of `bench_train.py` (see its
docstring for what is held equal). Runs in its own subprocess, as `bench_train.py --worker trl`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def trl_records(cfg, stages: list[int]) -> list:
    """The records our controller sampled, step by step: the same ScaleSampler (same seed) fed the
    scale weights of the curriculum stage each step of our run used."""
    from spacevista.preflight import _synthetic_data
    from spacevista.records.io import RecordDataset
    from spacevista.records.sampler import ScaleSampler

    dataset = RecordDataset(_synthetic_data(cfg) / "train")
    first = {s: w for s, w in cfg.curriculum.stages[0].scales.items() if w > 0}
    sampler = ScaleSampler(dataset.scales, first, seed=cfg.seed)
    records = []
    for stage in stages:
        sampler.set_weights({s: w for s, w in cfg.curriculum.stages[stage].scales.items() if w > 0})
        records += dataset.take(sampler.next_batch(cfg.rollout.prompts_per_step))
    return records


def worker_trl(args: argparse.Namespace, cfg) -> dict:
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from spacevista.preflight import prepare_model
    from spacevista.records.frames import load_video
    from spacevista.policies.chat import media_token_ids
    from spacevista.policies.experts import lora_config
    from spacevista.rewards import compute_score

    torch.set_num_threads(args.threads)
    ro, obj, opt = cfg.rollout, cfg.learner.objective, cfg.learner.optim
    per_step = ro.prompts_per_step * ro.n
    stages = json.loads(args.stages) if args.stages else [0] * args.steps
    stages = (stages + [stages[-1]] * args.steps)[:args.steps]

    rows = []
    for r in trl_records(cfg, stages):
        messages = [dict(m) for m in r.prompt]
        for m in messages:  # the video placeholder becomes TRL's image slot (inserted before the user text)
            m["content"] = m["content"].replace("<video>\n", "").replace("<video>", "")
        rows.append({"prompt": messages, "image": load_video(r, 0)[0],
                     "ground_truth": r.ground_truth_json(), "data_source": r.data_source})
    dataset = datasets.Dataset.from_list(rows)

    def stepwise_reward(prompts, completions, ground_truth, data_source, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [compute_score(ds, t, gt)["score"] for ds, t, gt in zip(data_source, texts, ground_truth)]

    model_path = prepare_model(cfg)
    model = AutoModelForImageTextToText.from_pretrained(str(model_path), dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(model_path))
    gconf = GRPOConfig(
        output_dir=str(Path(args.out) / f"trl-{args.threads}t"), use_cpu=True, bf16=False, report_to="none",
        per_device_train_batch_size=per_step, num_generations=ro.n, max_completion_length=ro.max_tokens,
        gradient_accumulation_steps=1, logging_steps=1, max_steps=args.steps, save_strategy="no",
        learning_rate=opt.lr, weight_decay=opt.weight_decay, max_grad_norm=opt.grad_clip,
        adam_beta1=opt.betas[0], adam_beta2=opt.betas[1], lr_scheduler_type="constant", warmup_steps=0,
        beta=obj.kl_coef, epsilon=obj.clip_ratio, loss_type="dapo", scale_rewards="group", num_iterations=1,
        temperature=ro.temperature, top_p=ro.top_p, top_k=0,
        generation_kwargs={"suppress_tokens": media_token_ids(model.config)},
        gradient_checkpointing=False, shuffle_dataset=False, seed=cfg.seed, dataloader_num_workers=0,
        disable_tqdm=True, log_completions=False,
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.begin, self.end = [], []

        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_begin(self, *a, **k):
            self.begin.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            self.end.append(time.perf_counter())

    timer = Timer()
    trainer = GRPOTrainer(model=model, processing_class=processor, reward_funcs=stepwise_reward,
                          args=gconf, train_dataset=dataset, peft_config=lora_config(cfg.model.lora), callbacks=[timer])
    phases: dict[str, list[float]] = {"generate": [], "reward": [], "prepare": []}

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[name].append(time.perf_counter() - t)
        return wrapper

    # _generate_and_score_completions = generation + reward + reference log-probs (the rest of `prepare`)
    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("prepare", trainer._generate_and_score_completions)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    step_s = [e - b for b, e in zip(timer.begin, timer.end)]
    interval_s = [e - p for p, e in zip([timer.start, *timer.end[:-1]], timer.end)]
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    # everything but generation and reward: reference log-probs, policy forward/backward, optimizer
    learn_s = [s - g - r for s, g, r in zip(step_s, phases["generate"], phases["reward"])]
    return {"kind": "trl", "threads": args.threads, "wall_s": wall, "completions": per_step,
            "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
            "trainable_params": trainable, "step_s": step_s, "interval_s": interval_s,
            "generate_s": phases["generate"], "reward_s": phases["reward"], "prepare_s": phases["prepare"],
            "learn_s": learn_s, "length_mean": [float(h["completions/mean_length"]) for h in logs],
            "stages": stages}


# ---- the driver -----------------------------------------------------------------------------------
