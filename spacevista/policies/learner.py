"""`LearnerCore`: the pure learner (no Ray): RL and SFT steps on the scale experts, weights out.

One RL step, top to bottom (`rl_step`):
  1. one all-gather of small per-rank stats: which experts are present, token / sequence /
     labelled counts (global loss normalisation), micro-batch count (must agree across ranks);
  2. per micro-batch: reference log-probs (experts off, no grad; only when kl_coef > 0), policy
     log-probs with each sample through its own expert (peft mixed batch; each distinct prompt
     computed once with `share_prompts`), verl policy loss + KL, backward (FSDP reduces gradients
     after the last micro-batch only);
  3. router: cross-entropy of the classifier on the prompt features captured in step 2;
  4. AdamW step on the groups present in the GLOBAL batch only (others: grads dropped), LR schedule.

Memory (policies/memory.py, sharding.py): `gradient_checkpointing` recomputes each layer in backward,
`max_tokens_per_micro_batch` > 0 cuts micro-batches by a token budget instead of `micro_batch_size`
rows, `attn_implementation` picks the attention kernel, `mixed_precision` FSDP2's bf16 parameters
with fp32 gradient reduction (auto: on CUDA only). Each gives the plain path's loss and gradients.

Dense branch (`dense.enabled`, policies/dense.py): a hook on the vision tower fuses it into every forward;
its fusion is replicated (gradients all-reduced, like the router's), the "dense" optimizer group trained as
`dense.train_sft` / `train_rl` say; reference log-probs run without it; checkpoints hold it beside the experts.

Under FSDP (`fsdp=True`) the caller has initialised torch.distributed; every method that touches
weights (steps, `expert_state_dicts`, `base_state_dict`, `state_dict`, `save_checkpoint`) is
collective: call it on every rank. Rank-0-only results are empty on the other ranks.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from peft.utils import get_peft_model_state_dict
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from verl import DataProto
from verl.trainer.ppo.core_algos import agg_loss

from spacevista.configs.dense import DenseConfig
from spacevista.policies import checkpoint
from spacevista.policies import dense as dense_branch
from spacevista.policies.batch import TrainSample, sft_collate
from spacevista.policies.experts import ExpertLoRAConfig, attach_experts, base_model_only, expert_parameters
from spacevista.policies.logprobs import forward_logprobs, policy_logprobs, prompt_groups, reference_logprobs
from spacevista.policies.memory import checkpoint_activations, token_budget_plan, trim_left_padding
from spacevista.policies.objectives import ObjectiveConfig, policy_objective
from spacevista.policies.optim import OptimConfig, ParamGroup, build_optimizer, build_scheduler, step_present
from spacevista.policies.router import (
    RouterConfig,
    ScaleRouter,
    capture_prompt_features,
    feature_dim,
    pool_prompt_features,
    vision_token_ids,
)
from spacevista.policies.sharding import fsdp_root, gather_full_state, shard_policy
from spacevista.policies.tiny import load_policy

ADDITIVE_METRICS = ("loss", "pg_loss", "kl", "entropy", "sft_loss")  # shares of the global mean: summed


def is_lora(name: str) -> bool:
    return "lora_" in name


class LearnerCore:
    """Owns the policy (base + one LoRA expert per scale), the router and their optimizer."""

    def __init__(self, model_path: str | Path, experts: Sequence[str], *, lora: ExpertLoRAConfig | None = None,
                 objective: ObjectiveConfig | None = None, optim: OptimConfig | None = None,
                 router: RouterConfig | None = None, micro_batch_size: int = 8, fsdp: bool = False,
                 device: str = "cpu", sft_full_params: bool = False, temperature: float = 1.0,
                 seed: int = 0, share_prompts: bool = True, gradient_checkpointing: bool = False,
                 max_tokens_per_micro_batch: int = 0, attn_implementation: str = "sdpa",
                 mixed_precision: str = "auto", dense: DenseConfig | None = None) -> None:
        self.experts = list(experts)
        self.objective = objective or ObjectiveConfig()
        self.optim_cfg = optim or OptimConfig()
        self.micro_batch_size = micro_batch_size
        self.share_prompts = share_prompts
        self.max_tokens = max_tokens_per_micro_batch  # 0: fixed micro_batch_size rows
        self.temperature = temperature
        self.sft_full_params = sft_full_params
        self.device = torch.device(device)
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if fsdp else (0, 1)
        self.step = 0
        self.base_trained = False  # set by a full-parameter SFT step: rollout workers need the new base
        self.stepped_experts: list[str] = []  # experts the last step moved (present in the global batch)
        self.stepped_dense = False  # whether the last step moved the dense fusion

        torch.manual_seed(seed)  # same LoRA / router init on every rank
        base, self.processor = load_policy(model_path, device=device, attn_implementation=attn_implementation)
        self.model = attach_experts(base, self.experts, lora)
        self.router = ScaleRouter(self.experts, feature_dim(self.model), router).to(self.device)
        self.dense_cfg = dense if dense is not None and dense.enabled else None  # SpaceVista-7B's dense branch
        self.dense = (dense_branch.DenseBranch.build(dense, self.model, self.processor, self.device)
                      if self.dense_cfg else None)
        if gradient_checkpointing:
            checkpoint_activations(self.model)
        if fsdp:
            shard_policy(self.model, self.device.type, mixed_precision)
        self._vision_ids = vision_token_ids(self.model)
        self._state_modules = nn.ModuleDict({"policy": self.model, "router": self.router})  # for optimizer state dicts
        if self.dense is not None:
            self._state_modules["dense"] = self.dense.fusion

        groups = [ParamGroup(f"expert/{e}", list(expert_parameters(self.model, e).values())) for e in self.experts]
        if self.router.classifier is not None:
            groups.append(ParamGroup("router", list(self.router.parameters()), self.router.cfg.lr,
                                     self.router.cfg.weight_decay))
        if sft_full_params:
            groups.append(ParamGroup("base", [p for n, p in self.model.named_parameters() if not is_lora(n)]))
        if self.dense is not None:
            groups.append(ParamGroup("dense", list(self.dense.fusion.parameters()), self.dense_cfg.lr or None))
        self.optimizer = build_optimizer(groups, self.optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.optim_cfg)
        self._set_trainable(base=False)

    # ---- steps -----------------------------------------------------------------------------------
    def rl_step(self, batch: DataProto) -> dict[str, float]:
        """One policy-gradient step on this rank's share of the batch, as `batch.collate` makes it.

        Reads tensors input_ids, attention_mask, mm_token_type_ids, responses, response_mask,
        advantages [B, R] and, if present, old_log_probs (else the step is on-policy: ratio 1);
        non-tensors expert, scale_label, multi_modal_inputs; meta_info temperature (optional).
        Every rank must have the same number of micro-batches (ceil(samples / micro_batch_size)).
        """
        cfg = self.objective
        temperature = float(batch.meta_info.get("temperature", self.temperature))
        self._set_trainable(base=False, dense_parts=self.dense_cfg.train_rl if self.dense_cfg else ())
        stats = self._global_stats(batch, self.share_prompts)

        def loss_fn(mb: DataProto) -> tuple[torch.Tensor, dict[str, float]]:
            share = self.share_prompts
            with self.dense.disabled() if self.dense is not None else nullcontext():  # the reference: base policy
                ref = reference_logprobs(self.model, mb, temperature, share_prompts=share) if cfg.kl_coef > 0 else None
            logprobs, entropy = policy_logprobs(self.model, mb, temperature, with_entropy=cfg.entropy_coeff != 0,
                                                share_prompts=share)
            old = mb.batch["old_log_probs"].to(self.device) if "old_log_probs" in mb.batch.keys() else logprobs.detach()
            return policy_objective(logprobs, old, ref, mb.batch["advantages"].to(self.device),
                                    mb.batch["response_mask"].to(self.device), cfg, entropy, stats["batch_info"])

        present = {f"expert/{e}" for e in stats["experts"]} | self._dense_present("train_rl")
        return self._step(batch, loss_fn, stats, present)

    def sft_step(self, samples: Sequence[TrainSample], targets: Sequence[str]) -> dict[str, float]:
        """Cross-entropy on the reference completions (the output format). With `sft_full_params`
        the base model (vision tower included) is trained with every expert off; otherwise each
        sample's expert is trained."""
        batch = sft_collate(self.processor, samples, targets)
        full = self.sft_full_params
        self._set_trainable(base=full, dense_parts=self.dense_cfg.train_sft if self.dense_cfg else ())
        stats = self._global_stats(batch, shared=False)

        def loss_fn(mb: DataProto) -> tuple[torch.Tensor, dict[str, float]]:
            with base_model_only(self.model) if full else nullcontext():
                experts = None if full else list(mb.non_tensor_batch["expert"])
                logprobs, _ = forward_logprobs(self.model, mb, 1.0, experts)
            nll = agg_loss(-logprobs, mb.batch["response_mask"].to(self.device).bool(), "token-mean",
                           **stats["batch_info"])
            return nll, {"sft_loss": nll.item()}

        present = {"base"} if full else {f"expert/{e}" for e in stats["experts"]}
        present |= self._dense_present("train_sft")
        metrics = self._step(batch, loss_fn, stats, present, scheduled=False)
        self.base_trained |= full
        return metrics

    def _set_trainable(self, base: bool, dense_parts: Sequence[str] = ()) -> None:
        """Experts train unless the base does (full SFT runs with experts off); `dense_parts` of the fusion train."""
        for name, param in self.model.named_parameters():
            param.requires_grad_(not base if is_lora(name) else base)
        if self.dense is not None:
            dense_branch.set_fusion_trainable(self.dense.fusion, dense_parts)

    def _dense_present(self, mode: str) -> set[str]:  # {"dense"} when `train_sft` / `train_rl` name some part
        return {"dense"} if self.dense_cfg is not None and getattr(self.dense_cfg, mode) else set()

    def _global_stats(self, batch: DataProto, shared: bool) -> dict[str, Any]:
        """One all-gather: experts present anywhere, global token/sequence/label counts, micro-batch
        count (token budget: the largest any rank needs; `shared`: a prompt's rows stay together)."""
        local_experts = set(batch.non_tensor_batch["expert"])
        unknown = local_experts - set(self.experts)
        if unknown:
            raise KeyError(f"batch routes to unknown experts {sorted(unknown)}; learner has {self.experts}")
        n_micro = (len(token_budget_plan(batch, self.max_tokens, shared)) if self.max_tokens
                   else -(-len(batch) // self.micro_batch_size))
        labelled = int((self.router.label_index(list(batch.non_tensor_batch["scale_label"])) >= 0).sum())
        local = torch.tensor([float(e in local_experts) for e in self.experts]
                             + [batch.batch["response_mask"].sum().item(), len(batch), n_micro, labelled],
                             dtype=torch.float64, device=self.device)
        table = local[None]
        if self.world > 1:
            parts = [torch.empty_like(local) for _ in range(self.world)]
            dist.all_gather(parts, local)
            table = torch.stack(parts)
        n_e = len(self.experts)
        if not self.max_tokens and (table[:, n_e + 2] != table[0, n_e + 2]).any():
            raise ValueError(f"ranks hold different micro-batch counts {table[:, n_e + 2].tolist()}: "
                             f"give every rank the same number of micro-batches of samples")
        totals = table.sum(0)
        return {"experts": [e for i, e in enumerate(self.experts) if table[:, i].any()],
                "batch_info": {"dp_size": self.world, "batch_num_tokens": int(totals[n_e]),
                               "global_batch_size": int(totals[n_e + 1])},
                "labelled": int(totals[n_e + 3]), "n_micro": int(table[:, n_e + 2].max()), "shared": shared}

    def _micro_batches(self, batch: DataProto, stats: dict[str, Any]) -> list[DataProto]:
        """Fixed rows per micro-batch, or `stats['n_micro']` token-balanced ones (left padding trimmed)."""
        if not self.max_tokens:
            return batch.split(self.micro_batch_size)
        plan = token_budget_plan(batch, self.max_tokens, stats["shared"], count=stats["n_micro"])
        return [trim_left_padding(batch.select_idxs(rows)) for rows in plan]

    def _step(self, batch: DataProto, loss_fn: Callable[[DataProto], tuple[torch.Tensor, dict[str, float]]],
              stats: dict[str, Any], present: set[str], scheduled: bool = True) -> dict[str, float]:
        """One optimizer step over `batch`. Unscheduled steps (the SFT warm-up) run at each group's base
        learning rate and leave the RL schedule untouched, so its warm-up and horizon start with RL."""
        start = time.perf_counter()
        train_router = self.router.classifier is not None and stats["labelled"] > 0
        micro = self._micro_batches(batch, stats)
        root = fsdp_root(self.model)
        sums: dict[str, float] = defaultdict(float)
        features = []
        for i, mb in enumerate(micro):
            if root is not None:
                root.set_requires_gradient_sync(i == len(micro) - 1)
            with capture_prompt_features(self.model) if train_router else nullcontext() as capture:
                loss, metrics = loss_fn(mb)
            loss.backward()
            weight = mb.batch["response_mask"].sum().item()
            for k, v in {"loss": loss.item(), **metrics}.items():
                sums[k] += v if k in ADDITIVE_METRICS else v * weight
            if train_router:
                features.append(self._prompt_features(mb, capture.embeds))
        if "dense" in present and self.world > 1:
            self.dense.average_gradients()  # replicated, so averaged like FSDP's sharded gradients
        if train_router:
            labels = [label for mb in micro for label in mb.non_tensor_batch["scale_label"]]  # micro-batch order
            sums.update(self._router_backward(torch.cat(features), labels, stats["labelled"]))
            present.add("router")
        out = self._reduce_metrics(sums, stats["batch_info"]["batch_num_tokens"])
        if scheduled:
            out["lr"] = self.scheduler.get_last_lr()[0]
            out.update(step_present(self.optimizer, present, self.optim_cfg.grad_clip))
            self.scheduler.step()
        else:
            scheduled_lrs = [group["lr"] for group in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"]
            out["lr"] = self.optimizer.param_groups[0]["lr"]
            out.update(step_present(self.optimizer, present, self.optim_cfg.grad_clip))
            for group, lr in zip(self.optimizer.param_groups, scheduled_lrs):
                group["lr"] = lr
        if self.dense is not None:
            out.update({"dense/gate": dense_branch.gate_value(self.dense.fusion), **self.dense.cache.stats.as_dict()})
        self.step += 1
        self.stepped_experts = [e for e in self.experts if f"expert/{e}" in present]
        self.stepped_dense = "dense" in present
        out.update(step=self.step, experts_stepped=sum(p.startswith("expert/") for p in present),
                   tokens=stats["batch_info"]["batch_num_tokens"], step_time_s=time.perf_counter() - start)
        return out

    def _prompt_features(self, mb: DataProto, embeds: torch.Tensor) -> torch.Tensor:
        """Router features [B, 2H] of the captured prompt embeddings: one row per sample, or per
        distinct prompt when prompts were shared (then repeated for their samples)."""
        prompt_len = mb.batch["input_ids"].shape[1] - mb.batch["responses"].shape[1]
        rows = slice(None)
        inverse = None
        if embeds.shape[0] != len(mb):
            groups = prompt_groups(mb, list(mb.non_tensor_batch["expert"]))
            rows, inverse = groups.firsts, groups.inverse.to(embeds.device)
        pooled = pool_prompt_features(embeds, mb.batch["input_ids"][rows], mb.batch["attention_mask"][rows],
                                      self._vision_ids, prompt_len)
        return pooled if inverse is None else pooled[inverse]

    def _router_backward(self, features: torch.Tensor, labels: list, n_labelled: int) -> dict[str, float]:
        """Router CE (its share of the global mean) backward + gradient all-reduce; local accuracy."""
        report = self.router.accuracy(features, labels)
        loss, _ = self.router.loss(features, labels, normalizer=n_labelled)
        loss.backward()
        if self.world > 1:
            for p in self.router.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
        self.router.trained_steps += 1
        return {"router/loss": loss.item(), **report}

    def _reduce_metrics(self, sums: dict[str, float], global_tokens: int) -> dict[str, float]:
        keys = sorted(k for k in sums if not k.startswith("router/acc"))
        values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(values)
        # loss shares carry a dp_size factor (FSDP averages gradients over ranks); the router's don't
        scale = {k: 1.0 / self.world if k in ADDITIVE_METRICS else 1.0 if k == "router/loss"
                 else 1.0 / max(global_tokens, 1) for k in keys}
        out = {k: float(v) * scale[k] for k, v in zip(keys, values)}
        out.update({k: v for k, v in sums.items() if k.startswith("router/acc")})  # this rank's batch
        return out

    # ---- weights out ------------------------------------------------------------------------------
    def expert_state_dicts(self, experts: Sequence[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """{expert: peft-format adapter state dict} (CPU tensors) on rank 0; {} on other ranks."""
        names = list(experts or self.experts)
        full = gather_full_state(self.model, lambda n: is_lora(n) and any(f".{e}." in n for e in names))
        if self.rank != 0:
            return {}
        return {e: get_peft_model_state_dict(self.model, state_dict=full, adapter_name=e) for e in names}

    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        """The dense fusion's weights (CPU; replicated, so any rank has them; {} without the branch)."""
        return dense_branch.fusion_state_dict(self.dense.fusion) if self.dense is not None else {}

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The base model's weights in Hugging Face naming (rank 0; {} elsewhere)."""
        full = gather_full_state(self.model, lambda n: not is_lora(n))
        return checkpoint.hf_base_state_dict(full) if self.rank == 0 else {}

    def export_policy(self, directory: str | Path) -> Path:
        """Write the base model (as full SFT left it) + processor as a Hugging Face directory, the
        way trained base weights reach rollout workers: they (re)load the policy from it, then get
        experts as usual. Collective; rank 0 writes."""
        state = self.base_state_dict()
        if self.rank == 0:
            checkpoint.save_hf_base(Path(directory), state, self.model, self.processor)
        return Path(directory)

    def state_dict(self) -> dict[str, Any]:
        """Everything to resume: experts, router, optimizer, scheduler, step, RNG (+ base if trained)."""
        state = {"experts": self.expert_state_dicts(), "router": self.router.state_dict(),
                 "optimizer": get_optimizer_state_dict(self._state_modules, self.optimizer, options=StateDictOptions(
                     full_state_dict=True, cpu_offload=True)),
                 "scheduler": self.scheduler.state_dict(), "step": self.step, "rng": checkpoint.rng_state(),
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
        model_state = checkpoint.peft_to_model_keys(state.get("experts", {}))
        if state.get("base"):
            model_state.update(checkpoint.hf_to_model_keys(self.model, state["base"]))
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
        checkpoint.set_rng_state(meta["rng"])  # rank 0's streams on every rank

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
        """Write the checkpoint layout of policies/checkpoint.py (experts as peft adapter dirs, plain-format
        learner state, `base/` if trained). Collective; rank 0 writes. Atomicity is the caller's."""
        state = self.state_dict()
        if self.rank == 0:
            checkpoint.write(Path(directory), state, self.model, self.processor)

    def load_checkpoint(self, directory: str | Path) -> None:
        self.load_state_dict(checkpoint.read(Path(directory), self.experts) if self.rank == 0 else {})
