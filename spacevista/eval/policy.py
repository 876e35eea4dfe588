"""What evaluation takes from a training checkpoint: the base model, the scale experts, the router.

A checkpoint `step_N/` (learner/checkpoint_files.py, cluster/run_storage.py) holds one peft adapter directory
per expert, `router.safetensors` (the learned router), `base/` when full-parameter SFT
trained the base model, and the `COMPLETE` marker. The base model the experts adapt is, first found:
`--model`, `step_N/base/`, the marker's `model_path`. The base policy baseline (`--checkpoint none`)
has no experts: every prompt goes to the engines' `BASE_EXPERT` (the base model, no adapter). A
checkpoint trained with the dense branch holds `dense_fusion.safetensors`: its fusion,
and in its metadata the branch's config, so evaluation rebuilds the same branch (encoder included).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file

from spacevista.cluster.run_storage import COMPLETE_MARKER, latest_checkpoint
from spacevista.configs.dense import DenseConfig, TinyDenseEncoderConfig
from spacevista.policies.dense.fusion import FUSION_FILE, load_fusion
from spacevista.learner.checkpoint_files import (BASE_DIR, PICKLED_LEARNER_FILE, ROUTER_FILE, CheckpointFormatError,
                                           read_router)
from spacevista.configs.experts import expert_map
from spacevista.policies.experts import ExpertLoRAConfig
from spacevista.policies.router import RouterConfig, ScaleRouter
from spacevista.scales import SCALES

ADAPTER_CONFIG = "adapter_config.json"


class EvalError(Exception):
    """A checkpoint, model or option that evaluation cannot use; the message says what to do."""


@dataclass
class EvalPolicy:
    """The policy to evaluate: `weights` are the trained experts' adapters (peft saved format), none for
    the base policy; `router` is the checkpoint's learned router, None when it has no trained one."""

    name: str
    model_path: Path
    experts: list[str]
    lora: ExpertLoRAConfig = field(default_factory=ExpertLoRAConfig)
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    router: ScaleRouter | None = None
    checkpoint: Path | None = None
    expert_of_scale: dict[str, str] = field(default_factory=dict)  # label routing: scale -> expert
    dense: DenseConfig | None = None  # the dense branch the checkpoint was trained with; None: none
    dense_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # its fusion
    dense_meta: dict[str, str] = field(default_factory=dict)  # the fusion file's metadata (encoder id, ...)


def base_policy(model_path: str | Path) -> EvalPolicy:
    """The initial policy: the base model alone (no experts; its requests name `BASE_EXPERT`)."""
    return EvalPolicy("base", _model_dir(Path(model_path), "--model"), [])


def load_policy_from_checkpoint(path: str | Path, model_path: str | Path | None = None) -> EvalPolicy:
    """The experts, LoRA shape, router and base model of a `step_N/` directory (or of a run
    directory's latest complete checkpoint)."""
    checkpoint = resolve_checkpoint(Path(path))
    experts = _expert_names(checkpoint)
    lora = _lora_config(checkpoint, experts)
    weights = {e: load_file(str(checkpoint / e / SAFETENSORS_WEIGHTS_NAME)) for e in experts}
    base = _base_model(checkpoint, Path(model_path) if model_path else None)
    return EvalPolicy(checkpoint.name, base, experts, lora, weights, _router(checkpoint, experts), checkpoint,
                      _expert_of_scale(checkpoint, experts), *_dense(checkpoint))


def resolve_checkpoint(path: Path) -> Path:
    """`path` itself when it holds expert adapters, else the run directory's latest checkpoint."""
    if not path.is_dir():
        raise EvalError(f"--checkpoint {path}: no such directory")
    if any((d / ADAPTER_CONFIG).is_file() for d in path.iterdir() if d.is_dir()):
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise EvalError(f"--checkpoint {path}: neither a step_N/ checkpoint (expert adapter directories) "
                        f"nor a run directory with complete checkpoints")
    return latest


def _expert_names(checkpoint: Path) -> list[str]:
    """Expert directories in the router's class order: as the checkpoint's marker records it
    (training writes `experts`), else scales order."""
    names = {d.name for d in checkpoint.iterdir() if (d / ADAPTER_CONFIG).is_file()}
    marker = checkpoint / COMPLETE_MARKER
    recorded = json.loads(marker.read_text()).get("experts") if marker.is_file() else None
    unknown = sorted(names - set(SCALES))
    if unknown and not recorded:
        raise EvalError(f"{checkpoint}: expert adapters {unknown} are not named by a scale {list(SCALES)} and "
                        f"no {COMPLETE_MARKER} lists the experts")
    if recorded:
        if set(recorded) != names:
            raise EvalError(f"{checkpoint}: {COMPLETE_MARKER} lists experts {recorded} "
                            f"but holds adapters {sorted(names)}")
        return list(recorded)
    return [s for s in SCALES if s in names]


