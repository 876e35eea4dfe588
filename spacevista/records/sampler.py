"""ScaleSampler: batches of dataset indices mixed across scales by curriculum weights, resumable exactly.

Each batch draws per-scale counts from a multinomial over the active weights, takes that many
indices from each scale's stream, and shuffles the batch. A scale's stream walks epoch-wise
permutations of its records without replacement; the permutation for (scale, epoch) is derived from
the seed, so the state is just the generator state plus a cursor and epoch per scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spacevista import scales


class ScaleSampler:
    """Draws batches of record indices with per-scale mixing weights (deterministic given the seed)."""

    def __init__(self, record_scales: Sequence[str], weights: Mapping[str, float] | None = None, seed: int = 0):
        """``record_scales[i]`` is record i's scale; ``weights`` default to uniform over scales present."""
        unknown = sorted(set(record_scales) - set(scales.SCALES))
        if unknown:
            raise ValueError(f"unknown scale(s) in the dataset: {unknown}")
        order = np.asarray(record_scales, dtype=object)
        self.seed = seed
        self.index = {s: np.flatnonzero(order == s) for s in scales.SCALES}
        self.epoch = {s: 0 for s in scales.SCALES}
        self.cursor = {s: 0 for s in scales.SCALES}
        self.rng = np.random.default_rng(seed)
        self._permutations: dict[str, tuple[tuple[int, int], np.ndarray]] = {}
        self.weights: dict[str, float] = {}
        self.set_weights(weights or {s: 1.0 for s in scales.SCALES if len(self.index[s])})

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Set the mixing weights (scales left out get 0; active scales are those with weight > 0)."""
        for scale, weight in weights.items():
            if scale not in scales.SCALES:
                raise ValueError(f"unknown scale {scale!r}; expected one of {list(scales.SCALES)}")
            if not weight >= 0:
                raise ValueError(f"weight for scale {scale!r} must be >= 0, got {weight}")
            if weight > 0 and not len(self.index[scale]):
                raise ValueError(f"scale {scale!r} has weight {weight} but no records in the dataset")
        if not any(w > 0 for w in weights.values()):
            raise ValueError("at least one scale needs a weight > 0")
        self.weights = {s: float(weights.get(s, 0.0)) for s in scales.SCALES}

    @property
    def active_scales(self) -> list[str]:
        return [s for s in scales.SCALES if self.weights[s] > 0]

    def num_records(self, scale: str) -> int:
        return len(self.index[scale])

    def next_batch(self, batch_size: int) -> list[int]:
        """The next ``batch_size`` record indices."""
        probs = np.array([self.weights[s] for s in scales.SCALES])
        counts = self.rng.multinomial(batch_size, probs / probs.sum())
        batch = np.concatenate([self._take(s, int(c)) for s, c in zip(scales.SCALES, counts)])
        return [int(i) for i in self.rng.permutation(batch)]

    def _take(self, scale: str, count: int) -> np.ndarray:
        taken: list[np.ndarray] = []
        while count:
            order = self._permutation(scale, self.epoch[scale])
            start = self.cursor[scale]
            step = min(count, len(order) - start)
            taken.append(order[start:start + step])
            count -= step
            self.cursor[scale] = start + step
            if self.cursor[scale] == len(order):
                self.epoch[scale] += 1
                self.cursor[scale] = 0
        return np.concatenate(taken) if taken else np.empty(0, dtype=np.int64)

    def _permutation(self, scale: str, epoch: int) -> np.ndarray:
        cached = self._permutations.get(scale)
        if cached is None or cached[0] != (self.seed, epoch):
            rng = np.random.default_rng([self.seed, scales.scale_index(scale), epoch])
            cached = ((self.seed, epoch), self.index[scale][rng.permutation(len(self.index[scale]))])
            self._permutations[scale] = cached
        return cached[1]

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: seed, weights, generator state, per-scale epoch/cursor and record counts."""
        return {
            "seed": self.seed,
            "weights": dict(self.weights),
            "rng": self.rng.bit_generator.state,
            "scales": {s: {"epoch": self.epoch[s], "cursor": self.cursor[s], "num_records": self.num_records(s)}
                       for s in scales.SCALES},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output; the dataset must have the same records per scale."""
        for scale, saved in state["scales"].items():
            if saved["num_records"] != self.num_records(scale):
                raise ValueError(f"scale {scale!r}: checkpoint has {saved['num_records']} records, "
                                 f"dataset has {self.num_records(scale)}")
        self.seed = state["seed"]
        self.set_weights(state["weights"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        for scale, saved in state["scales"].items():
            self.epoch[scale], self.cursor[scale] = saved["epoch"], saved["cursor"]
