"""`LearnerCore`: the learner's training core, RL and SFT steps on the scale experts. It starts no Ray and
holds no actor (`actors/learner.py` wraps it), but its batches are verl `DataProto`s, so importing it loads
verl and, through verl, Ray. Weights out and checkpoints: `learner/state.py`; the router's step: `learner/routing.py`.

One RL step, top to bottom (`rl_step`):
  1. one all-gather of small per-rank stats: which experts are present, token / sequence /
     labelled counts (global loss normalisation), micro-batch count (must agree across ranks);
  2. per micro-batch: reference log-probs (experts off, no grad; only when kl_coef > 0), policy
     log-probs with each sample through its own expert (peft mixed batch; each distinct prompt
     computed once with `share_prompts`), verl policy loss + KL, backward (FSDP reduces gradients
     after the last micro-batch only);
  3. router: cross-entropy of the classifier on the prompt features captured in step 2;
  4. AdamW step on the groups present in the GLOBAL batch only (others: grads dropped), LR schedule.

Memory (learner/memory.py, learner/sharding.py): `gradient_checkpointing` recomputes each layer in backward,
`max_tokens_per_micro_batch` > 0 cuts micro-batches by a token budget instead of `micro_batch_size`
rows, `attn_implementation` picks the attention kernel, `mixed_precision` FSDP2's bf16 parameters
with fp32 gradient reduction (auto: on CUDA only), `shard_base=False` replicates the base on every rank
(bf16 under mixed precision; no per-layer all-gathers) and all-reduces only the trainable parameters'
gradients after the last micro-batch. Each gives the plain path's loss and gradients.

Dense branch (`dense.enabled`, policies/dense/branch.py): a hook on the vision tower fuses it into every forward;
its fusion is replicated (gradients all-reduced, like the router's), the "dense" optimizer group trained as
`dense.train_sft` / `train_rl` say; reference log-probs run without it; checkpoints hold it beside the experts.

Under FSDP (`fsdp=True`) the caller has initialised torch.distributed; every method that touches
weights (steps, and `LearnerState`'s `expert_state_dicts`, `base_state_dict`, `state_dict`, `save_checkpoint`) is
collective: call it on every rank. Rank-0-only results are empty on the other ranks.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from verl import DataProto
from verl.trainer.ppo.core_algos import agg_loss

from spacevista.configs.dense import DenseConfig
from spacevista.learner.batch import TrainSample, sft_collate
from spacevista.learner.logprobs import forward_logprobs, policy_logprobs, reference_logprobs
from spacevista.learner.memory import checkpoint_activations, token_budget_plan, trim_left_padding
from spacevista.learner.objectives import ObjectiveConfig, behaviour_correction, policy_objective
from spacevista.learner.optim import OptimConfig, ParamGroup, build_optimizer, build_scheduler, step_present
from spacevista.learner.routing import router_backward, sample_prompt_features
from spacevista.learner.sharding import all_reduce_gradients, fsdp_root, replicate_policy, shard_policy
from spacevista.learner.state import LearnerState
from spacevista.policies.dense import branch as dense_branch
from spacevista.policies.dense import fusion as dense_fusion
from spacevista.policies.experts import (
    ExpertLoRAConfig,
    attach_experts,
    base_model_only,
    expert_parameters,
    is_lora,
)
from spacevista.policies.router import (
    RouterConfig,
    ScaleRouter,
    capture_prompt_features,
    feature_dim,
    vision_token_ids,
)
from spacevista.policies.tiny import load_policy

ADDITIVE_METRICS = ("loss", "pg_loss", "kl", "entropy", "sft_loss")  # shares of the global mean: summed
MAX_METRICS = ("mismatch/logprob_gap_max",)  # the largest over micro-batches and ranks


class NonFiniteSteps(RuntimeError):
    """`max_nonfinite_steps` steps in a row had a loss or gradient norm that is not finite: the run stops."""


class LearnerCore(LearnerState):
    """Owns the policy (base + one LoRA expert per scale), the router and their optimizer."""

    def __init__(self, model_path: str | Path, experts: Sequence[str], *, lora: ExpertLoRAConfig | None = None,
                 objective: ObjectiveConfig | None = None, optim: OptimConfig | None = None,
                 router: RouterConfig | None = None, micro_batch_size: int = 8, fsdp: bool = False,
                 device: str = "cpu", sft_full_params: bool = False, temperature: float = 1.0,
                 seed: int = 0, share_prompts: bool = True, gradient_checkpointing: bool = False,
                 max_tokens_per_micro_batch: int = 0, attn_implementation: str = "sdpa",
                 mixed_precision: str = "auto", dense: DenseConfig | None = None, max_nonfinite_steps: int = 3,
                 shard_base: bool = True) -> None:
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
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_in_row = 0  # steps skipped in a row because the loss or a gradient norm was not finite

        torch.manual_seed(seed)  # same LoRA / router init on every rank
        base, self.processor = load_policy(model_path, device=device, attn_implementation=attn_implementation)
        self.model = attach_experts(base, self.experts, lora)
        self.router = ScaleRouter(self.experts, feature_dim(self.model), router).to(self.device)
        self.dense_cfg = dense if dense is not None and dense.enabled else None  # SpaceVista-7B's dense branch
        self.dense = (dense_branch.DenseBranch.build(dense, self.model, self.processor, self.device)
                      if self.dense_cfg else None)
        if gradient_checkpointing:
            checkpoint_activations(self.model)
        self.replicated = fsdp and not shard_base  # the base on every rank; trainable gradients all-reduced
        self._autocast: torch.dtype | None = None  # replicated under mixed precision: bf16 forwards
        if fsdp and shard_base:
            shard_policy(self.model, self.device.type, mixed_precision)
        elif fsdp:
            self._autocast = replicate_policy(self.model, self.device.type, mixed_precision, sft_full_params)
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
        advantages [B, R] and, if present, rollout_log_probs (what the sampler reported: compared with the
        learner's, and the importance weights of `objective.behaviour_logprobs=rollout`; see `behaviour_correction`);
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
            mask = mb.batch["response_mask"].to(self.device)
            sampled = mb.batch["rollout_log_probs"].to(self.device) if "rollout_log_probs" in mb.batch.keys() else None
            old, is_weights, mismatch = behaviour_correction(logprobs, sampled, mask, cfg)
            loss, metrics = policy_objective(logprobs, old, ref, mb.batch["advantages"].to(self.device), mask, cfg,
                                             entropy, stats["batch_info"], is_weights)
            return loss, {**metrics, **mismatch}

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
            dense_fusion.set_fusion_trainable(self.dense.fusion, dense_parts)

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
            with capture_prompt_features(self.model) if train_router else nullcontext() as capture, \
                    torch.autocast(self.device.type, self._autocast) if self._autocast else nullcontext():
                loss, metrics = loss_fn(mb)
            loss.backward()
            weight = mb.batch["response_mask"].sum().item()
            for k, v in {"loss": loss.item(), **metrics}.items():
                if k in MAX_METRICS:
                    sums[k] = max(sums.get(k, -math.inf), v)
                else:
                    sums[k] += v if k in ADDITIVE_METRICS else v * weight
            if train_router:
                features.append(sample_prompt_features(mb, capture.embeds, self._vision_ids))
        # replicated trainables (the policy's when the base is not sharded, the dense fusion's) averaged over ranks
        # like FSDP's sharded gradients, in one set of buckets a step
        replicas = [p for p in self.model.parameters() if p.requires_grad] if self.replicated else []
        replicas += list(self.dense.fusion.parameters()) if "dense" in present else []
        if replicas and self.world > 1:
            all_reduce_gradients(replicas, self.world)
        if train_router:
            labels = [label for mb in micro for label in mb.non_tensor_batch["scale_label"]]  # micro-batch order
            sums.update(router_backward(self.router, torch.cat(features), labels, stats["labelled"], self.world))
            present.add("router")
        out = self._reduce_metrics(sums, stats["batch_info"]["batch_num_tokens"])
        finite = math.isfinite(out["loss"])  # reduced over ranks: every rank decides alike
        if scheduled:
            out["lr"] = self.scheduler.get_last_lr()[0]
            out.update(step_present(self.optimizer, present, self.optim_cfg.grad_clip, finite_loss=finite))
            self.scheduler.step()
        else:
            scheduled_lrs = [group["lr"] for group in self.optimizer.param_groups]
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"]
            out["lr"] = self.optimizer.param_groups[0]["lr"]
            out.update(step_present(self.optimizer, present, self.optim_cfg.grad_clip, finite_loss=finite))
            for group, lr in zip(self.optimizer.param_groups, scheduled_lrs):
                group["lr"] = lr
        if self.dense is not None:
            out.update({"dense/gate": dense_fusion.gate_value(self.dense.fusion), **self.dense.cache.stats.as_dict()})
        self.step += 1
        skipped = out["nonfinite"] > 0
        self.nonfinite_in_row = self.nonfinite_in_row + 1 if skipped else 0
        if self.nonfinite_in_row >= self.max_nonfinite_steps:
            raise NonFiniteSteps(f"learner step {self.step}: the loss or a gradient norm was not finite in "
                                 f"{self.nonfinite_in_row} steps in a row (learner.max_nonfinite_steps="
                                 f"{self.max_nonfinite_steps}); the last checkpoint holds the last finite weights")
        self.stepped_experts = [] if skipped else [e for e in self.experts if f"expert/{e}" in present]
        self.stepped_dense = "dense" in present and not skipped
        out.update(step=self.step, experts_stepped=sum(p.startswith("expert/") for p in present),
                   tokens=stats["batch_info"]["batch_num_tokens"], step_time_s=time.perf_counter() - start)
        return out

    def _reduce_metrics(self, sums: dict[str, float], global_tokens: int) -> dict[str, float]:
        keys = sorted(k for k in sums if not k.startswith("router/acc") and k not in MAX_METRICS)
        values = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
        peaks = {k: sums.get(k, -math.inf) for k in MAX_METRICS}  # every rank reduces the same keys
        if self.world > 1:
            dist.all_reduce(values)
            top = torch.tensor(list(peaks.values()), dtype=torch.float64, device=self.device)
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
            peaks = dict(zip(peaks, top.tolist()))
        # loss shares carry a dp_size factor (FSDP averages gradients over ranks); the router's don't
        scale = {k: 1.0 / self.world if k in ADDITIVE_METRICS else 1.0 if k == "router/loss"
                 else 1.0 / max(global_tokens, 1) for k in keys}
        out = {k: float(v) * scale[k] for k, v in zip(keys, values)}
        out.update({k: v for k, v in sums.items() if k.startswith("router/acc")})  # this rank's batch
        out.update({k: v for k, v in peaks.items() if v != -math.inf})
        return out
