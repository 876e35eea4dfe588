"""What both rollout engines share about the weights they serve: the expert names, the adapter version and
the dense branch's fusion weights. One mixin, so `HFEngine` and `VLLMEngine` cannot drift apart on it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

from spacevista.policies.dense.branch import DenseBranch
from spacevista.policies.dense.fusion import load_fusion_state_dict


class EngineWeights:
    """Mixin of an engine that sets `_experts`, `_version`, `_lock` (held by its `generate`), `dense`
    (None: the branch is off) and `dense_version` in its constructor."""

    _experts: list[str]
    _version: int
    _lock: threading.Lock
    dense: DenseBranch | None
    dense_version: int

    @property
    def version(self) -> int:
        return self._version

    @property
    def experts(self) -> list[str]:
        return list(self._experts)

    def update_dense(self, version: int, weights: Mapping[str, torch.Tensor]) -> None:
        """Load the learner's dense fusion weights in place (atomically w.r.t. `generate`)."""
        if self.dense is None:
            raise ValueError("update_dense: this engine runs without the dense branch (model.dense.enabled=false)")
        with self._lock:
            load_fusion_state_dict(self.dense.fusion, weights)
            self.dense_version = version
