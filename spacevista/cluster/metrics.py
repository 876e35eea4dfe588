"""Training metrics on the Ray dashboard (Prometheus endpoint) through `ray.util.metrics`.

Ray exports each metric as `ray_<prefix>_<name>`; tags carry scale, component, role and stage so
the shipped Grafana dashboard (templates/grafana_dashboard.json) can slice them.
"""

from __future__ import annotations

from collections.abc import Mapping

from ray.util.metrics import Counter, Gauge


class RayMetrics:
    """Gauges the controller sets once per step (cheap: values are aggregated by the Ray agent)."""

    def __init__(self, prefix: str = "spacevista"):
        p = prefix.rstrip("_") + "_"
        self.reward = Gauge(p + "reward", "mean reward per scale and component this step",
                            tag_keys=("scale", "component", "stage"))
        self.stage = Gauge(p + "curriculum_stage", "index of the active curriculum stage", tag_keys=("stage",))
        self.step = Gauge(p + "step", "last finished training step")
        self.samples_per_s = Gauge(p + "samples_per_second", "completions per second over the last step")
        self.phase_seconds = Gauge(p + "phase_seconds", "wall time of one phase of the step",
                                   tag_keys=("phase", "role"))
        self.queue_depth = Gauge(p + "queue_depth", "requests waiting for a role", tag_keys=("role",))
        self.errors = Counter(p + "reward_errors", "samples whose reward plugin failed", tag_keys=("component",))

    def record_step(self, step: int, stage_index: int, stage: str,
                    per_scale: Mapping[str, Mapping[str, float]], samples_per_s: float,
                    phases: Mapping[str, tuple[str, float]], reward_errors: Mapping[str, int]) -> None:
        self.step.set(step)
        self.stage.set(stage_index, tags={"stage": stage})
        self.samples_per_s.set(samples_per_s)
        for scale, comps in per_scale.items():
            for comp, value in comps.items():
                self.reward.set(value, tags={"scale": scale, "component": comp, "stage": stage})
        for phase, (role, seconds) in phases.items():
            self.phase_seconds.set(seconds, tags={"phase": phase, "role": role})
        for comp, n in reward_errors.items():
            if n:
                self.errors.inc(n, tags={"component": comp})

    def record_queue(self, role: str, depth: int) -> None:
        self.queue_depth.set(depth, tags={"role": role})
