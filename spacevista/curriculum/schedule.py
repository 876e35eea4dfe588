"""Progressive curriculum across scales: stages, their mix and reward weights, promotion rules.

A stage names its active scales (with sampling weights), the stepwise reward weights, and when to
move on: after `min_steps`, once every active scale's moving average of each named reward
component reaches its threshold, or unconditionally after `max_steps`. The final stage never ends.
Pure logic: the controller feeds it per-scale metrics after each step and checkpoints its state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spacevista.configs.schema import CurriculumConfig, StageConfig
from spacevista.scales import SCALES


class CurriculumError(ValueError):
    """An invalid curriculum config; the message names the stage and field."""


@dataclass(frozen=True)
class StageChange:
    step: int
    from_stage: str
    to_stage: str
    reason: str


def validate_stages(cfg: CurriculumConfig) -> None:
    if not cfg.stages:
        raise CurriculumError(f"curriculum {cfg.name!r}: no stages")
    if cfg.window < 1:
        raise CurriculumError(f"curriculum {cfg.name!r}: window must be >= 1, got {cfg.window}")
    for i, st in enumerate(cfg.stages):
        where = f"curriculum {cfg.name!r} stage {i} ({st.name!r})"
        if not st.scales:
            raise CurriculumError(f"{where}: scales is empty")
        for s, w in st.scales.items():
            if s not in SCALES:
                raise CurriculumError(f"{where}: unknown scale {s!r} in scales; expected one of {list(SCALES)}")
            if w < 0:
                raise CurriculumError(f"{where}: scales.{s} weight must be >= 0, got {w}")
        if sum(st.scales.values()) <= 0:
            raise CurriculumError(f"{where}: scale weights sum to 0")
        rw = st.reward_weights
        if min(rw.format, rw.scale, rw.accuracy) < 0 or (rw.format + rw.scale + rw.accuracy) <= 0:
            raise CurriculumError(f"{where}: reward_weights must be >= 0 and not all 0, got {rw}")
        if st.min_steps < 0 or (st.max_steps is not None and st.max_steps < max(1, st.min_steps)):
            raise CurriculumError(f"{where}: need 0 <= min_steps <= max_steps, got {st.min_steps}, {st.max_steps}")


class Curriculum:
    """Which stage is active, and when to advance. State is small and checkpointable."""

    def __init__(self, cfg: CurriculumConfig):
        validate_stages(cfg)
        self.cfg = cfg
        self.stage_index = 0
        self.steps_in_stage = 0
        self.history: list[StageChange] = []
        self._recent: dict[str, dict[str, deque[float]]] = {}

    @property
    def stage(self) -> StageConfig:
        return self.cfg.stages[self.stage_index]

    @property
    def is_last(self) -> bool:
        return self.stage_index == len(self.cfg.stages) - 1

    def scale_weights(self) -> dict[str, float]:
        return {s: float(w) for s, w in self.stage.scales.items() if w > 0}

    def _moving_average(self, scale: str, component: str) -> float | None:
        values = self._recent.get(scale, {}).get(component)
        return sum(values) / len(values) if values else None

    def observe(self, step: int, per_scale: Mapping[str, Mapping[str, float]]) -> StageChange | None:
        """Record one step's per-scale component means; advance the stage if its rules say so."""
        for scale, comps in per_scale.items():
            slot = self._recent.setdefault(scale, {})
            for comp, value in comps.items():
                slot.setdefault(comp, deque(maxlen=self.cfg.window)).append(float(value))
        self.steps_in_stage += 1
        if self.is_last:
            return None
        reason = self._promotion_reason()
        if reason is None:
            return None
        change = StageChange(step, self.stage.name, self.cfg.stages[self.stage_index + 1].name, reason)
        self.stage_index += 1
        self.steps_in_stage = 0
        self._recent.clear()  # the next stage's rules read only its own steps
        self.history.append(change)
        return change

    def _promotion_reason(self) -> str | None:
        st = self.stage
        if st.max_steps is not None and self.steps_in_stage >= st.max_steps:
            return f"max_steps={st.max_steps} reached"
        if self.steps_in_stage < max(st.min_steps, 1) or not st.promote_when:
            return None
        if self.steps_in_stage < self.cfg.window:
            return None  # the moving average needs a full window
        met = []
        for comp, threshold in st.promote_when.items():
            for scale in self.scale_weights():
                avg = self._moving_average(scale, comp)
                if avg is None or avg < threshold:
                    return None
            met.append(f"{comp}>={threshold}")
        return "all active scales reached " + ", ".join(met)

    def state_dict(self) -> dict[str, Any]:
        return {
            "stage_index": self.stage_index,
            "steps_in_stage": self.steps_in_stage,
            "history": [vars(c) for c in self.history],
            "recent": {s: {c: list(v) for c, v in comps.items()} for s, comps in self._recent.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not 0 <= state["stage_index"] < len(self.cfg.stages):
            raise CurriculumError(f"checkpoint stage_index {state['stage_index']} does not fit "
                                  f"curriculum {self.cfg.name!r} with {len(self.cfg.stages)} stages")
        self.stage_index = int(state["stage_index"])
        self.steps_in_stage = int(state["steps_in_stage"])
        self.history = [StageChange(**c) for c in state["history"]]
        self._recent = {s: {c: deque(v, maxlen=self.cfg.window) for c, v in comps.items()}
                        for s, comps in state["recent"].items()}


