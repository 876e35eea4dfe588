"""Shared test fixtures. Add yours at the end; keep each fixture small and deterministic."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spacevista.configs.policy import TinyPolicyConfig
from spacevista.scales import LENGTH_UNITS, OUTPUT_INSTRUCTION, SCALES, format_output
from spacevista.scales import SYNTHETIC_TASK_SPECS as TASK_SPECS


# ---- policies: the tiny Qwen2.5-VL and learner samples ------------------------------------------
# The tests' policy architecture (~0.7 M parameters): smaller than the embedded training default, so the suite is fast.
TEST_POLICY = TinyPolicyConfig(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256)


def policy_corpus() -> list[str]:
    """Tokenizer corpus made of scales.py's own strings."""
    lines = [OUTPUT_INSTRUCTION, *SCALES, *LENGTH_UNITS, *(f"{t.name}: {t.description}" for t in TASK_SPECS)]
    lines += [format_output(f"the {t.description}", s, f"{i + 1}.5 {u}")
              for i, (t, s, u) in enumerate(zip(TASK_SPECS, SCALES * 2, list(LENGTH_UNITS) * 2))]
    return lines


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny offline policy (`TEST_POLICY`), built once per test session."""
    from spacevista.policies.tiny import build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("tiny_policy"), policy_corpus(), TEST_POLICY)


def _picture(rng: np.random.Generator, size: int = 56) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_policy_samples(n: int, experts: Sequence[str], seed: int = 0,
                        media: Sequence[str] = ("image", "video", "text"), with_rollout_logprobs: bool = False) -> list:
    """`n` learner samples cycling through `experts` and `media`, each its own prompt (its own uid)."""
    from spacevista.learner.batch import TrainSample

    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    samples = []
    for i in range(n):
        kind, expert = media[i % len(media)], experts[i % len(experts)]
        images = [_picture(np_rng)] if kind == "image" else []
        videos = [[_picture(np_rng) for _ in range(4)]] if kind == "video" else []
        placeholder = {"image": "<image> ", "video": "<video> "}.get(kind, "")
        task = TASK_SPECS[i % len(TASK_SPECS)]
        length = rng.randrange(3, 9)
        samples.append(TrainSample(
            messages=[{"role": "user", "content": f"{placeholder}{task.description}? {OUTPUT_INSTRUCTION}"}],
            images=images, videos=videos, response_ids=[rng.randrange(10, 200) for _ in range(length)],
            rollout_logprobs=[-rng.uniform(4.0, 7.0) for _ in range(length)] if with_rollout_logprobs else None,
            advantage=rng.uniform(-1.0, 1.0), expert=expert, scale_label=expert, uid=f"{seed}-{i}",
            record_id=f"rec-{seed}-{i}"))
    return samples


@pytest.fixture
def policy_samples() -> Callable[..., list]:
    """Factory: `policy_samples(n, experts, seed=0, media=..., with_rollout_logprobs=False)`."""
    return make_policy_samples


def assert_adam_weights_close(got: dict, expected: dict, lr: float, tight: float = 0.05, sliver: float = 1e-3) -> None:
    """Weights after an Adam step, compared robustly: Adam's first step is ~lr * sign(grad), so an
    element whose gradient is float noise (summed in another order) can land up to ~2 lr away.
    Every element must be within Adam's bound, and all but a `sliver` fraction within `tight` * lr."""
    far = total = 0
    for name, want in expected.items():
        diff = (got[name] - want).detach().abs()
        assert float(diff.max()) <= 2.5 * lr, f"{name}: {float(diff.max())} > Adam's bound {2.5 * lr}"
        far += int((diff > tight * lr).sum())
        total += diff.numel()
    assert far <= sliver * total, f"{far} of {total} weights differ by more than {tight} * lr"


@pytest.fixture(scope="module")
def ray_temp_dir():
    """A short temp dir for a test's own Ray session (AF_UNIX socket paths are limited to 107 bytes)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="svr-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray(ray_temp_dir):
    """A local Ray for one test module: 127.0.0.1, its own temp dir, token auth as Ray defaults it."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             _temp_dir=str(ray_temp_dir), log_to_driver=False)
    yield
    ray.shutdown()


# ---- rewards --------------------------------------------------------------------------------------
@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewards a test registers stay in that test: the reward registry is a copy, put back afterwards."""
    from spacevista.rewards import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
