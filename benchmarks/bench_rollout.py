"""Rollout throughput: one routed mixed-expert batch vs one batch per expert vs a single adapter.

Every mode does the same work: the same prompts, each sample exactly `--max-tokens` new tokens
(end-of-sequence suppressed through `min_tokens`), sampled at temperature 1. Modes:
  routed      one `generate` call, prompts spread round-robin over all experts
  per_expert  one `generate` call per expert, each over that expert's prompts
  single      one `generate` call, every prompt on one expert
HF only, for reference (peft's own paths, no engine): `peft_mixed` (one `generate` with peft's
`adapter_names=`) and `peft_single` (`set_adapter`, one adapter).

  python benchmarks/bench_rollout.py --engine hf --results benchmarks/RESULTS.md
  .venv-vllm/bin/python benchmarks/bench_rollout.py --engine vllm --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import policy_corpus  # noqa: E402
from rollout_helpers import EXPERTS, LORA, image_request, random_experts, text_request  # noqa: E402

from spacevista.configs.policy import TinyPolicyConfig  # noqa: E402
from spacevista.policies.prompts import encode_batch  # noqa: E402
from spacevista.policies.tiny import build_tiny_policy  # noqa: E402
from spacevista.rollout import GenerationRequest, SamplingParams  # noqa: E402


def requests_for(mode: str, prompts: int, modality: str) -> list[list[GenerationRequest]]:
    """The generate calls of one mode (a list of request lists)."""
    make = text_request if modality == "text" else image_request
    if mode in ("routed", "peft_mixed"):
        return [[make(i, EXPERTS[i % len(EXPERTS)]) for i in range(prompts)]]
    if mode in ("single", "peft_single"):
        return [[make(i, "indoor") for i in range(prompts)]]
    routed = [make(i, EXPERTS[i % len(EXPERTS)]) for i in range(prompts)]
    return [[r for r in routed if r.expert == e] for e in EXPERTS]


def peft_generate(engine, requests: list[GenerationRequest], params: SamplingParams, mixed: bool) -> int:
    """peft's own generation paths on the engine's model; returns the number of new tokens."""
    inputs = encode_batch(engine.processor, requests)[0]
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              max_new_tokens=params.max_tokens, min_new_tokens=params.min_tokens)
    extra = {"adapter_names": [r.expert for r in requests]} if mixed else {}
    if not mixed:
        engine.model.set_adapter(requests[0].expert)
    with torch.inference_mode():
        out = engine.model.generate(**inputs, generation_config=config, **extra)
    return (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]


def build_engine(kind: str, policy: Path, weights, prompts: int):
    if kind == "hf":
        from spacevista.rollout.hf_engine import HFEngine

        engine = HFEngine(policy, EXPERTS, LORA, max_batch_size=max(64, prompts))
    else:
        from spacevista.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(policy, EXPERTS, LORA, max_model_len=1024, max_num_seqs=max(64, prompts))
    engine.update_experts(1, weights)
    return engine


def run_mode(engine, mode: str, calls: list[list[GenerationRequest]], params: SamplingParams) -> Callable[[], int]:
    def once() -> int:
        if mode.startswith("peft_"):
            return sum(peft_generate(engine, c, params, mode == "peft_mixed") for c in calls)
        return sum(len(x.response_ids) for c in calls for x in engine.generate(c, params))
    return once


def measure(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    cache = Path(args.cache or tempfile.mkdtemp(prefix="bench-rollout-"))
    policy = build_tiny_policy(cache, policy_corpus(), TinyPolicyConfig())
    weights = random_experts(policy, seed=0)
    params = SamplingParams(temperature=1.0, max_tokens=args.max_tokens, min_tokens=args.max_tokens,
                            seed=0)
    rows = []
    for kind in args.engine:
        engine = build_engine(kind, policy, weights, args.prompts)
        modes = ["routed", "per_expert", "single"] + (["peft_mixed", "peft_single"] if kind == "hf" else [])
        for modality in args.modality:
            runs = {m: run_mode(engine, m, requests_for(m, args.prompts, modality), params) for m in modes}
            for once in runs.values():
                once()  # warm-up
            times: dict[str, list[float]] = {m: [] for m in modes}
            tokens: dict[str, int] = {}
            for _ in range(args.repeats):  # interleaved, so drift hits every mode alike
                for m, once in runs.items():
                    t0 = time.perf_counter()
                    tokens[m] = once()
                    times[m].append(time.perf_counter() - t0)
            for m in modes:
                seconds = statistics.median(times[m])
                rows.append(dict(engine=kind, modality=modality, mode=m, tokens=tokens[m], seconds=seconds,
                                 tok_s=tokens[m] / seconds))
        if hasattr(engine, "close"):
            engine.close()
    for row in rows:
        single = next(r for r in rows if (r["engine"], r["modality"], r["mode"]) == (row["engine"], row["modality"],
                                                                                    "single"))
        row["vs_single"] = row["tok_s"] / single["tok_s"]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| engine | prompt kind | mode | new tokens | median s | tokens/s | x single |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['engine']} | {r['modality']} | {r['mode']} | {r['tokens']} | {r['seconds']:.3f} | "
              f"{r['tok_s']:,.0f} | {r['vs_single']:.2f} |" for r in rows]
    return "\n".join(lines)


def command() -> str:
    """This run's command line, with the environment variables that change the figures."""
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "VLLM_CPU_KVCACHE_SPACE") if k in os.environ]
    return " ".join(env + [os.path.relpath(sys.executable)] + sys.argv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", nargs="+", choices=["hf", "vllm"], default=["hf"])
    parser.add_argument("--modality", nargs="+", choices=["text", "image"], default=["text", "image"])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (HF engine)")
    parser.add_argument("--cache", help="tiny-policy cache directory (default: a fresh temporary one)")
    parser.add_argument("--results", help="append the table and command to this markdown file")
    args = parser.parse_args()
    rows = measure(args)
    text = table(rows)
    print(text)
    if args.results:
        import peft
        import transformers

        versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
        if "vllm" in args.engine:
            import vllm

            versions += f", vllm {vllm.__version__}"
        with open(args.results, "a") as f:
            f.write(f"\n## Rollout throughput ({datetime.date.today()}, {os.cpu_count()} CPU cores, "
                    f"{platform.machine()}; {versions})\n\n"
                    f"`{command()}`\n\n"
                    f"Tiny policy = the training default (`TinyPolicyConfig()`), 5 experts with rank-{LORA.rank} LoRA, "
                    f"{args.prompts} prompts x {args.max_tokens} new tokens per mode, float32, "
                    f"median of {args.repeats}.\n\n{text}\n")


if __name__ == "__main__":
    main()
