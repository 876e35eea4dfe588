"""Named studies: the paper's ablations as grids of variants (training overrides + how to evaluate).

A variant is plain data: the Hydra overrides its training run takes and the way its final policy is
evaluated (`learned` or `label` routing of the final checkpoint, or `sft`: the run's SFT-trained base
with no expert, i.e. the policy RL starts from). Variants with the same overrides share one training
run per seed (the `rl` and `router` studies evaluate one run two ways), so a pair compares like with like;
a variant that is the default config has no overrides, so studies sharing `--runs` share its runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from spacevista.configs.experts import LAYOUTS
from spacevista.configs.policy import ExpertLoRAConfig
from spacevista.scales import SCALES

EVALS = ("learned", "label", "sft")


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...] = ()
    eval: str = "learned"  # learned | label (router at eval) | sft (the SFT warm-up alone, no expert)

    def __post_init__(self) -> None:
        if self.eval not in EVALS:
            raise ValueError(f"variant {self.name!r}: eval must be one of {EVALS}, got {self.eval!r}")


@dataclass(frozen=True)
class Study:
    name: str
    question: str
    variants: tuple[Variant, ...]
    baseline: str  # the variant every other is compared with, seed by seed

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def _equal_rank_shared() -> tuple[str, ...]:
    """One adapter with the per-scale layout's total rank (and the same alpha / rank scaling)."""
    lora = ExpertLoRAConfig()
    k = len(SCALES)
    return (*LAYOUTS["shared"], f"model.lora.rank={lora.rank * k}", f"model.lora.alpha={lora.alpha * k}")


def _outcome_only(stages: int) -> tuple[str, ...]:
    """Every stage rewards the answer alone (format and scale weights 0; an unparseable answer still scores 0)."""
    weights = "{format:0.0,scale:0.0,accuracy:1.0}"
    return ("reward.weights=" + weights, *(f"curriculum.stages.{i}.reward_weights={weights}" for i in range(stages)))


PRESETS: dict[str, Study] = {s.name: s for s in (
    Study("experts", "does routing each scale to its own LoRA expert beat one shared adapter of equal size?",
          (Variant("shared", _equal_rank_shared()), Variant("paper4", LAYOUTS["paper4"]),
           Variant("per_scale", LAYOUTS["per_scale"])), baseline="shared"),
    Study("curriculum", "does the progressive curriculum beat mixing every scale from the first step?",
          (Variant("mixed", ("curriculum=mixed",)), Variant("progressive")),  # progressive: the default
          baseline="mixed"),
    Study("reward", "stepwise reward vs the answer alone vs the paper's ordered format/answer/scale/semantic stages",
          (Variant("outcome", _outcome_only(3)), Variant("stepwise"),
           Variant("paper_ordered", ("curriculum=ordered",))), baseline="outcome"),
    Study("router", "learned router vs each record's scale label at evaluation (one training run, two evals)",
          (Variant("label", eval="label"), Variant("learned", eval="learned")), baseline="label"),
    Study("rl", "does GRPO after the SFT warm-up improve held-out accuracy? (one training run, two evals)",
          (Variant("sft", eval="sft"), Variant("sft_rl", eval="learned")), baseline="sft"),
    Study("dense", "do dense self-supervised features fused into the visual tokens (SpaceVista-7B's DINO branch) help?",
          (Variant("no_dense"), Variant("dense", ("model.dense.enabled=true",))), baseline="no_dense"),
)}
