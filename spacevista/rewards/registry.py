"""Reward registry and plugin loading.

A reward is a function `compute_score(data_source, solution_str, ground_truth, extra_info)` returning
a float or a dict with a `score` (verl's signature). It is found by name (registered with
`@register_reward`, built in, or exposed in the `spacevista.rewards` entry-point group), or loaded
from a `module:function` or `path/to/file.py:function` spec. Loading fails at once, naming the spec
and the cause; a loaded reward that misbehaves while scoring is isolated by `call_reward`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, TypeVar

from spacevista.rewards.components import (
    choice_reward,
    count_reward,
    format_reward,
    numeric_reward,
    scale_reward,
    text_reward,
)
from spacevista.rewards.paper import magnitude_score, semantic_score
from spacevista.grammar.parse import parse_completion
from spacevista.rewards.stepwise import compute_score
from spacevista.grammar.truth import GroundTruthError, parse_ground_truth
from spacevista.scales import OutputFormat

ENTRY_POINT_GROUP = "spacevista.rewards"
RewardFn = Callable[..., Any]  # (data_source, solution_str, ground_truth, extra_info) -> float | dict
F = TypeVar("F", bound=RewardFn)

_REGISTRY: dict[str, RewardFn] = {}


class PluginLoadError(ImportError):
    """A reward spec that cannot be resolved to a function."""


def register_reward(name: str) -> Callable[[F], F]:
    """Decorator registering a reward under `name` (re-registering the same function is a no-op)."""
    def decorator(fn: F) -> F:
        known = _REGISTRY.get(name)
        if known is not None and _qualified(known) != _qualified(fn):
            raise ValueError(f"reward {name!r} is already registered to {_qualified(known)}")
        _REGISTRY[name] = fn
        return fn
    return decorator


def registered_reward(name: str) -> RewardFn | None:
    """The function registered under `name` in this process (None if there is none)."""
    return _REGISTRY.get(name)


def _qualified(fn: RewardFn) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def reward_entry_points() -> dict[str, EntryPoint]:
    """Rewards installed by other distributions in the `spacevista.rewards` entry-point group."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_rewards() -> dict[str, str]:
    """Every reward a spec can name: name -> where it comes from."""
    found = {name: _qualified(fn) for name, fn in _REGISTRY.items()}
    for name, ep in reward_entry_points().items():
        found.setdefault(name, f"entry point {ep.value}")
    return found


def load_reward(spec: str) -> tuple[str, RewardFn]:
    """(name, function) for a registered name, an entry-point name, `module:function` or
    `path/to/file.py:function`; raises PluginLoadError naming the spec and the cause."""
    try:
        return _resolve(spec)
    except PluginLoadError:
        raise
    except Exception as err:
        raise PluginLoadError(f"cannot load reward {spec!r}: {type(err).__name__}: {err}") from err


def _resolve(spec: str) -> tuple[str, RewardFn]:
    target, colon, attr = spec.rpartition(":")
    if not colon:
        return spec, _by_name(spec)
    if not target or not attr:
        raise PluginLoadError(f"cannot load reward {spec!r}: expected 'module:function' or 'file.py:function'")
    module = _import_file(Path(target)) if target.endswith(".py") else importlib.import_module(target)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise PluginLoadError(f"cannot load reward {spec!r}: {target} has no function {attr!r}")
    return attr, fn


def _by_name(name: str) -> RewardFn:
    if name in _REGISTRY:
        return _REGISTRY[name]
    entry_point = reward_entry_points().get(name)
    if entry_point is None:
        raise PluginLoadError(f"cannot load reward {name!r}: no such reward; known: {sorted(available_rewards())}")
    fn = entry_point.load()
    if not callable(fn):
        raise PluginLoadError(f"cannot load reward {name!r}: entry point {entry_point.value} is not callable")
    return fn


def _import_file(path: Path) -> Any:
    """Import a plugin file under a stable unique module name (so that pickling its functions works)."""
    path = path.resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    name = f"spacevista_reward_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None  # always set for a .py path
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def call_reward(fn: RewardFn, data_source: str, solution_str: str, ground_truth: Any,
                extra_info: dict[str, Any] | None) -> tuple[float, str | None]:
    """(score, None) for a well-behaved reward; (0.0, error) when it raises or returns something other
    than a finite number in [0, 1] (or a dict whose `score` is one)."""
    try:
        result = fn(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth,
                    extra_info=extra_info)
    except Exception as err:
        return 0.0, f"raised {type(err).__name__}: {err}"
    score = result.get("score") if isinstance(result, dict) else result
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        return 0.0, f"returned {type(score).__name__}, not a number"
    score = float(score)
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        return 0.0, f"returned {score!r}, outside [0, 1]"
    return score, None


# ---- built-ins: the stepwise reward and each component alone (the answer components ungated) ----
register_reward("stepwise")(compute_score)


def _output_format(ground_truth: Any) -> OutputFormat:
    """The dataset's output format; the default one when the ground truth cannot be read."""
    try:
        return parse_ground_truth(ground_truth).output_format
    except GroundTruthError:
        return OutputFormat.THINK_SCALE_ANSWER


@register_reward("format")
def format_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    return format_reward(parse_completion(solution_str, _output_format(ground_truth)))[0]


@register_reward("scale")
def scale_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
    truth = parse_ground_truth(ground_truth)
    return scale_reward(parse_completion(solution_str, truth.output_format).scale, truth.scale)[0]


def _answer_score(name: str, component: Callable[..., tuple[float, str]]) -> RewardFn:
    def score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None) -> float:
        truth = parse_ground_truth(ground_truth)
        if truth.type.value != name:
            raise ValueError(f"reward {name!r} cannot score a {truth.type.value!r} answer")
        return component(parse_completion(solution_str, truth.output_format).answer, truth)[0]
    score.__qualname__ = f"{name}_score"
    return register_reward(name)(score)


for _name, _component in (("numeric", numeric_reward), ("choice", choice_reward), ("count", count_reward),
                          ("text", text_reward)):
    _answer_score(_name, _component)


# ---- the paper's extra components (rewards/paper.py): plugins by name, or stage-weighted in a curriculum ----
register_reward("magnitude")(magnitude_score)
register_reward("semantic")(semantic_score)
