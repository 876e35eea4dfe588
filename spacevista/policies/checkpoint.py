"""Learner checkpoint files and the key conversions between peft, the wrapped model and HF.

Layout of a checkpoint directory:
  <expert>/      one peft adapter directory per expert (`PeftModel.from_pretrained(base, dir/expert)`)
  learner.pt     router, optimizer (full state dict keyed by parameter names), scheduler, step, RNG
  base/          only if the base model was trained (full-parameter SFT): a Hugging Face model
                 directory with the processor; resume by building the learner from it
  dense_fusion.safetensors  only with the dense branch: its trained fusion (metadata: encoder id, shapes)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file

from spacevista.policies.dense import FUSION_FILE, load_fusion, save_fusion
from spacevista.policies.experts import write_expert_dir

LEARNER_FILE = "learner.pt"
BASE_DIR = "base"
PEFT_PREFIX = "base_model.model."


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def hf_key(model_key: str) -> str:
    """PeftModel parameter name -> the plain Hugging Face model's name."""
    return model_key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def hf_base_state_dict(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {hf_key(k): v for k, v in model_state.items() if "lora_" not in k}


def hf_to_model_keys(model: PeftModel, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF-named base weights -> the PeftModel's names (LoRA-wrapped layers gain `.base_layer`)."""
    names = {hf_key(n): n for n in model.state_dict() if "lora_" not in n}
    unknown = set(hf_state) - set(names)
    if unknown:
        raise KeyError(f"base weights the model does not have: {sorted(unknown)[:5]}")
    return {names[k]: v for k, v in hf_state.items()}


def peft_to_model_keys(experts: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-expert peft-format dicts (no adapter name in keys) -> PeftModel parameter names."""
    out = {}
    for expert, state in experts.items():
        for key, value in state.items():
            for part in (".lora_A.", ".lora_B."):
                key = key.replace(part, f"{part}{expert}.")
            out[key] = value
    return out


def save_hf_base(directory: Path, state: dict[str, torch.Tensor], model: PeftModel, processor) -> None:
    """Write HF-named base weights as a model directory `load_policy` (and vLLM) can open."""
    from transformers import AutoModelForImageTextToText

    config = model.get_base_model().config
    hf_model = AutoModelForImageTextToText.from_config(config)
    result = hf_model.load_state_dict(state, strict=False)
    tied = set(getattr(hf_model, "_tied_weights_keys", None) or ())
    if result.unexpected_keys or set(result.missing_keys) - tied:
        raise KeyError(f"base weights do not fit the model: missing {result.missing_keys[:5]}, "
                       f"unexpected {result.unexpected_keys[:5]}")
    hf_model.generation_config = model.get_base_model().generation_config
    hf_model.save_pretrained(directory)
    processor.save_pretrained(directory)


def write(directory: Path, state: dict[str, Any], model: PeftModel, processor) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for expert, expert_state in state["experts"].items():
        write_expert_dir(directory / expert, model.peft_config[expert], expert_state)
    torch.save({k: state[k] for k in ("router", "optimizer", "scheduler", "step", "rng")}, directory / LEARNER_FILE)
    if state.get("base"):
        save_hf_base(directory / BASE_DIR, state["base"], model, processor)
    if state.get("dense"):
        save_fusion(directory / FUSION_FILE, state["dense"], state.get("dense_meta", {}))


def read(directory: Path, experts: list[str]) -> dict[str, Any]:
    from transformers import AutoModelForImageTextToText

    state = torch.load(directory / LEARNER_FILE, weights_only=False)  # our own file: RNG states are not tensors
    state["experts"] = {e: load_file(str(directory / e / "adapter_model.safetensors")) for e in experts}
    base_dir = directory / BASE_DIR
    state["base"] = (AutoModelForImageTextToText.from_pretrained(base_dir).state_dict()
                     if (base_dir / "config.json").exists() else None)
    state["dense"], state["dense_meta"] = (load_fusion(directory / FUSION_FILE) if (directory / FUSION_FILE).exists()
                                           else (None, {}))
    return state
