"""Learner checkpoint files, in plain formats (safetensors and JSON: nothing is unpickled on load),
and the key conversions between peft, the wrapped model and HF.

Layout of a checkpoint directory:
  <expert>/               one peft adapter directory per expert (`PeftModel.from_pretrained(base, dir/expert)`);
                          its adapter_config.json names a base that loads from any working directory
                          (`base_model_name_or_path`: see `adapter_base`); our own loaders never read it
  router.safetensors      the scale router (classifier weights, trained-step count)
  optimizer.safetensors   AdamW's per-parameter state (`<parameter name>::<exp_avg|exp_avg_sq|step>`)
  learner.json            optimizer parameter groups, scheduler, learner step, RNG streams (python, numpy)
  rng.safetensors         torch's (and CUDA's) RNG states
  base/                   only if the base model was trained (full-parameter SFT): a Hugging Face model
                          directory with the processor; resume by building the learner from it
  dense_fusion.safetensors  only with the dense branch: its trained fusion (metadata: encoder id, shapes)

Checkpoints written before 2026-11-30 hold a pickled `learner.pt` instead: it is never loaded
implicitly; `spacevista checkpoint upgrade PATH --trust-pickle` converts one you trust.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from spacevista.cluster.run_storage import committed_dir
from spacevista.policies.dense.fusion import FUSION_FILE, load_fusion, save_fusion
from spacevista.policies.experts import is_lora, write_expert_dir

LEARNER_FILE = "learner.json"
ROUTER_FILE = "router.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
PICKLED_LEARNER_FILE = "learner.pt"  # the format before 2026-11-30
BASE_DIR = "base"
PEFT_PREFIX = "base_model.model."
FORMAT = 2


class CheckpointFormatError(ValueError):
    """A checkpoint this version does not load as it is; the message says what to do."""


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
    return {hf_key(k): v for k, v in model_state.items() if not is_lora(k)}


def hf_to_model_keys(model: PeftModel, hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF-named base weights -> the PeftModel's names (LoRA-wrapped layers gain `.base_layer`)."""
    names = {hf_key(n): n for n in model.state_dict() if not is_lora(n)}
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


def adapter_base(directory: Path, trained_base: bool, model: PeftModel, base_model: str = "") -> str:
    """What the experts' adapter configs name as their base: a name no loader takes for a hub repo id
    unless it is one. With a trained base, the checkpoint's own `base/` as an absolute path where the
    checkpoint lands once committed (`directory` may be a staging directory); else the model the run
    started from (`base_model`, or the one `model` was loaded from): absolute when a local directory."""
    if trained_base:
        return str(committed_dir(directory.resolve()) / BASE_DIR)
    name = base_model or model.get_base_model().config._name_or_path
    local = Path(name).expanduser() if name else None
    return str(local.resolve()) if local is not None and local.is_dir() else name


def write(directory: Path, state: dict[str, Any], model: PeftModel, processor, base_model: str = "") -> None:
    """Write a learner state (see `LearnerCore.state_dict`) as the layout above. `base_model`: the model
    the run started from, when `model` was loaded from elsewhere (see `adapter_base`)."""
    directory.mkdir(parents=True, exist_ok=True)
    base_name = adapter_base(directory, bool(state.get("base")), model, base_model)
    for expert, expert_state in state["experts"].items():
        config = copy.copy(model.peft_config[expert])  # peft reads the live one's base name on every state dict
        config.base_model_name_or_path = base_name or config.base_model_name_or_path
        write_expert_dir(directory / expert, config, expert_state)
    _write_learner_state(directory, state)
    if state.get("base"):
        save_hf_base(directory / BASE_DIR, state["base"], model, processor)
    if state.get("dense"):
        save_fusion(directory / FUSION_FILE, state["dense"], state.get("dense_meta", {}))


