"""Experts as data: which LoRA expert serves each scale (`model.experts` + `model.expert_of_scale`).

A scale goes to the expert its `expert_of_scale` entry names; without one, to the expert of its own
name; and when there is a single expert, to it. So the layouts are plain config:

    per_scale (default): model.experts = the five scales (one expert per scale)
    paper4 (SpaceVista-7B, no drone expert):
        model.experts=[tiny_tabletop,tabletop,indoor,outdoor] ++model.expert_of_scale={drone:outdoor}
    shared: model.experts=[shared] (one adapter for every scale)

Pure: no torch or ray. Label routing (training, SFT, `eval run --router label`) and the router's
training labels read `expert_map`; the router's classes are `model.experts`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from spacevista.scales import SCALES

# the layouts the study compares, as Hydra overrides (README: "Experts as data")
LAYOUTS: dict[str, tuple[str, ...]] = {
    "per_scale": (),
    "paper4": ("model.experts=[tiny_tabletop,tabletop,indoor,outdoor]", "++model.expert_of_scale={drone:outdoor}"),
    "shared": ("model.experts=[shared]",),
}
EXPERT_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")  # a peft adapter name and a checkpoint directory name


def expert_map(experts: Sequence[str], expert_of_scale: Mapping[str, str] | None = None) -> dict[str, str]:
    """{scale: expert} for every scale some expert serves (a scale with none is left out)."""
    explicit = dict(expert_of_scale or {})
    out = {}
    for scale in SCALES:
        if scale in explicit:
            out[scale] = explicit[scale]
        elif scale in experts:
            out[scale] = scale
        elif len(experts) == 1:
            out[scale] = experts[0]
    return out


def expert_of(scale: str, mapping: Mapping[str, str] | None) -> str:
    """The expert serving `scale` (the scale's own name without a map: the per-scale layout)."""
    return scale if mapping is None else mapping.get(scale, scale)


def layout_problems(experts: Sequence[str], expert_of_scale: Mapping[str, str] | None) -> list[str]:
    """Config problems of an expert layout, each naming the key."""
    problems, expert_of_scale = [], dict(expert_of_scale or {})
    bad = [e for e in experts if not isinstance(e, str) or not EXPERT_NAME.fullmatch(e)]
    if not experts or bad or len(set(experts)) != len(experts):
        problems.append(f"model.experts={list(experts)}: need distinct names (lower case letters, digits, _), "
                        f"e.g. the scales {list(SCALES)} or [shared]")
    for scale, expert in expert_of_scale.items():
        if scale not in SCALES:
            problems.append(f"model.expert_of_scale.{scale}: not a scale; scales are {list(SCALES)}")
        elif expert not in experts:
            problems.append(f"model.expert_of_scale.{scale}={expert!r}: not in model.experts={list(experts)}")
    mapped = set(expert_map(experts, expert_of_scale).values())
    idle = [e for e in experts if e not in mapped]
    if idle and not problems:
        problems.append(f"model.experts: {idle} serve no scale; name them in model.expert_of_scale or drop them")
    return problems
