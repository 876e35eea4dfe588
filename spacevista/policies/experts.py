"""Scale experts: one peft LoRA adapter per scale on the language model's linear layers.

The base model and the vision tower stay frozen; each expert is a named peft adapter (the scale's
name), so checkpoints are ordinary peft adapter directories and vLLM can serve them as LoRAs
(vLLM applies LoRA to the language model only, hence the target regex below).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file

from spacevista.configs.policy import LANGUAGE_MODEL_TARGET, ExpertLoRAConfig

__all__ = ["LANGUAGE_MODEL_TARGET", "ExpertLoRAConfig", "attach_experts", "is_lora", "lora_config"]


def is_lora(name: str) -> bool:
    """Whether a parameter (or state-dict key) belongs to a LoRA expert, by peft's `lora_` naming."""
    return "lora_" in name


def lora_config(cfg: ExpertLoRAConfig | None = None) -> LoraConfig:
    """The peft `LoraConfig` every expert shares."""
    cfg = cfg or ExpertLoRAConfig()
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
                      init_lora_weights=cfg.init_lora_weights, bias="none")


def attach_experts(model: torch.nn.Module, names: Iterable[str], lora: ExpertLoRAConfig | None = None,
                   trainable: bool = True) -> PeftModel:
    """Wrap `model` in peft with one LoRA adapter per name; base weights frozen.

    peft leaves only the first (or the active) adapter trainable; we set requires_grad on every
    expert's LoRA parameters explicitly so that one optimizer sees all experts. Returned in eval
    mode: mixed-expert batches (`adapter_names=`) need it, for training too (dropout is 0).
    """
    names = list(names)
    if not names:
        raise ValueError("attach_experts: no expert names given")
    if len(set(names)) != len(names):
        raise ValueError(f"attach_experts: duplicate expert names {names}")
    peft_cfg = lora_config(lora)
    peft_model = get_peft_model(model, peft_cfg, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, lora_config(lora))
    set_experts_trainable(peft_model, names if trainable else [])
    return peft_model.eval()  # get_peft_model leaves train mode, where peft refuses `adapter_names`


def expert_names(model: PeftModel) -> list[str]:
    return list(model.peft_config.keys())


def _is_expert_param(param_name: str, expert: str) -> bool:
    return f".{expert}." in param_name and is_lora(param_name)


def expert_parameters(model: torch.nn.Module, expert: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of one expert, by qualified name."""
    params = {n: p for n, p in model.named_parameters() if _is_expert_param(n, expert)}
    if not params:
        raise KeyError(f"no LoRA parameters for expert {expert!r}")
    return params


def set_experts_trainable(model: torch.nn.Module, experts: Iterable[str]) -> None:
    """Exactly the LoRA parameters of `experts` require grad; everything else is frozen."""
    experts = list(experts)
    for name, param in model.named_parameters():
        param.requires_grad_(any(_is_expert_param(name, e) for e in experts))


def expert_state_dict(model: PeftModel, expert: str) -> dict[str, torch.Tensor]:
    """One expert's adapter tensors in peft's saved format (keys without the adapter name), on CPU."""
    sd = get_peft_model_state_dict(model, adapter_name=expert, save_embedding_layers=False)  # LoRA only: no hub lookup
    return {k: v.detach().to("cpu").clone() for k, v in sd.items()}


def load_expert_state_dict(model: PeftModel, expert: str, state: Mapping[str, torch.Tensor]) -> None:
    """Copy an expert's adapter tensors (peft saved format) into the model in place; strict."""
    if expert not in model.peft_config:
        raise KeyError(f"model has no expert {expert!r}; it has {expert_names(model)}")
    result = set_peft_model_state_dict(model, dict(state), adapter_name=expert)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise KeyError(f"expert {expert!r}: unexpected adapter keys {unexpected[:5]}")
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if _is_expert_param(k, expert)]
    if missing:
        raise KeyError(f"expert {expert!r}: adapter keys missing from the update {missing[:5]}")


@contextmanager
def base_model_only(model: PeftModel) -> Iterator[None]:
    """Run the bare base model (every expert off), e.g. for reference log-probs.

    peft's `disable_adapter` freezes all LoRA weights on entry and, on exit, leaves only the ACTIVE
    adapter trainable; we restore every parameter's requires_grad as it was.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with model.disable_adapter():
            yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def write_expert_dir(path: str | os.PathLike, config: LoraConfig, state: Mapping[str, torch.Tensor]) -> Path:
    """Write one expert as a peft adapter directory (adapter_config.json + safetensors).

    `state` is in peft's saved format (see `expert_state_dict`); the directory loads with
    `PeftModel.from_pretrained(base, path, adapter_name=...)` and vLLM's `LoRARequest`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(path))
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(path / SAFETENSORS_WEIGHTS_NAME))
    return path
