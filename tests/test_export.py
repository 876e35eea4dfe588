"""Checkpoints in plain formats, the export bundle, and old pickled checkpoints never unpickled. Their adapters
name a base that plain peft loads from any directory, and saving one asks the hub nothing."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
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
from spacevista.scales import SCALES, format_output


@pytest.fixture(scope="module")
def step_dir(tiny_policy_dir, tmp_path_factory) -> Path:
    """One RL step (experts and router move), committed as the controller commits it."""
    torch.manual_seed(0)
    learner = LearnerCore(tiny_policy_dir, SCALES, micro_batch_size=8)
    samples = make_policy_samples(5, list(SCALES), seed=4, with_rollout_logprobs=True)
    learner.rl_step(collate(learner.processor, samples))
    tmp = run_storage.staging_dir(tmp_path_factory.mktemp("run"), learner.step)
    learner.save_checkpoint(tmp)
    return run_storage.commit(tmp, learner.step, {"model_path": str(tiny_policy_dir), "experts": list(SCALES)})


def test_a_checkpoint_holds_no_pickle_and_its_adapters_name_their_base(step_dir, tiny_policy_dir):
    names = {p.name for p in step_dir.iterdir()}
    files = checkpoint_files
    assert {files.LEARNER_FILE, files.ROUTER_FILE, files.OPTIMIZER_FILE, files.RNG_FILE} <= names
    assert not list(step_dir.rglob("*.pt")) and not list(step_dir.rglob("*.pkl"))
    config = json.loads((step_dir / "indoor" / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == tiny_policy_dir.resolve()
    json.loads((step_dir / checkpoint_files.LEARNER_FILE).read_text())  # plain JSON


@pytest.fixture(scope="module")
def sft_learner(tiny_policy_dir) -> LearnerCore:
    """A learner whose base was trained (full-parameter SFT): its checkpoints carry base/."""
    torch.manual_seed(0)
    learner = LearnerCore(tiny_policy_dir, SCALES, micro_batch_size=4, sft_full_params=True)
    samples = make_policy_samples(4, list(SCALES[:2]), seed=7)
    learner.sft_step(samples, [format_output("x", s.expert, "1 m") for s in samples])
    assert learner.base_trained
    return learner


@pytest.fixture(scope="module")
def sft_step_dir(sft_learner, tiny_policy_dir, tmp_path_factory) -> Path:
    """A committed checkpoint with a trained base/."""
    tmp = run_storage.staging_dir(tmp_path_factory.mktemp("sft_run"), sft_learner.step)
    sft_learner.save_checkpoint(tmp)
    return run_storage.commit(tmp, sft_learner.step, {"model_path": str(tiny_policy_dir), "experts": list(SCALES)})


PLAIN_PEFT = """import json, sys
from peft import PeftConfig, PeftModel
from transformers import AutoModelForImageTextToText
config = PeftConfig.from_pretrained(sys.argv[1])
model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(config.base_model_name_or_path),
                                  sys.argv[1])
print(json.dumps({"base": config.base_model_name_or_path, "lora": sum(".lora_" in k for k in model.state_dict())}))
"""


def load_with_plain_peft(adapter: Path, cwd: Path) -> dict:
    """Load an adapter as a new user would: the base its config names, from another working directory, in a
    fresh process with the hub off (so a name taken for a hub id fails at once instead of retrying)."""
    proc = subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(adapter)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_adapters_without_a_trained_base_name_the_starting_model(step_dir, tiny_policy_dir, tmp_path):
    loaded = load_with_plain_peft(step_dir / "indoor", cwd=tmp_path)
    assert Path(loaded["base"]) == tiny_policy_dir.resolve()
    assert loaded["lora"] == len(load_file(step_dir / "indoor" / "adapter_model.safetensors"))


def test_adapters_with_a_trained_base_name_the_committed_base(sft_step_dir, tmp_path):
    """The checkpoint's own base/ by the absolute path it has once committed, not the staging directory's."""
    loaded = load_with_plain_peft(sft_step_dir / "indoor", cwd=tmp_path)
    assert Path(loaded["base"]) == (sft_step_dir / checkpoint_files.BASE_DIR).resolve()
    assert loaded["lora"] == len(load_file(sft_step_dir / "indoor" / "adapter_model.safetensors"))


def test_bundle_adapters_name_the_bundle_base(sft_step_dir, tmp_path):
    bundle = export(sft_step_dir, tmp_path / "bundle")
    (tmp_path / "elsewhere").mkdir()
    loaded = load_with_plain_peft(bundle / "experts" / "indoor", cwd=tmp_path / "elsewhere")
    assert Path(loaded["base"]) == (bundle / "base").resolve()
    trained, copied = (load_file(d / "model.safetensors") for d in (sft_step_dir / "base", bundle / "base"))
    assert trained.keys() == copied.keys() and all(torch.equal(copied[k], v) for k, v in trained.items())
    assert loaded["base"] in (bundle / "README.md").read_text()


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Host names looked up (each refused at once) while the test runs; the hub is not switched off."""
    lookups: list[str] = []

    def refuse(host, *args, **kwargs):
        lookups.append(host)
        raise OSError(f"no network in tests: {host}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return lookups


def test_a_moved_checkpoint_loads_whatever_its_adapters_name(sft_learner, sft_step_dir, tiny_policy_dir, tmp_path,
                                                             no_network):
    """Our loaders take the base from the checkpoint's layout, never from the adapters' configs."""
    moved = shutil.copytree(sft_step_dir, tmp_path / "moved" / sft_step_dir.name)
    for expert in SCALES:
        config_file = moved / expert / "adapter_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": "base"}))
    assert load_policy_from_checkpoint(moved).model_path == moved / checkpoint_files.BASE_DIR
    learner = LearnerCore(tiny_policy_dir, SCALES, micro_batch_size=4, sft_full_params=True)
    learner.load_checkpoint(moved)
    assert learner.base_trained and learner.step == sft_learner.step and no_network == []


def test_saving_a_checkpoint_asks_the_hub_nothing(sft_learner, tmp_path, no_network):
    """peft's adapter state dict looks the base's name up on the hub unless told not to (issue 26: every save
    resolved a hub repo named "base"): here the learner's peft configs name a hub id, and it saves twice."""
    names = {e: c.base_model_name_or_path for e, c in sft_learner.model.peft_config.items()}
    try:
        for config in sft_learner.model.peft_config.values():
            config.base_model_name_or_path = "Qwen/Qwen2.5-VL-3B-Instruct"
        sft_learner.save_checkpoint(tmp_path / "first")
        sft_learner.save_checkpoint(tmp_path / "second")
    finally:
        for expert, name in names.items():
            sft_learner.model.peft_config[expert].base_model_name_or_path = name
    assert no_network == []


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
