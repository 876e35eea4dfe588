"""The rollout/learner log-prob gap in float32 and bfloat16 on CPU, and what it does to one RL step.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_mismatch.py [--prompts 8] [--n 4] [--tokens 16]

The transformers rollout engine (float32 or bfloat16 weights) samples completions of the tiny policy's experts
(random, non-zero LoRA B so the experts matter); learners (FSDP2 on one gloo rank, float32 or bf16 mixed
precision: the code path of a GPU run) take one GRPO step on them with `objective.behaviour_logprobs` =
`recompute` or `rollout` (token TIS). Per combination: the mismatch metrics the learner logs, and the step's
update of the experts compared with the exact one (float32 learner, the same samples, recompute) by cosine and
relative L2 error. Run on a CPU: what is left to measure on a GPU is the same table with vLLM in bf16.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TEST_POLICY, make_policy_samples, policy_corpus  # noqa: E402  (the tests' policy and samples)

from spacevista.configs.policy import ExpertLoRAConfig  # noqa: E402
from spacevista.learner.batch import collate  # noqa: E402
from spacevista.learner.core import LearnerCore  # noqa: E402
from spacevista.learner.objectives import ObjectiveConfig  # noqa: E402
from spacevista.learner.optim import OptimConfig  # noqa: E402
from spacevista.policies.tiny import build_tiny_policy  # noqa: E402
from spacevista.rollout.engine import GenerationRequest, SamplingParams  # noqa: E402
from spacevista.rollout.hf_engine import HFEngine  # noqa: E402

EXPERTS = ["indoor", "outdoor"]
LORA = ExpertLoRAConfig(rank=8, alpha=16, init_lora_weights=False)  # random B: the experts change the outputs
METRICS = ("mismatch/logprob_gap_mean", "mismatch/logprob_gap_max", "mismatch/kl", "mismatch/k3_kl",
           "mismatch/is_weight_mean", "mismatch/is_truncated_frac")


def learner(path: Path, precision: str, mode: str) -> LearnerCore:
    return LearnerCore(path, EXPERTS, lora=LORA, objective=ObjectiveConfig(behaviour_logprobs=mode, kl_coef=0.0),
                       optim=OptimConfig(lr=1e-3), micro_batch_size=64, fsdp=True, mixed_precision=precision,
                       temperature=0.7, seed=0)


def experts(core: LearnerCore) -> torch.Tensor:
    return torch.cat([v.flatten().float() for sd in core.expert_state_dicts().values() for v in sd.values()])


def rollout_samples(path: Path, dtype: torch.dtype, weights: dict, args: argparse.Namespace) -> list:
    """`args.prompts` prompts x `args.n` samples from the engine, as the learner's samples (advantages seeded)."""
    engine = HFEngine(path, EXPERTS, LORA, dtype=dtype)
    engine.update_experts(1, weights)
    prompts = make_policy_samples(args.prompts, EXPERTS, seed=1, media=("text", "image"))
    requests = [GenerationRequest(p.uid, p.messages, p.expert, p.images, p.videos) for p in prompts]
    params = SamplingParams(n=args.n, temperature=0.7, max_tokens=args.tokens, seed=0)
    completions = engine.generate(requests, params)
    rng = torch.Generator().manual_seed(0)
    return [replace(prompts[i // args.n], response_ids=c.response_ids, rollout_logprobs=c.logprobs,
                    advantage=float(torch.randn(1, generator=rng)), uid=c.request_id, prompt=None)
            for i, c in enumerate(completions)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    path = build_tiny_policy(Path(tempfile.gettempdir()) / "spacevista-bench", policy_corpus(), TEST_POLICY)
    weights = learner(path, "fp32", "recompute").expert_state_dicts()
    print(f"threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"{args.prompts} prompts x {args.n} samples x <= {args.tokens} tokens, temperature 0.7")
    print("| rollout | learner | behaviour | gap mean | gap max | KL(rollout\\|\\|learner) | k3 KL | IS weight mean "
          "| truncated | update cos | update rel. L2 err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rollout_dtype in (torch.float32, torch.bfloat16):
        samples = rollout_samples(path, rollout_dtype, weights, args)
        exact = None
        for precision in ("fp32", "bf16"):
            for mode in ("recompute", "rollout"):
                core = learner(path, precision, mode)
                before = experts(core)
                m = core.rl_step(collate(core.processor, samples))
                update = experts(core) - before
                if exact is None:  # the first combination: float32 learner, recompute
                    exact = update
                cos = torch.nn.functional.cosine_similarity(update, exact, dim=0).item()
                err = ((update - exact).norm() / exact.norm()).item()
                row = [f"{m[k]:.2e}" if k in m else "-" for k in METRICS]
                print(f"| {str(rollout_dtype).removeprefix('torch.')} | {precision} | {mode} | {' | '.join(row)} "
                      f"| {cos:.4f} | {err:.3f} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
