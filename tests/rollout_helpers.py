"""Shared setup of the rollout tests (the policy itself is conftest's `tiny_policy_dir`): random
experts, text/image/video requests, and peft's own single-adapter paths as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spacevista.policies.chat import media_token_ids
from spacevista.policies.experts import ExpertLoRAConfig, attach_experts, expert_state_dict
from spacevista.policies.tiny import load_policy
from spacevista.rollout.engine import GenerationRequest
from spacevista.scales import OUTPUT_INSTRUCTION, SCALES
from spacevista.scales import SYNTHETIC_TASK_SPECS as TASK_SPECS

EXPERTS = list(SCALES)
LORA = ExpertLoRAConfig(rank=8, alpha=16)


def random_experts(model_path: Path, seed: int, experts: list[str] = EXPERTS) -> dict[str, dict[str, torch.Tensor]]:
    """Expert weights with non-zero A and B (fresh experts would all equal the base model)."""
    torch.manual_seed(seed)
    model, _ = load_policy(model_path)
    lora = ExpertLoRAConfig(rank=LORA.rank, alpha=LORA.alpha, init_lora_weights=False)
    peft_model = attach_experts(model, experts, lora, trainable=False)
    return {e: expert_state_dict(peft_model, e) for e in experts}


def _picture(seed: int, size: int = 56) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def text_request(i: int, expert: str) -> GenerationRequest:
    task = TASK_SPECS[i % len(TASK_SPECS)]
    return GenerationRequest(f"text-{i}", [{"role": "user", "content": f"{task.description}? {OUTPUT_INSTRUCTION}"}],
                             expert)


def image_request(i: int, expert: str) -> GenerationRequest:
    return GenerationRequest(f"image-{i}", [{"role": "user", "content": f"<image> How large is it? {i}"}], expert,
                             images=[_picture(i)])


def video_request(i: int, expert: str, frames: int = 4) -> GenerationRequest:
    return GenerationRequest(f"video-{i}", [{"role": "user", "content": f"<video> How far did the camera move? {i}"}],
                             expert, videos=[[_picture(100 * i + f) for f in range(frames)]])


def mixed_requests() -> list[GenerationRequest]:
    """Text, image and video prompts spread over every expert, experts interleaved."""
    makers = (text_request, image_request, video_request)
    return [makers[i % 3](i, EXPERTS[i % len(EXPERTS)]) for i in range(10)]


def encode_alone(engine, request: GenerationRequest) -> dict[str, torch.Tensor]:
    """The processor inputs of one request, as the HF engine builds them."""
    text = engine.processor.apply_chat_template(request.chat_messages(), add_generation_prompt=True, tokenize=False)
    return engine.processor(text=[text], images=request.images or None, videos=request.videos or None,
                            return_tensors="pt")


def peft_alone(engine, request: GenerationRequest, max_tokens: int) -> list[int]:
    """Greedy tokens of one request through peft's own single-adapter path (no routing)."""
    inputs = encode_alone(engine, request)
    model = engine.model
    model.set_adapter(request.expert)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def teacher_forced_logprobs(engine, request: GenerationRequest, response_ids: list[int],
                            temperature: float) -> torch.Tensor:
    """log softmax(logits / T) of `response_ids` given the prompt, through the request's expert (peft path)."""
    inputs = encode_alone(engine, request)
    response = torch.tensor([response_ids])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], response], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(response)], dim=1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(response)], dim=1)
    engine.model.set_adapter(request.expert)
    with torch.inference_mode():
        logits = engine.model(**inputs).logits[0, -len(response_ids) - 1:-1].float()
        logits[:, media_token_ids(engine.model.config)] = float("-inf")  # engines never sample media tokens
    return torch.log_softmax(logits / temperature, dim=-1).gather(1, response.T)[:, 0]
