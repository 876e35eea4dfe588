"""Structured configs: every key the training job reads, with its type and default.

The learner's component configs (LoRA experts, objective, optimizer, router) are the policies'
own dataclasses, so a key has one home.

Hydra composes `train.yaml` and its groups on top of `TrainConfig`; OmegaConf's struct mode then
rejects an unknown key or an ill-typed value, naming the key, before Ray starts. Pure data: no ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from spacevista.policies.experts import ExpertLoRAConfig
from spacevista.policies.objectives import ObjectiveConfig
from spacevista.policies.optim import OptimConfig
from spacevista.policies.router import RouterConfig
from spacevista.policies.tiny import TinyPolicyConfig
from spacevista.scales import SCALES


@dataclass
class ModelConfig:
    path: str = ""  # a local Hugging Face directory; "" builds the tiny offline policy
    cache_dir: str = "~/.cache/spacevista/models"
    dtype: str = "float32"  # float32 on CPU (bf16 is slower on AVX2-only CPUs); bfloat16 on GPU
    tiny: TinyPolicyConfig = field(default_factory=lambda: TinyPolicyConfig(
        hidden_size=256, num_layers=4, intermediate_size=512))  # the embedded default's ~3.8 M parameters
    lora: ExpertLoRAConfig = field(default_factory=ExpertLoRAConfig)
    experts: list[str] = field(default_factory=lambda: list(SCALES))
    # attention kernel of the learner: auto = flash_attention_2 on CUDA when flash-attn is installed, else sdpa
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 | auto


@dataclass
class SynthConfig:
    n: int = 2000
    seed: int = 0
    frames: int = 4
    size: int = 56
    test_fraction: float = 0.1
    cache_dir: str = "~/.cache/spacevista/data"


@dataclass
class DataConfig:
    train: str = ""  # parquet file or directory of shards; "" generates the synthetic set
    test: str = ""
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm
    prompts_per_step: int = 8
    n: int = 4  # samples per prompt (the GRPO group size)
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 32
    max_model_len: int = 2048
    max_batch_size: int = 64
    # vLLM engine (rollout.engine=vllm); the GPU-only ones are not passed on a CPU build
    gpu_memory_utilization: float = 0.9  # share of each GPU for weights + KV cache
    tensor_parallel_size: int = 1  # GPUs per engine (give the rollout role as many num_gpus)
    max_num_seqs: int = 256  # sequences in flight per engine step
    enforce_eager: Optional[bool] = None  # None: eager on CPU, CUDA graphs on GPU
    enable_prefix_caching: bool = True  # the n samples of a prompt reuse its KV blocks (and vision encoding)


@dataclass
class RewardWeightsConfig:
    format: float = 0.2
    scale: float = 0.3
    accuracy: float = 0.5


@dataclass
class PluginConfig:
    spec: str = ""  # registered name, `module:function`, or `path/to/file.py:function`
    weight: float = 1.0


@dataclass
class RewardConfig:
    weights: RewardWeightsConfig = field(default_factory=RewardWeightsConfig)
    scale_gate: bool = False  # accuracy credit only when the predicted scale is right
    neighbour_scale_credit: float = 0.0
    plugins: list[PluginConfig] = field(default_factory=list)


@dataclass
class SFTConfig:
    steps: int = 45  # supervised warm-up steps before RL (0 disables)
    batch_size: int = 32
    full_params: bool = True  # a random tiny base must be warmed up itself before LoRA experts can learn


@dataclass
class LearnerConfig:
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    micro_batch_size: int = 16
    fsdp: bool = True  # FSDP2 across learner ranks (gloo on CPU, NCCL on GPU)
    share_prompts: bool = True  # compute each prompt once for its n samples (same result, fewer FLOPs)
    gradient_checkpointing: bool = False  # recompute each layer in backward: keep one layer's activations, not all
    max_tokens_per_micro_batch: int = 0  # > 0: micro-batches by a token budget, not micro_batch_size rows
    mixed_precision: str = "auto"  # FSDP2: auto (bf16 params + fp32 reduce on CUDA, fp32 elsewhere) | bf16 | fp32


@dataclass
class StageConfig:
    name: str = "stage"
    scales: dict[str, float] = field(default_factory=dict)  # active scale -> sampling weight
    reward_weights: RewardWeightsConfig = field(default_factory=RewardWeightsConfig)
    scale_gate: bool = False
    min_steps: int = 1
    max_steps: Optional[int] = None  # promote after this many steps even if metrics lag
    promote_when: dict[str, float] = field(default_factory=dict)  # component -> threshold per active scale


@dataclass
class CurriculumConfig:
    name: str = "progressive"
    window: int = 4  # steps in the moving average that promotion rules read
    stages: list[StageConfig] = field(default_factory=list)


@dataclass
class RoleConfig:
    count: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 2  # Ray restarts a crashed worker; the controller retries its work
    strategy: str = "PACK"  # placement group strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD


@dataclass
class ClusterConfig:
    address: str = ""  # "" starts a local Ray; "auto" or ray://host:port joins a cluster
    num_cpus: Optional[int] = None  # local Ray only
    rollout: RoleConfig = field(default_factory=RoleConfig)
    reward: RoleConfig = field(default_factory=RoleConfig)
    learner: RoleConfig = field(default_factory=lambda: RoleConfig(count=2))
    backend: str = "auto"  # torch.distributed backend: auto (gloo on CPU, nccl on GPU) | gloo | nccl
    dashboard: bool = False  # local Ray only: start the dashboard (and its metrics endpoint)
    temp_dir: str = ""  # local Ray only: its session directory ("" = Ray's default)
    metrics_prefix: str = "spacevista"
    gpu_memory_gib: float = 80.0  # per GPU: what `spacevista plan` and the pre-start check fit into


@dataclass
class LogConfig:
    progress: bool = True
    tensorboard: bool = True
    wandb_project: str = ""  # "" disables W&B
    plot: bool = True
    ray_metrics: bool = True
    samples_per_step: int = 4  # completions per step written to samples.jsonl (0: none)


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
    steps: int = 40
    seed: int = 0
    run_dir: str = ""  # "" uses Hydra's output directory
    resume: str = "auto"  # auto (latest checkpoint in run_dir) | never | path to a step_N directory
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    eval_every: int = 10  # greedy eval on the held-out split every N steps (0: never)
    eval_prompts_per_scale: int = 8
    async_rollout: bool = False  # generate step k+1 while the learner updates step k (one step stale)