def _expert_of_scale(checkpoint: Path, experts: list[str]) -> dict[str, str]:
    """scale -> expert as training routed it (the controller's state in the checkpoint), else by name."""
    state_file = checkpoint / "controller.json"
    recorded = json.loads(state_file.read_text()).get("expert_of_scale") if state_file.is_file() else None
    return dict(recorded) if recorded else expert_map(experts)


def _dense(checkpoint: Path) -> tuple[DenseConfig | None, dict[str, torch.Tensor], dict[str, str]]:
    """The checkpoint's dense fusion and the branch config it records (before it did: the shapes only, with
    the default encoder, which the fusion's encoder id then has to match)."""
    path = checkpoint / FUSION_FILE
    if not path.is_file():
        return None, {}, {}
    weights, meta = load_fusion(path)
    recorded = json.loads(meta["config"]) if "config" in meta else {
        "heads": int(meta["heads"]), "projector": meta["projector"], "resolution": int(meta["resolution"])}
    tiny = TinyDenseEncoderConfig(**recorded.pop("tiny", {}))
    return DenseConfig(**{**recorded, "tiny": tiny, "enabled": True}), weights, meta


def _lora_config(checkpoint: Path, experts: list[str]) -> ExpertLoRAConfig:
    """The one LoRA shape every expert shares (the engines serve all experts with one config)."""
    shapes = {}
    for expert in experts:
        cfg = LoraConfig.from_pretrained(str(checkpoint / expert))
        target = cfg.target_modules if isinstance(cfg.target_modules, str) else sorted(cfg.target_modules)
        shapes[expert] = (cfg.r, cfg.lora_alpha, json.dumps(target))
    if len(set(shapes.values())) != 1:
        raise EvalError(f"{checkpoint}: experts have different LoRA shapes (rank, alpha, targets): {shapes}")
    rank, alpha, target = shapes[experts[0]]
    return ExpertLoRAConfig(rank=rank, alpha=alpha, target_modules=json.loads(target))


def _model_dir(path: Path, what: str) -> Path:
    if not (path / "config.json").is_file():
        raise EvalError(f"{what} {path}: not a Hugging Face model directory (no config.json)")
    return path


def _base_model(checkpoint: Path, model_path: Path | None) -> Path:
    if model_path is not None:
        return _model_dir(model_path, "--model")
    if (checkpoint / BASE_DIR / "config.json").is_file():
        return checkpoint / BASE_DIR
    marker = checkpoint / COMPLETE_MARKER
    recorded = json.loads(marker.read_text()).get("model_path") if marker.is_file() else None
    if recorded:
        return _model_dir(Path(recorded), f"{checkpoint} records model_path")
    raise EvalError(f"{checkpoint} does not say which base model its experts adapt (no {BASE_DIR}/, no model_path "
                    f"in {COMPLETE_MARKER}): pass --model PATH (the run's model.path, or its tiny policy directory)")


def _router(checkpoint: Path, experts: list[str]) -> ScaleRouter | None:
    """The checkpoint's learned router (router.safetensors), if it has a classifier that took a step."""
    if not (checkpoint / ROUTER_FILE).is_file() and not (checkpoint / PICKLED_LEARNER_FILE).is_file():
        return None
    try:
        state = read_router(checkpoint)
    except CheckpointFormatError as err:
        raise EvalError(str(err)) from None
    if "classifier.0.weight" not in state or int(state["trained_steps"]) == 0:
        return None
    classes = state["classifier.3.weight"].shape[0]
    if classes != len(experts):
        raise EvalError(f"{checkpoint}: the router has {classes} classes for {len(experts)} experts {experts}")
    router = ScaleRouter(experts, state["classifier.0.weight"].shape[0],
                         RouterConfig(hidden=state["classifier.1.weight"].shape[0]))
    try:
        router.load_state_dict(state)
    except RuntimeError as err:
        raise EvalError(f"{checkpoint}: the router state in {ROUTER_FILE} does not fit ScaleRouter: {err}") from None
    return router.eval()
