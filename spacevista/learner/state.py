"""What a learner hands out and takes back: expert, dense and base weights (for rollout workers and export),
and its whole state as a checkpoint (`learner.checkpoint_files` is the on-disk format).

`LearnerState` is the state half of `LearnerCore` (a mixin over the core's model, router, dense branch,
optimizer and scheduler). Under FSDP every method that touches weights is collective: call it on every rank;
rank-0-only results are empty on the other ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from peft.utils import get_peft_model_state_dict
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from spacevista.learner import checkpoint_files
from spacevista.learner.sharding import gather_full_state
from spacevista.policies.dense import branch as dense_branch
from spacevista.policies.dense import fusion as dense_fusion
from spacevista.policies.experts import is_lora


class LearnerState:
    """Weights out, checkpoints in and out; the attributes are `LearnerCore`'s."""

    def expert_state_dicts(self, experts: Sequence[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """{expert: peft-format adapter state dict} (CPU tensors) on rank 0; {} on other ranks."""
        names = list(experts or self.experts)
        full = gather_full_state(self.model, lambda n: is_lora(n) and any(f".{e}." in n for e in names))
        if self.rank != 0:
            return {}
        # LoRA weights only, never the base's embeddings: peft's default ("auto") asks the hub about the base to decide
        return {e: get_peft_model_state_dict(self.model, state_dict=full, adapter_name=e, save_embedding_layers=False)
                for e in names}

    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        """The dense fusion's weights (CPU; replicated, so any rank has them; {} without the branch)."""
        return dense_fusion.fusion_state_dict(self.dense.fusion) if self.dense is not None else {}

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The base model's weights in Hugging Face naming (rank 0; {} elsewhere)."""
        full = gather_full_state(self.model, lambda n: not is_lora(n))
        return checkpoint_files.hf_base_state_dict(full) if self.rank == 0 else {}

    def export_policy(self, directory: str | Path) -> Path:
        """Write the base model (as full SFT left it) + processor as a Hugging Face directory, the
        way trained base weights reach rollout workers: they (re)load the policy from it, then get
        experts as usual. Collective; rank 0 writes."""
        state = self.base_state_dict()
        if self.rank == 0:
            checkpoint_files.save_hf_base(Path(directory), state, self.model, self.processor)
        return Path(directory)

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume: experts, router, optimizer, scheduler, step, RNG (+ base if trained)."""
        state = {"experts": self.expert_state_dicts(), "router": self.router.state_dict(),
                 "optimizer": get_optimizer_state_dict(self._state_modules, self.optimizer, options=StateDictOptions(
                     full_state_dict=True, cpu_offload=True)),
                 "scheduler": self.scheduler.state_dict(), "step": self.step, "rng": checkpoint_files.rng_state(),
                 "base": self.base_state_dict() if self.base_trained else None}
        if self.dense is not None:
            state.update(dense=self.dense_state_dict(), dense_meta=self.dense.metadata())
        return state if self.rank == 0 else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`; under FSDP only rank 0 needs `state` (others may pass {})."""
        meta = {k: state[k] for k in ("router", "scheduler", "step", "rng")} if self.rank == 0 else {}
        meta["base_trained"] = bool(state.get("base")) if self.rank == 0 else False
        meta["dense"] = (state.get("dense"), state.get("dense_meta", {})) if self.rank == 0 else (None, {})
        meta["optimizer_keys"] = sorted(state.get("optimizer", {}).get("state", {})) if self.rank == 0 else []
        if self.world > 1:
            box = [meta]
            dist.broadcast_object_list(box, src=0)
            meta = box[0]
        model_state = checkpoint_files.peft_to_model_keys(state.get("experts", {}))
        if state.get("base"):
            model_state.update(checkpoint_files.hf_to_model_keys(self.model, state["base"]))
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=self.world > 1, strict=False)
        result = set_model_state_dict(self.model, model_state, options=options)
        if result.unexpected_keys:
            raise KeyError(f"checkpoint weights the model does not have: {result.unexpected_keys[:5]}")
        self._load_optimizer_state(state.get("optimizer", {}), set(meta["optimizer_keys"]), options)
        self.router.load_state_dict(meta["router"])
        dense_branch.load_checkpoint_fusion(self.dense, *meta["dense"])
        self.scheduler.load_state_dict(meta["scheduler"])
        self.step = meta["step"]
        self.base_trained = meta["base_trained"]
        checkpoint_files.set_rng_state(meta["rng"])  # rank 0's streams on every rank

    def _load_optimizer_state(self, optimizer_state: dict[str, Any], saved: set[str],
                              options: StateDictOptions) -> None:
        """Load the optimizer state exactly as saved. torch's `set_optimizer_state_dict` first gives
        every trainable parameter a state by a zero-gradient step (step=1, zero moments) and loads only
        into trainable parameters: so make every optimized parameter trainable while loading, then drop
        the states the checkpoint did not have, or Adam's bias correction of a never-stepped expert
        would differ from the uninterrupted run's."""
        optimized = {id(q) for g in self.optimizer.param_groups for q in g["params"]}
        for param in self._state_modules.parameters():
            param.requires_grad_(id(param) in optimized)
        set_optimizer_state_dict(self._state_modules, self.optimizer, optimizer_state, options=options)
        self._set_trainable(base=False)
        names = {p: n for n, p in self._state_modules.named_parameters()}
        for param in list(self.optimizer.state):
            if names.get(param) not in saved:
                del self.optimizer.state[param]

    def save_checkpoint(self, directory: str | Path) -> None:
        """Write the checkpoint layout of learner/checkpoint_files.py (experts as peft adapter dirs, plain-format
        learner state, `base/` if trained). Collective; rank 0 writes. Atomicity is the caller's."""
        state = self.state_dict()
        if self.rank == 0:
            checkpoint_files.write(Path(directory), state, self.model, self.processor)

    def load_checkpoint(self, directory: str | Path) -> None:
        self.load_state_dict(checkpoint_files.read(Path(directory), self.experts) if self.rank == 0 else {})
