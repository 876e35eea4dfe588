"""Learner micro-benchmarks on the tiny policy: mixed-expert vs per-expert-grouped log-probs, RL step.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_learner.py [--batch 16] [--tokens 32] [--repeats 7]

Mixed: one forward/backward with peft `adapter_names=` (what `learner/logprobs.py` does).
Grouped: one forward/backward per expert through peft's single-adapter path (`set_adapter`).
Shared prompts: the same batch made of batch/group prompts with `group` responses each (GRPO's shape),
forward+backward with `share_prompts=False` vs `True` (each distinct prompt computed once).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TEST_POLICY, make_policy_samples, policy_corpus  # noqa: E402  (the tests' policy and samples)

from spacevista.learner.batch import collate  # noqa: E402
from spacevista.policies.experts import expert_names, set_experts_trainable  # noqa: E402
from spacevista.learner.core import LearnerCore  # noqa: E402
from spacevista.learner.logprobs import forward_logprobs, policy_logprobs  # noqa: E402
from spacevista.learner.objectives import ObjectiveConfig  # noqa: E402
from spacevista.policies.tiny import build_tiny_policy  # noqa: E402
from spacevista.scales import SCALES  # noqa: E402


def best_of(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--group", type=int, default=4, help="responses per prompt in the shared-prompt timing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = build_tiny_policy(Path(tempfile.gettempdir()) / "spacevista-bench", policy_corpus(), TEST_POLICY)
    learner = LearnerCore(path, SCALES, micro_batch_size=args.batch, objective=ObjectiveConfig(kl_coef=0.01))
    model, rng = learner.model, random.Random(0)
    for media in (("text",), ("image", "video", "text")):
        samples = make_policy_samples(args.batch, SCALES, media=media, with_rollout_logprobs=False)
        for s in samples:
            s.response_ids = [rng.randrange(10, 200) for _ in range(args.tokens)]
        batch = collate(learner.processor, samples)
        experts = list(batch.non_tensor_batch["expert"])

        def mixed() -> None:
            policy_logprobs(model, batch)[0].sum().backward()
            model.zero_grad(set_to_none=True)

        def grouped() -> None:
            for expert in sorted(set(experts)):
                model.base_model.set_adapter(expert)
                part = batch.select_idxs([i for i, e in enumerate(experts) if e == expert])
                forward_logprobs(model, part)[0].sum().backward()
            set_experts_trainable(model, expert_names(model))
            model.zero_grad(set_to_none=True)

        prompts = make_policy_samples(args.batch // args.group, SCALES, media=media, with_rollout_logprobs=False)
        grpo = collate(learner.processor, [replace(s, response_ids=[rng.randrange(10, 200) for _ in range(args.tokens)])
                                           for s in prompts for _ in range(args.group)])

        def shared_vs_plain(share: bool) -> Callable[[], None]:
            def run() -> None:
                policy_logprobs(model, grpo, share_prompts=share)[0].sum().backward()
                model.zero_grad(set_to_none=True)
            return run

        t_plain, t_shared = best_of(shared_vs_plain(False), args.repeats), best_of(shared_vs_plain(True), args.repeats)
        print(f"{'+'.join(media):16s} {args.batch // args.group} prompts x {args.group} responses, fwd+bwd: "
              f"plain {t_plain * 1e3:.0f} ms, shared prompts {t_shared * 1e3:.0f} ms ({t_plain / t_shared:.2f}x)")
        t_mixed, t_grouped = best_of(mixed, args.repeats), best_of(grouped, args.repeats)
        t_step = best_of(lambda: learner.rl_step(batch), args.repeats)
        print(f"{'+'.join(media):16s} batch {args.batch} x {args.tokens} tokens, {len(set(experts))} experts: "
              f"fwd+bwd mixed {t_mixed * 1e3:.0f} ms, grouped {t_grouped * 1e3:.0f} ms "
              f"({t_grouped / t_mixed:.2f}x); rl_step (ref + policy + router + AdamW) {t_step * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
