"""Checkpoints in plain formats, the export bundle, and old pickled checkpoints never unpickled."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import make_policy_samples
from peft import PeftModel
from safetensors.torch import load_file

from spacevista.cluster import run_storage
from spacevista.cli import main
from spacevista.eval.policy import EvalError, load_policy_from_checkpoint
from spacevista.export import export
from spacevista.learner import checkpoint_files
from spacevista.learner.batch import collate
from spacevista.learner.core import LearnerCore
from spacevista.policies.router import RouterConfig, ScaleRouter
from spacevista.policies.tiny import load_policy
from spacevista.scales import SCALES


@pytest.fixture(scope="module")
def step_dir(tiny_policy_dir, tmp_path_factory) -> Path:
    """One RL step (experts and router move), committed as the controller commits it."""
    torch.manual_seed(0)
    learner = LearnerCore(tiny_policy_dir, SCALES, micro_batch_size=8)
    learner.rl_step(collate(learner.processor, make_policy_samples(5, list(SCALES), seed=4, with_old_logprobs=True)))
    tmp = run_storage.staging_dir(tmp_path_factory.mktemp("run"), learner.step)
    learner.save_checkpoint(tmp)
    return run_storage.commit(tmp, learner.step, {"model_path": str(tiny_policy_dir), "experts": list(SCALES)})


def test_a_checkpoint_holds_no_pickle_and_its_adapters_name_their_base(step_dir, tiny_policy_dir):
    names = {p.name for p in step_dir.iterdir()}
    files = checkpoint_files
    assert {files.LEARNER_FILE, files.ROUTER_FILE, files.OPTIMIZER_FILE, files.RNG_FILE} <= names
    assert not list(step_dir.rglob("*.pt")) and not list(step_dir.rglob("*.pkl"))
    config = json.loads((step_dir / "indoor" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_policy_dir)
    json.loads((step_dir / checkpoint_files.LEARNER_FILE).read_text())  # plain JSON


def test_export_bundle_loads_with_transformers_and_peft(step_dir, tmp_path):
    bundle = export(step_dir, tmp_path / "bundle")
    assert json.loads((bundle / "bundle.json").read_text())["experts"] == list(SCALES)
    base, _ = load_policy(bundle / "base")
    model = PeftModel.from_pretrained(base, bundle / "experts" / SCALES[0], adapter_name=SCALES[0])
    for expert in SCALES[1:]:
        model.load_adapter(bundle / "experts" / expert, adapter_name=expert)
    for expert in SCALES:
        saved = load_file(step_dir / expert / "adapter_model.safetensors")
        loaded = {k: v for k, v in model.state_dict().items() if f".{expert}." in k}
        assert len(loaded) == len(saved)
        assert all(torch.equal(loaded[k.replace(".weight", f".{expert}.weight")], v) for k, v in saved.items())
    state = load_file(bundle / "router.safetensors")
    router = ScaleRouter(list(SCALES), state["classifier.0.weight"].shape[0],
                         RouterConfig(hidden=state["classifier.1.weight"].shape[0]))
    router.load_state_dict(state)
    assert int(router.trained_steps) == 1
    assert "PeftModel.from_pretrained" in (bundle / "README.md").read_text()


def test_export_cli_refuses_to_overwrite(step_dir, tmp_path, capsys):
    assert main(["export", str(step_dir), str(tmp_path / "b")]) == 0
    assert main(["export", str(step_dir), str(tmp_path / "b")]) == 2
    assert "--overwrite" in capsys.readouterr().out


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_an_old_pickled_checkpoint_is_never_unpickled(step_dir, tmp_path, tiny_policy_dir, capsys):
    old = tmp_path / "step_1"
    old.mkdir()
    (old / run_storage.COMPLETE_MARKER).write_text(json.dumps({"step": 1, "model_path": str(tiny_policy_dir)}))
    for expert in SCALES:
        (old / expert).symlink_to(step_dir / expert)
    marker = tmp_path / "pwned"
    (old / checkpoint_files.PICKLED_LEARNER_FILE).write_bytes(pickle.dumps({"router": _Exploit(str(marker))}))
    with pytest.raises(checkpoint_files.CheckpointFormatError, match="checkpoint upgrade"):
        checkpoint_files.read(old, list(SCALES))
    with pytest.raises(EvalError, match="--trust-pickle"):
        load_policy_from_checkpoint(old)
    assert main(["checkpoint", "upgrade", str(old)]) == 2 and "--trust-pickle" in capsys.readouterr().out
    assert not marker.exists()


def test_upgrade_converts_a_trusted_old_checkpoint(step_dir, tmp_path):
    old = tmp_path / "step_1"
    old.mkdir()
    state = checkpoint_files.read(step_dir, list(SCALES))
    torch.save({k: state[k] for k in ("router", "optimizer", "scheduler", "step", "rng")},
               old / checkpoint_files.PICKLED_LEARNER_FILE)
    (old / run_storage.COMPLETE_MARKER).write_text(json.dumps({"step": 1}))
    for expert in SCALES:
        (old / expert).symlink_to(step_dir / expert)
    assert main(["checkpoint", "upgrade", str(old), "--trust-pickle"]) == 0
    again = checkpoint_files.read(old, list(SCALES))
    assert again["step"] == state["step"] and again["scheduler"] == state["scheduler"]
    assert all(torch.equal(again["router"][k], v) for k, v in state["router"].items())
    assert again["rng"]["python"] == state["rng"]["python"]
    assert all(torch.equal(a, b) for name in state["optimizer"]["state"]
               for a, b in zip(again["optimizer"]["state"][name].values(), state["optimizer"]["state"][name].values()))
