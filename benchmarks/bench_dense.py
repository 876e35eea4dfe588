"""Dense branch overhead on the tiny policy: forward+backward with / without the branch, cache cold / warm,
and the feature cache's hit rate over GRPO-shaped batches (n samples of a prompt share its frames).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dense.py [--prompts 4] [--n 4] [--repeats 5]

The policy is the embedded default's architecture (text hidden 256, 4 layers) with 4 LoRA experts; each
prompt carries a video of 4 frames of 56x56 (the synthetic data's default) and 32 response tokens.
Memory: bytes of tensors autograd saves for backward (activations; deterministic on CPU), parameter bytes
of the encoder and the fusion, and the cache's bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import policy_corpus  # noqa: E402

from spacevista.configs.dense import DenseConfig  # noqa: E402
from spacevista.configs.policy import TinyPolicyConfig  # noqa: E402
from spacevista.policies.dense.branch import DenseBranch, fused_visual_embeds  # noqa: E402
from spacevista.policies.experts import attach_experts  # noqa: E402
from spacevista.policies.tiny import build_tiny_policy, load_policy  # noqa: E402
from spacevista.scales import SCALES  # noqa: E402

EMBEDDED = TinyPolicyConfig()  # the embedded training default's architecture


def grpo_batch(processor, prompts: int, n: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """`prompts` distinct videos, each repeated for its `n` samples, with `tokens` response tokens each."""
    rng = np.random.default_rng(seed)
    texts, videos = [], []
    for _ in range(prompts):
        frames = [Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(4)]
        content = [{"type": "video"}, {"type": "text", "text": "how far apart are the two chairs?"}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        texts += [text] * n
        videos += [frames] * n
    batch = dict(processor(text=texts, videos=videos, return_tensors="pt", padding=True))
    response = torch.from_numpy(rng.integers(10, 200, (len(texts), tokens)))
    batch["input_ids"] = torch.cat([batch["input_ids"], response], dim=1)
    batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(response)], dim=1)
    batch["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], torch.zeros_like(response)], dim=1)
    return batch


def interleaved(cases: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median CPU seconds of each case over `rounds` rounds that run every case once (after a warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds + 1):
        for name, fn in cases.items():
            start = time.process_time()  # CPU seconds: the shared machine's load barely moves them
            fn()
            if r:
                times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def saved_bytes(fn: Callable[[], None]) -> int:
    """Bytes of the tensors autograd keeps for backward during `fn` (activation memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.gettempdir()) / "spacevista-bench"
    model, processor = load_policy(build_tiny_policy(tmp, policy_corpus(), EMBEDDED))
    model = attach_experts(model, SCALES)
    batch = grpo_batch(processor, args.prompts, args.n, args.tokens)
    experts = [SCALES[i // args.n % len(SCALES)] for i in range(args.prompts * args.n)]

    def step() -> None:
        model(**batch, adapter_names=experts).logits.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    cfg = DenseConfig(enabled=True, cache_dir=str(tmp))
    torch.manual_seed(0)
    branch = DenseBranch.build(cfg, model, processor)
    with torch.no_grad():
        branch.fusion.gate.fill_(0.5)

    def case(attached: bool, cold: bool) -> Callable[[], None]:
        def run() -> None:
            branch.attach(model) if attached else branch.detach()
            if cold:
                branch.cache.clear_memory()
            step()
            branch.fusion.zero_grad(set_to_none=True)
        return run

    cases = {"no branch": case(False, False), "branch, cache warm": case(True, False),
             "branch, cache cold": case(True, True)}
    seconds = interleaved(cases, args.repeats)  # rounds of every case: machine load hits all alike
    rows = []
    for name, run in cases.items():
        run()
        branch.attach(model) if name != "no branch" else branch.detach()
        rows.append((name, seconds[name], saved_bytes(lambda: model(**batch, adapter_names=experts))))
    branch.attach(model)
    base_time = rows[0][1]
    print(f"forward+backward, {args.prompts} prompts x {args.n} samples, video 4x56x56, {args.tokens} tokens, "
          f"{len(batch['input_ids'][0])} tokens a row, 1 thread")
    print("| case | step (CPU s, median) | vs no branch | saved activations (MiB) |")
    print("|---|---|---|---|")
    for name, seconds, saved in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / base_time:.2f}x | {saved / 2**20:.1f} |")
    encoder_bytes = sum(p.numel() * p.element_size() for p in branch.encoder.model.parameters())
    fusion_bytes = sum(p.numel() * p.element_size() for p in branch.fusion.parameters())
    print(f"encoder parameters {encoder_bytes / 2**10:.0f} KiB (frozen), fusion parameters "
          f"{fusion_bytes / 2**10:.0f} KiB (trained), cache {branch.cache.memory_used / 2**10:.0f} KiB "
          f"for {len(branch.cache)} frames")

    print("\ncache hit rate over GRPO-shaped batches (fresh cache)")
    print("| pass | lookups | encoded | hit rate |")
    print("|---|---|---|---|")
    branch.cache.clear_memory()
    branch.cache.stats.__init__()
    for name in ("first pass (n copies of each prompt)", "same frames again (another role via disk, next epoch)"):
        before = (branch.cache.stats.lookups, branch.cache.stats.misses)
        with torch.no_grad():
            fused_visual_embeds(model, batch["pixel_values_videos"], batch["video_grid_thw"])
        lookups, misses = branch.cache.stats.lookups - before[0], branch.cache.stats.misses - before[1]
        print(f"| {name} | {lookups} | {misses} | {1 - misses / lookups:.3f} |")


if __name__ == "__main__":
    main()
