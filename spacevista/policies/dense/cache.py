"""Encoder features cached by the frame's content: the dense encoder is frozen, so a frame's features are
computed once and reused across the n samples of a GRPO group, across epochs and across roles.

A key is a digest of (frame pixels, encoder id, resolution). Memory holds an LRU bounded in bytes; an
optional directory holds one safetensors file per key, also bounded in bytes (least recently used file
removed first; a hit refreshes its mtime), so several processes on one machine share it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MB = 1 << 20


def frame_key(frame: torch.Tensor, encoder_id: str, resolution: int) -> str:
    """Content key of one frame (or of one clip, for encoders that see frames jointly)."""
    data = frame.detach().to("cpu").contiguous()
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{encoder_id}|{resolution}|{data.dtype}|{tuple(data.shape)}|".encode())
    h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0

    @property
    def lookups(self) -> int:
        return self.memory_hits + self.disk_hits + self.misses

    @property
    def hit_rate(self) -> float:
        return (self.memory_hits + self.disk_hits) / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"dense/cache_hits": float(self.memory_hits + self.disk_hits), "dense/cache_misses": float(self.misses),
                "dense/cache_disk_hits": float(self.disk_hits), "dense/cache_hit_rate": self.hit_rate}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class FeatureCache:
    """Key -> feature tensor (kept on CPU), LRU-bounded in memory and optionally on disk."""

    def __init__(self, memory_bytes: int = 256 * MB, disk_dir: str | os.PathLike | None = None,
                 disk_bytes: int = 0) -> None:
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes if disk_dir else 0
        self.disk_dir = Path(disk_dir).expanduser() if disk_dir and disk_bytes > 0 else None
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memory_used = 0
        self.stats = CacheStats()
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._memory)

    @property
    def memory_used(self) -> int:
        return self._memory_used

    def get(self, key: str) -> torch.Tensor | None:
        """The cached features, or None (counted as a miss)."""
        if key in self._memory:
            self._memory.move_to_end(key)
            self.stats.memory_hits += 1
            return self._memory[key]
        found = self._disk_get(key)
        if found is not None:
            self.stats.disk_hits += 1
            self._memory_put(key, found)
            return found
        self.stats.misses += 1
        return None

    def put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().to("cpu").contiguous()
        self._memory_put(key, features)
        self._disk_put(key, features)

    def clear_memory(self) -> None:
        self._memory.clear()
        self._memory_used = 0

    # ---- memory ------------------------------------------------------------------------------------
    def _memory_put(self, key: str, features: torch.Tensor) -> None:
        size = _nbytes(features)
        if size > self.memory_bytes:
            return
        if key in self._memory:
            self._memory_used -= _nbytes(self._memory.pop(key))
        self._memory[key] = features
        self._memory_used += size
        while self._memory_used > self.memory_bytes:
            _, old = self._memory.popitem(last=False)
            self._memory_used -= _nbytes(old)

    # ---- disk --------------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f"{key}.safetensors"

    def _disk_get(self, key: str) -> torch.Tensor | None:
        if self.disk_dir is None:
            return None
        path = self._path(key)
        try:
            features = load_file(str(path))["features"]
            os.utime(path)  # a hit makes it the most recently used file
        except (FileNotFoundError, KeyError, OSError):
            return None
        return features

    def _disk_put(self, key: str, features: torch.Tensor) -> None:
        if self.disk_dir is None or _nbytes(features) > self.disk_bytes:
            return
        path = self._path(key)
        if path.exists():
            return
        fd, tmp = tempfile.mkstemp(dir=self.disk_dir, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file({"features": features}, tmp)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._disk_evict()

    def _disk_evict(self) -> None:
        assert self.disk_dir is not None
        files = []
        for p in self.disk_dir.glob("*.safetensors"):
            try:
                st = p.stat()
            except FileNotFoundError:  # removed by another process
                continue
            files.append((st.st_mtime, p.name, st.st_size, p))
        used = sum(f[2] for f in files)
        for _, _, size, path in sorted(files):
            if used <= self.disk_bytes:
                break
            path.unlink(missing_ok=True)
            used -= size

    def disk_used(self) -> int:
        if self.disk_dir is None:
            return 0
        return sum(p.stat().st_size for p in self.disk_dir.glob("*.safetensors"))
