"""GPU checks (`@pytest.mark.gpu`: scripts/gpu_check.sh runs them on a CUDA machine and prints their
GPU-FIGURE lines) and the CPU-side guards: the script skips cleanly without CUDA, vLLM's device args."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def figure(name: str, value: str) -> None:
    print(f"\nGPU-FIGURE {name}: {value}", flush=True)


# ---- CPU-side guards ---------------------------------------------------------------------------------
@pytest.mark.skipif(CUDA, reason="this machine has CUDA: gpu_check.sh runs the checks instead of skipping")
def test_gpu_check_script_skips_cleanly_without_cuda():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gpu_check: skipped: no CUDA device" in done.stdout


def test_vllm_engine_args_follow_the_device():
    from spacevista.rollout.vllm_engine import engine_args

    cpu = engine_args(on_gpu=False, max_model_len=512, max_num_seqs=32, gpu_memory_utilization=0.5)
    assert cpu == {"max_model_len": 512, "max_num_seqs": 32, "enforce_eager": True, "enable_prefix_caching": True}
    gpu = engine_args(on_gpu=True, max_model_len=512, max_num_seqs=32, gpu_memory_utilization=0.5,
                      tensor_parallel_size=2)
    assert gpu["enforce_eager"] is False  # CUDA graphs
    assert (gpu["gpu_memory_utilization"], gpu["tensor_parallel_size"]) == (0.5, 2)
    assert engine_args(on_gpu=True, max_model_len=8, max_num_seqs=1, enforce_eager=True)["enforce_eager"] is True
    with pytest.raises(ValueError, match="tensor parallelism needs GPUs"):
        engine_args(on_gpu=False, max_model_len=8, max_num_seqs=1, tensor_parallel_size=2)


# ---- on CUDA -----------------------------------------------------------------------------------------
def _rank_main(rank: int, world: int, init_file: str, model_path: str, samples: list, out: str) -> None:
    import torch.distributed as dist

    from spacevista.learner.batch import collate
    from spacevista.learner.core import LearnerCore
    from spacevista.scales import SCALES

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        learner = LearnerCore(model_path, SCALES, fsdp=True, device="cuda", micro_batch_size=4,
                              gradient_checkpointing=True)  # mixed_precision auto: bf16 params, fp32 reduce
        share = samples[rank::world]
        times, metrics = [], {}
        for _ in range(3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            metrics = learner.rl_step(collate(learner.processor, share))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        if rank == 0:
            Path(out).write_text(json.dumps({"times": times, "loss": metrics["loss"], "grad_norm": metrics["grad_norm"],
                                             "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}))
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@needs_cuda
def test_bf16_learner_step(tiny_policy_dir, policy_samples, tmp_path):
    import torch.multiprocessing as mp

    world = min(2, torch.cuda.device_count())
    samples = policy_samples(8 * world, ["indoor", "outdoor", "drone"], seed=3, with_rollout_logprobs=True)
    out = tmp_path / "rank0.json"
    mp.spawn(_rank_main, args=(world, str(tmp_path / "pg"), str(tiny_policy_dir), samples, str(out)), nprocs=world)
    result = json.loads(out.read_text())
    figure("bf16 learner step", f"{world} rank(s), FSDP2 bf16 params + fp32 reduce, checkpointing; steady step "
           f"{min(result['times'][1:]) * 1e3:.1f} ms (first {result['times'][0] * 1e3:.0f} ms), loss "
           f"{result['loss']:.4f}, grad norm {result['grad_norm']:.4f}, peak {result['peak_gib']:.2f} GiB")
    assert all(map(torch.isfinite, torch.tensor([result["loss"], result["grad_norm"]])))


@pytest.fixture
def cuda_engine(tiny_policy_dir):
    from rollout_helpers import EXPERTS, LORA, random_experts

    from spacevista.rollout.hf_engine import HFEngine

    def make(dtype: torch.dtype) -> HFEngine:
        engine = HFEngine(tiny_policy_dir, EXPERTS, LORA, dtype=dtype, device="cuda")
        engine.update_experts(1, random_experts(tiny_policy_dir, seed=1))
        return engine

    return make


@pytest.mark.gpu
@needs_cuda
def test_routed_generation_on_cuda(cuda_engine):
    from rollout_helpers import mixed_requests

    from spacevista.rollout.engine import SamplingParams

    requests, greedy = mixed_requests(), SamplingParams(temperature=0, max_tokens=16)
    exact = cuda_engine(torch.float32)
    mixed = [c.response_ids for c in exact.generate(requests, greedy)]
    alone = [exact.generate([r], greedy)[0].response_ids for r in requests]
    assert mixed == alone  # each request through its own expert, in one mixed batch
    fast = cuda_engine(torch.bfloat16)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=32, seed=0)
    fast.generate(requests, params)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    completions = fast.generate(requests, params)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(len(c.response_ids) for c in completions)
    experts = len({r.expert for r in requests})
    figure("routed generation (transformers, bf16)", f"{len(completions)} samples over {experts} experts, "
           f"{tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tok/s")


@pytest.mark.gpu
@needs_cuda
def test_rollout_learner_logprob_gap_bf16(cuda_engine, tiny_policy_dir):
    """Sampled-token log-probs of the bf16 rollout vs the learner's bf16 recomputation of the same tokens."""
    from rollout_helpers import EXPERTS, LORA, mixed_requests, random_experts

    from spacevista.learner.batch import TrainSample, collate
    from spacevista.policies.experts import attach_experts, load_expert_state_dict
    from spacevista.learner.logprobs import policy_logprobs
    from spacevista.policies.tiny import load_policy
    from spacevista.rollout.engine import SamplingParams

    engine = cuda_engine(torch.bfloat16)
    completions = engine.generate(mixed_requests(), SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=5))
    model, processor = load_policy(tiny_policy_dir, dtype=torch.bfloat16, device="cuda")
    model = attach_experts(model, EXPERTS, LORA, trainable=False).eval()
    for expert, state in random_experts(tiny_policy_dir, seed=1).items():
        load_expert_state_dict(model, expert, state)
    samples = [TrainSample(prompt=c.prompt, response_ids=c.response_ids, expert=c.expert, uid=c.request_id)
               for c in completions]
    batch = collate(processor, samples)
    with torch.no_grad():
        learner, _ = policy_logprobs(model, batch, 1.0, share_prompts=True)
    mask = batch.batch["response_mask"].bool().to(learner.device)
    rollout = torch.zeros_like(learner)
    for i, c in enumerate(completions):
        rollout[i, :len(c.logprobs)] = torch.tensor(c.logprobs)
    gap = (learner - rollout).abs()[mask]
    figure("rollout/learner log-prob gap (bf16)", f"max {gap.max().item():.3e}, mean {gap.mean().item():.3e} over "
           f"{int(mask.sum())} tokens")
    assert gap.max().item() < 0.5  # bf16 rounding, not a different distribution


@pytest.mark.gpu
@needs_cuda
def test_vllm_on_gpu(tiny_policy_dir):
    pytest.importorskip("vllm", reason="vLLM is not installed on this GPU machine")
    from rollout_helpers import EXPERTS, LORA, mixed_requests

    from spacevista.rollout.engine import SamplingParams
    from spacevista.rollout.vllm_engine import VLLMEngine

    start = time.perf_counter()
    engine = VLLMEngine(tiny_policy_dir, EXPERTS, LORA, max_model_len=512, max_num_seqs=64, dtype="bfloat16",
                        gpu_memory_utilization=0.3)
    load_s = time.perf_counter() - start
    try:
        params = SamplingParams(n=4, temperature=1.0, max_tokens=32, seed=0)
        engine.generate(mixed_requests(), params)
        start = time.perf_counter()
        completions = engine.generate(mixed_requests(), params)
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    tokens = sum(len(c.response_ids) for c in completions)
    figure("vLLM on GPU (multi-LoRA, bf16, CUDA graphs)", f"load {load_s:.0f} s; {tokens} tokens in {seconds:.2f} s "
           f"= {tokens / seconds:.0f} tok/s")
    assert completions and all(c.logprobs for c in completions)
