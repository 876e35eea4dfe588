"""Structured configs: every key the training job reads, with its type, default and allowed values.

Hydra composes `train.yaml` and its groups on top of `TrainConfig`; OmegaConf's struct mode then
rejects an unknown key or an ill-typed value, and `configs.checks` the values and the rules between
keys, each naming the key, before Ray starts. Pure data: no torch, peft, verl or ray here (the
policy components' configs live in `configs.policy` for the same reason). Defaults live here only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from spacevista.configs.dense import DenseConfig
from spacevista.configs.policy import (
    ExpertLoRAConfig,
    ObjectiveConfig,
    OptimConfig,
    RouterConfig,
    TinyPolicyConfig,
    limits,
)
from spacevista.scales import SCALES

__all__ = ["ExpertLoRAConfig", "ObjectiveConfig", "OptimConfig", "RouterConfig", "TinyPolicyConfig"]


@dataclass
class ModelConfig:
    path: str = ""  # a local Hugging Face directory; "" builds the tiny offline policy
    cache_dir: str = "~/.cache/spacevista/models"
    dtype: str = limits("float32", choices=("float32", "bfloat16", "float16"))  # float32 on CPU (bf16 is slower
    # on AVX2-only CPUs); bfloat16 on GPU
    tiny: TinyPolicyConfig = field(default_factory=TinyPolicyConfig)
    lora: ExpertLoRAConfig = field(default_factory=ExpertLoRAConfig)
    experts: list[str] = field(default_factory=lambda: list(SCALES))  # LoRA expert names (the router's classes)
    # scale -> expert; a scale not named goes to the expert of its own name, or to the only expert
    # (configs/experts.py: the per_scale / paper4 / shared layouts)
    expert_of_scale: dict[str, str] = field(default_factory=dict)  # ++model.expert_of_scale={drone:outdoor}
    dense: DenseConfig = field(default_factory=DenseConfig)  # SpaceVista-7B's dense branch (off by default)
    # attention kernel of the learner: auto = flash_attention_2 on CUDA when flash-attn is installed, else sdpa
    attn_implementation: str = limits("sdpa", choices=("sdpa", "eager", "flash_attention_2", "auto"))


@dataclass
class SynthConfig:
    n: int = limits(2000, ge=1)
    seed: int = 0
    frames: int = limits(4, ge=1)
    size: int = limits(56, ge=16)
    test_fraction: float = limits(0.1, ge=0.0, le=0.9)
    cache_dir: str = "~/.cache/spacevista/data"


@dataclass
class DataConfig:
    train: str = ""  # parquet file or directory of shards; "" generates the synthetic set
    test: str = ""
    synth: SynthConfig = field(default_factory=SynthConfig)
    invalid: str = limits("fail", choices=("fail", "skip"))  # a bad row: stop naming it, or skip it (rejects.jsonl)


@dataclass
class RolloutConfig:
    engine: str = limits("hf", choices=("hf", "vllm"))
    prompts_per_step: int = limits(8, ge=1)
    # samples per prompt (the GRPO group size; the paper's 8): with 4, most groups of the tiny default had equal
    # rewards and RL's held-out effect was noise (benchmarks/RESULTS.md, "Studies")
    n: int = limits(8, ge=1)
    temperature: float = limits(0.7, gt=0.0)  # > 0: the learner divides logits by it (T=1 samples were mostly noise)
    top_p: float = limits(1.0, gt=0.0, le=1.0)
    max_tokens: int = limits(32, ge=1)
    max_model_len: int = limits(2048, ge=16)
    max_batch_size: int = limits(64, ge=1)
    # vLLM engine (rollout.engine=vllm); the GPU-only ones are not passed on a CPU build
    gpu_memory_utilization: float = limits(0.9, gt=0.0, le=1.0)  # share of each GPU for weights + KV cache
    tensor_parallel_size: int = limits(1, ge=1)  # GPUs per engine (give the rollout role as many num_gpus)
    max_num_seqs: int = limits(256, ge=1)  # sequences in flight per engine step
    enforce_eager: Optional[bool] = None  # None: eager on CPU, CUDA graphs on GPU
    enable_prefix_caching: bool = True  # the n samples of a prompt reuse its KV blocks (and vision encoding)


@dataclass
class RewardWeights:
    """The stepwise reward's component weights (normalised by their sum) and gates: `reward.weights` (the
    fixed ones, also what `compute_score` and `rewards score` use) and each curriculum stage's
    `reward_weights`. `configs.checks.weights_problems` says what is wrong with a set."""

    format: float = limits(0.2, ge=0.0)
    scale: float = limits(0.3, ge=0.0)
    accuracy: float = limits(0.5, ge=0.0)
    gate_format: bool = True  # the answer scores only when the format is valid
    gate_scale: bool = False  # "scale before answer": the answer scores only when the scale is right

    @property
    def total_weight(self) -> float:
        return self.format + self.scale + self.accuracy


@dataclass
class PluginConfig:
    spec: str = ""  # registered name, `module:function`, or `path/to/file.py:function`
    weight: float = limits(1.0, ge=0.0)
    name: Optional[str] = None  # its component name; None: the registered name or the function's name


@dataclass
class RewardConfig:
    """What a reward pipeline (`rewards.pipeline.RewardPipeline`) is built from."""

    weights: RewardWeights = field(default_factory=RewardWeights)
    neighbour_scale_credit: float = limits(0.0, ge=0.0, le=1.0)
    plugins: list[PluginConfig] = field(default_factory=list)
    plugin_timeout_s: float = limits(10.0, gt=0.0)  # a plugin call past this scores 0 and is counted
    plugin_output_bytes: int = limits(4096, ge=0)  # a plugin's captured stdout/stderr kept per call
    isolate_plugins: bool = True  # False: call plugins in the reward worker's process (trusted code; no deadline)
    warn_error_rate: float = limits(0.5, ge=0.0, le=1.0)  # warn when a plugin fails on more of a batch than this


@dataclass
class SFTConfig:
    steps: int = limits(45, ge=0)  # supervised warm-up steps before RL (0 disables)
    batch_size: int = limits(32, ge=1)
    full_params: bool = True  # a random tiny base must be warmed up itself before LoRA experts can learn


@dataclass
class LearnerConfig:
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    micro_batch_size: int = limits(16, ge=1)
    fsdp: bool = True  # FSDP2 across learner ranks (gloo on CPU, NCCL on GPU)
    # the frozen base under fsdp: true = FSDP2 shards it (all-gathered per layer on every forward and backward);
    # false = replicated on every rank (bf16 when mixed precision is on and it is not trained), and only the
    # trainable parameters' gradients are all-reduced, once per step; null (auto) = replicate when
    # `spacevista plan` says it fits each learner GPU (on CPUs: half the host's memory), else shard
    shard_base: Optional[bool] = None
    share_prompts: bool = True  # compute each prompt once for its n samples (same result, fewer FLOPs)
    gradient_checkpointing: bool = False  # recompute each layer in backward: keep one layer's activations, not all
    max_tokens_per_micro_batch: int = limits(0, ge=0)  # > 0: micro-batches by a token budget, not micro_batch_size
    # FSDP2: auto (bf16 params + fp32 reduce on CUDA, fp32 elsewhere) | bf16 | fp32
    mixed_precision: str = limits("auto", choices=("auto", "bf16", "fp32"))
    # a step whose loss or gradient norm is not finite is skipped (learner/nonfinite_skipped); this many in a row stop
    max_nonfinite_steps: int = limits(3, ge=1)


@dataclass
class StageConfig:
    name: str = "stage"
    scales: dict[str, float] = field(default_factory=dict)  # active scale -> sampling weight
    reward_weights: RewardWeights = field(default_factory=RewardWeights)
    min_steps: int = limits(1, ge=0)
    max_steps: Optional[int] = None  # promote after this many steps even if metrics lag
    promote_when: dict[str, float] = field(default_factory=dict)  # component -> threshold per active scale
    # reward plugin name -> its weight in this stage (others keep reward.plugins' weight): ordered stages
    # switch the paper's magnitude and semantic rewards on (curriculum=ordered)
    plugin_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class CurriculumConfig:
    name: str = "progressive"
    window: int = limits(4, ge=1)  # steps in the moving average that promotion rules read
    stages: list[StageConfig] = field(default_factory=list)


@dataclass
class RoleConfig:
    count: int = limits(1, ge=1)
    num_cpus: float = limits(1.0, ge=0.0)
    num_gpus: float = limits(0.0, ge=0.0)
    max_restarts: int = limits(2, ge=-1)  # Ray restarts a crashed worker; the controller retries its work
    strategy: str = limits("PACK", choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))  # placement group
    # OS niceness of the role's worker processes, added to the Ray node's (Ray's own default, 15, yields to
    # every other process on the machine); on shared cores a higher value lets a background role (the async
    # rollout) give way to the learner ranks, whose collectives wait for the slowest rank
    nice: int = limits(0, ge=0, le=19)


@dataclass
class ClusterConfig:
    address: str = ""  # "" starts a local Ray; "auto" or ray://host:port joins a cluster
    num_cpus: Optional[int] = None  # local Ray only
    rollout: RoleConfig = field(default_factory=RoleConfig)
    reward: RoleConfig = field(default_factory=RoleConfig)
    learner: RoleConfig = field(default_factory=lambda: RoleConfig(count=2))
    backend: str = limits("auto", choices=("auto", "gloo", "nccl"))  # torch.distributed: auto = gloo on CPU,
    # nccl on GPU
    dashboard: bool = False  # local Ray only: start the dashboard (and its metrics endpoint)
    temp_dir: str = ""  # local Ray only: its session directory ("" = Ray's default)
    metrics_prefix: str = "spacevista"
    gpu_memory_gib: float = limits(80.0, gt=0.0)  # per GPU: what `spacevista plan` and the pre-start check fit into
    # self-healing: a lost learner rank, worker (past max_restarts) or node, or a call past its deadline, rebuilds
    # the roles and continues from the last checkpoint, at most this many times per run (0: stop at the first)
    max_recoveries: int = limits(3, ge=0)
    call_timeout_s: float = limits(600.0, gt=0.0)  # deadline of a blocking call in a step (generate, score, update)
    start_timeout_s: float = limits(1800.0, gt=0.0)  # ... of starting a role, loading a model or checkpoint, an SFT
    # step, exporting the policy, saving a checkpoint


@dataclass
class LogConfig:
    progress: bool = True
    tensorboard: bool = True
    wandb_project: str = ""  # "" disables W&B
    plot: bool = True
    ray_metrics: bool = True
    samples_per_step: int = limits(4, ge=0)  # completions per step written to samples.jsonl (0: none)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    log: LogConfig = field(default_factory=LogConfig)
    steps: int = limits(40, ge=1)
    seed: int = 0
    run_dir: str = ""  # "" uses Hydra's output directory
    resume: str = "auto"  # auto (latest checkpoint in run_dir) | never | path to a step_N directory
    checkpoint_every: int = limits(10, ge=1)
    keep_checkpoints: int = limits(3, ge=1)
    eval_every: int = limits(10, ge=0)  # greedy eval on the held-out split every N steps (0: never)
    eval_prompts_per_scale: int = limits(40, ge=0)  # 40 x 5 scales: all 200 prompts of the synthetic test split
    async_rollout: bool = True  # generate step k+1 while the learner updates step k (one step stale)
