"""The policy components' configs (experts, objective, optimizer, router, tiny architecture): pure data.

They live here, not beside the torch code that reads them, so that composing and checking a config
imports neither torch, peft nor verl (the architecture's pure layer). Each default has this one home;
the YAML groups only hold what a group changes. The bridges to a library's own config type live with
the code that uses that library: peft's `LoraConfig` in `policies.experts.lora_config`, verl's `ActorConfig`
and `AlgoConfig` in `learner.objectives` (where verl enters the package). `limits(...)` metadata is what
`configs.checks` enforces, naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Linear layers of the language model's decoder layers only (never `visual.*`): vLLM applies LoRA there only.
LANGUAGE_MODEL_TARGET = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_PENALTIES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "full", "kl+", "k1+", "abs+", "low_var_kl+", "k3+")
# verl estimators that need inputs an outcome-reward batch does not have (a critic, baseline rollouts, ...)
UNSUPPORTED_ESTIMATORS = ("gae", "remax", "gdpo", "optimal_token_baseline", "tir_optimal_token_baseline")


def limits(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its allowed range or choices (checked by `configs.checks.check_config`)."""
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("choices", choices)) if v is not None}
    return field(default=default, metadata=meta)


@dataclass
class ExpertLoRAConfig:
    """Shape of every scale expert (one peft `LoraConfig` shared by all experts)."""

    rank: int = limits(16, ge=1)
    alpha: int = limits(32, gt=0)
    dropout: float = limits(0.0, ge=0.0, le=0.0)  # mixed-expert training runs in eval mode: dropout must be 0
    target_modules: str = LANGUAGE_MODEL_TARGET
    init_lora_weights: bool = True  # B = 0: a fresh expert equals the base model


@dataclass
class ObjectiveConfig:
    """verl's advantage estimator and policy loss by name, with their hyper-parameters."""

    adv_estimator: str = "grpo"  # any verl estimator over outcome rewards: grpo, rloo, reinforce_plus_plus, ...
    policy_loss: str = "vanilla"  # verl policy-loss name: vanilla (PPO/GRPO clip), gspo, cispo, sapo, ...
    clip_ratio: float = limits(0.2, gt=0.0)
    clip_ratio_low: float | None = None  # None: clip_ratio
    clip_ratio_high: float | None = None  # DAPO clip-higher: clip_ratio_high > clip_ratio_low
    clip_ratio_c: float = limits(3.0, gt=1.0)  # dual-clip bound for negative advantages
    loss_agg_mode: str = limits("token-mean", choices=LOSS_AGG_MODES)
    # weight of the KL-to-reference loss; 0 skips the reference forward. 0.05 keeps the tiny default's experts near
    # the SFT policy (at 0.01 single experts drifted: held-out choice tasks collapsed in one seed of three)
    kl_coef: float = limits(0.05, ge=0.0)
    kl_penalty: str = limits("low_var_kl", choices=KL_PENALTIES)
    norm_adv_by_std_in_grpo: bool = True  # False: Dr.GRPO
    entropy_coeff: float = limits(0.0, ge=0.0)
    gamma: float = limits(1.0, ge=0.0, le=1.0)  # reinforce_plus_plus discount
    # the policy-gradient's behaviour log-probs (learner.objectives.behaviour_correction): `recompute` takes the
    # learner's own log-probs of the sampled tokens (verl's default; the sampler's are only compared with them, in
    # the mismatch/* metrics); `rollout` also weights each token's loss by the truncated importance ratio
    # min(pi_learner / pi_rollout, rollout_is_threshold) (verl's token TIS), correcting a bf16 / kernel mismatch
    # and an async rollout's staleness. Default chosen on measurement: benchmarks/RESULTS.md, "behaviour log-probs"
    behaviour_logprobs: str = limits("rollout", choices=("recompute", "rollout"))
    rollout_is_threshold: float = limits(2.0, gt=1.0)


@dataclass
class OptimConfig:
    lr: float = limits(1e-3, gt=0.0)
    weight_decay: float = limits(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm of the policy parameters; <= 0 disables
    warmup_steps: int = limits(0, ge=0)
    total_steps: int = limits(0, ge=0)  # the cosine schedule's horizon; 0: the training job's `steps`
    schedule: str = limits("constant", choices=("constant", "cosine"))  # both after linear warm-up


@dataclass
class RouterConfig:
    learn: bool = True  # train the classifier from scale labels in every learner step
    hidden: int = limits(128, ge=1)
    lr: float = limits(1e-3, gt=0.0)
    weight_decay: float = limits(0.0, ge=0.0)


@dataclass
class TinyPolicyConfig:
    """Architecture of the tiny offline policy (`policies.tiny` builds it); defaults: the embedded
    training default's ~3.8 M parameters (tests pass a smaller one)."""

    hidden_size: int = limits(256, ge=8)
    num_layers: int = limits(4, ge=1)
    num_heads: int = limits(4, ge=1)
    num_kv_heads: int = limits(2, ge=1)
    intermediate_size: int = limits(512, ge=1)
    vision_depth: int = limits(2, ge=1)
    vision_hidden: int = limits(64, ge=8)
    vision_heads: int = limits(2, ge=1)
    vocab_size: int = limits(640, ge=64)  # BPE target; the trained vocabulary may be smaller
    image_min_pixels: int = limits(56 * 56, ge=1)
    image_max_pixels: int = limits(112 * 112, ge=1)
    max_position_embeddings: int = limits(4096, ge=64)
    seed: int = 0
    mrope_section: list[int] = field(default_factory=list)  # empty: derived from head_dim

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def resolved_mrope_section(self) -> list[int]:
        """The (t, h, w) split of head_dim/2 for multimodal RoPE: `mrope_section`, or one like Qwen's [16, 24, 24]."""
        if self.mrope_section:
            return list(self.mrope_section)
        half = self.head_dim // 2
        t = half // 4
        h = (half - t) // 2
        return [t, h, half - t - h]