def read(directory: Path, experts: list[str]) -> dict[str, Any]:
    """The learner state written by `write` (safetensors and JSON only)."""
    from transformers import AutoModelForImageTextToText

    check_format(directory)
    meta = json.loads((directory / LEARNER_FILE).read_text())
    rng_tensors = load_file(str(directory / RNG_FILE))
    python_state, numpy_state = meta["rng"]["python"], meta["rng"]["numpy"]
    state = {"router": read_router(directory), "step": meta["step"], "scheduler": meta["scheduler"],
             "optimizer": _unflatten_optimizer(load_file(str(directory / OPTIMIZER_FILE)), meta["param_groups"]),
             "rng": {"python": (python_state[0], tuple(python_state[1]), python_state[2]),
                     "numpy": (numpy_state[0], np.asarray(numpy_state[1], dtype=np.uint32), *numpy_state[2:]),
                     "torch": rng_tensors["torch"]}}
    cuda = [rng_tensors[k] for k in sorted((k for k in rng_tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda:
        state["rng"]["cuda"] = cuda
    state["experts"] = {e: load_file(str(directory / e / "adapter_model.safetensors")) for e in experts}
    base_dir = directory / BASE_DIR
    state["base"] = (AutoModelForImageTextToText.from_pretrained(base_dir).state_dict()
                     if (base_dir / "config.json").exists() else None)
    state["dense"], state["dense_meta"] = (load_fusion(directory / FUSION_FILE) if (directory / FUSION_FILE).exists()
                                           else (None, {}))
    return state


def read_router(directory: Path) -> dict[str, torch.Tensor]:
    """The router's state dict (what eval's learned routing loads)."""
    check_format(directory)
    return load_file(str(directory / ROUTER_FILE))


def check_format(directory: Path) -> None:
    """Raise CheckpointFormatError naming what to do for a checkpoint this version cannot read as it is."""
    if (directory / LEARNER_FILE).is_file():
        return
    if (directory / PICKLED_LEARNER_FILE).is_file():
        raise CheckpointFormatError(
            f"{directory} was written by an older SpaceVista-RL: its {PICKLED_LEARNER_FILE} is a pickle, which "
            f"this version never loads (a crafted one runs code). If you trust it, convert it once with "
            f"`spacevista checkpoint upgrade {directory} --trust-pickle`")
    raise CheckpointFormatError(f"{directory} holds no {LEARNER_FILE}: not a SpaceVista-RL checkpoint")


def upgrade(directory: Path) -> Path:
    """Rewrite an old checkpoint's pickled learner.pt in the plain layout, in place (the caller has
    decided to trust the pickle). The pickle is kept as learner.pt.old."""
    old = directory / PICKLED_LEARNER_FILE
    if not old.is_file():
        raise CheckpointFormatError(f"{directory} has no {PICKLED_LEARNER_FILE} to upgrade")
    state = torch.load(old, map_location="cpu", weights_only=False)  # trusted by the caller's explicit choice
    _write_learner_state(directory, state)
    old.rename(directory / (PICKLED_LEARNER_FILE + ".old"))
    return directory


def _write_learner_state(directory: Path, state: dict[str, Any]) -> None:
    """Router, optimizer, scheduler, step and RNG streams as safetensors + JSON."""
    save_file(_tensors(state["router"]), str(directory / ROUTER_FILE))
    optimizer_tensors, param_groups = _flatten_optimizer(state["optimizer"])
    save_file(optimizer_tensors, str(directory / OPTIMIZER_FILE))
    rng = state["rng"]
    save_file({"torch": rng["torch"], **{f"cuda_{i}": t for i, t in enumerate(rng.get("cuda", []))}},
              str(directory / RNG_FILE))
    python_state, numpy_state = rng["python"], rng["numpy"]
    meta = {"format": FORMAT, "step": state["step"], "scheduler": state["scheduler"], "param_groups": param_groups,
            "rng": {"python": [python_state[0], list(python_state[1]), python_state[2]],
                    "numpy": [numpy_state[0], numpy_state[1].tolist(), *map(_plain, numpy_state[2:])]}}
    (directory / LEARNER_FILE).write_text(json.dumps(meta))


def _tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _flatten_optimizer(optimizer_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """torch's full optimizer state dict -> (tensors keyed `<param>::<key>`, JSON-able parameter groups)."""
    tensors = {}
    for name, per_param in optimizer_state.get("state", {}).items():
        for key, value in per_param.items():
            value = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{name}::{key}"] = value.detach().to("cpu").contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
              for group in optimizer_state.get("param_groups", [])]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, dict[str, torch.Tensor]] = {}
    for flat, value in tensors.items():
        name, key = flat.rsplit("::", 1)
        state.setdefault(name, {})[key] = value
    return {"state": state, "param_groups": [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
                                             for g in groups]}
