"""The policy a rollout worker must serve: one versioned snapshot, published by the learner in one piece.

The version only grows: it is the learner's step count (every SFT and RL update raises it; a resume or a recovery
sets it from the checkpoint), and a worker starts below any version (`INITIAL_VERSION`), so whatever the learner
publishes first, fresh or after an SFT warm-up, reaches every worker before its first generation. Each part
(an expert's LoRA tensors, the dense branch's fusion) carries the version that last changed it, so a worker pulls
only the parts it is behind on, and all of them after a restart. The base model is not a part: trained (full SFT)
it is written once before the workers start, and they load it as their model.

Parts travel as object-store references (or plain state dicts in-process); nothing here imports Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

INITIAL_VERSION = -1  # what a worker holds before its first snapshot: below every published version
DENSE_PART = "dense"  # the dense fusion's name among a worker's held part versions (expert names are the others)


@dataclass(frozen=True)
class PolicySnapshot:
    """`version`: the learner's step count when published. `experts`: {expert: (version that last changed it,
    its peft-format state dict or a reference to one)}; `dense`: the same for the dense fusion (None: no branch)."""

    version: int
    experts: Mapping[str, tuple[int, Any]] = field(default_factory=dict)
    dense: tuple[int, Any] | None = None

    def updated(self, change: PolicySnapshot) -> PolicySnapshot:
        """This snapshot with `change`'s parts (those a step moved) and `change`'s version."""
        if change.version < self.version:
            raise ValueError(f"policy snapshot version {change.version} is older than the served {self.version}")
        return PolicySnapshot(change.version, {**self.experts, **change.experts},
                              change.dense if change.dense is not None else self.dense)

    def behind(self, held: Mapping[str, int]) -> tuple[dict[str, Any], Any | None]:
        """({expert: weights}, dense weights or None): the parts newer than the versions in `held`."""
        experts = {e: w for e, (v, w) in self.experts.items() if v > held.get(e, INITIAL_VERSION)}
        dense = (self.dense[1] if self.dense is not None and self.dense[0] > held.get(DENSE_PART, INITIAL_VERSION)
                 else None)
        return experts, dense

    def part_versions(self) -> dict[str, int]:
        """{part: version} of every part (what a worker holds once it applied this snapshot)."""
        out = {e: v for e, (v, _) in self.experts.items()}
        if self.dense is not None:
            out[DENSE_PART] = self.dense[0]
        return out
