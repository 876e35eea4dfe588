"""`spacevista export` and `spacevista checkpoint upgrade`: a checkpoint -> a self-contained bundle.

The bundle holds what inference needs and nothing of training (no optimizer, no RNG):

  base/                 the Hugging Face model directory (the SFT-trained base if the run trained it,
                        else a copy of the model the run started from) with its processor
  experts/<name>/       each scale expert as a peft adapter directory, its config naming the bundle's base/ by
                        its absolute path at export (a relative one is taken for a hub id from any other
                        working directory); after a move, load base/ explicitly as README.md shows
  router.safetensors    the learned scale router, with router.json (its expert order and width)
  dense_fusion.safetensors  the dense branch's fusion, when the run had one
  bundle.json           experts, their order, the scale -> expert map, where it came from
  README.md             the loading code (transformers + peft, vLLM LoRA modules)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from spacevista.cluster.run_storage import COMPLETE_MARKER, latest_checkpoint

BUNDLE_FORMAT = 1
README = """# SpaceVista-RL policy bundle

Exported from `{source}`. Experts: {experts}. Run from this directory:

```python
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

base = AutoModelForImageTextToText.from_pretrained("base")
processor = AutoProcessor.from_pretrained("base")
model = PeftModel.from_pretrained(base, "experts/{first}", adapter_name="{first}")
{more}model.set_adapter("{first}")   # or generate(..., adapter_names=[...]) for a mixed batch
```

vLLM serves the same files: `LLM(model="base", enable_lora=True, max_loras={count}, max_lora_rank={rank})` and
one `LoRARequest(name, i, "experts/<name>")` per expert. The learned router (`router.safetensors`, classes in
the order of `bundle.json` "experts") picks an expert from pooled prompt features; `spacevista eval run
--checkpoint` on the source checkpoint uses it.

Each `experts/<name>/adapter_config.json` names its base (`base_model_name_or_path`) as `{base}`, this
bundle's `base/` where it was exported, so tools that load the base from that field work from any directory
until the bundle moves. The code above never reads the field: after moving or copying the bundle, load
`base/` as it does.
"""


class ExportError(Exception):
    """A checkpoint that cannot be exported; the message says why."""


def resolve(path: Path) -> Path:
    """A `step_N/` directory, or a run directory's latest complete checkpoint."""
    if (path / COMPLETE_MARKER).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise ExportError(f"{path}: neither a complete step_N checkpoint nor a run directory holding one")
    return latest


def export(checkpoint: Path, out: Path, overwrite: bool = False) -> Path:
    """Write the bundle for `checkpoint` (see the module docstring) to `out`; returns `out`."""
    from spacevista.learner.checkpoint_files import BASE_DIR, ROUTER_FILE, read_router
    from spacevista.policies.dense.fusion import FUSION_FILE

    checkpoint = resolve(Path(checkpoint))
    meta = json.loads((checkpoint / COMPLETE_MARKER).read_text())
    experts = list(meta.get("experts") or [])
    if not experts:
        raise ExportError(f"{checkpoint}: {COMPLETE_MARKER} lists no experts")
    if out.exists():
        if not overwrite:
            raise ExportError(f"{out} exists: pass --overwrite to replace it")
        shutil.rmtree(out)
    base = checkpoint / BASE_DIR if (checkpoint / BASE_DIR / "config.json").is_file() else Path(meta["model_path"])
    if not (base / "config.json").is_file():
        raise ExportError(f"{checkpoint}: no trained base/ and the recorded model_path {base} holds no config.json")
    staging, base_name = out.with_name(f".{out.name}.tmp"), str(out.resolve() / "base")  # where base/ lands
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(base, staging / "base")
    for expert in experts:
        target = staging / "experts" / expert
        shutil.copytree(checkpoint / expert, target)
        config_file = target / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = base_name
        config_file.write_text(json.dumps(config, indent=2))
    router: dict[str, Any] = {}
    if (checkpoint / ROUTER_FILE).is_file():
        state = read_router(checkpoint)
        shutil.copy2(checkpoint / ROUTER_FILE, staging / ROUTER_FILE)
        router = {"experts": experts, "trained_steps": int(state.get("trained_steps", 0)),
                  "hidden": int(state["classifier.1.weight"].shape[0]) if "classifier.1.weight" in state else None}
        (staging / "router.json").write_text(json.dumps(router, indent=1))
    if (checkpoint / FUSION_FILE).is_file():
        shutil.copy2(checkpoint / FUSION_FILE, staging / FUSION_FILE)
    rank = json.loads((staging / "experts" / experts[0] / "adapter_config.json").read_text()).get("r", 16)
    (staging / "bundle.json").write_text(json.dumps({
        "format": BUNDLE_FORMAT, "source": str(checkpoint), "step": meta.get("step"), "experts": experts,
        "expert_of_scale": meta.get("expert_of_scale", {e: e for e in experts}),
        "router": bool(router), "dense": (staging / FUSION_FILE).is_file()}, indent=1))
    more = "".join(f'model.load_adapter("experts/{e}", adapter_name="{e}")\n' for e in experts[1:])
    (staging / "README.md").write_text(README.format(source=checkpoint, experts=", ".join(experts), first=experts[0],
                                                     more=more, count=len(experts), rank=rank, base=base_name))
    staging.rename(out)
    return out


def add_subparsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `export` and `checkpoint upgrade`."""
    exp = subparsers.add_parser("export", help="a checkpoint as a bundle that transformers + peft load and vLLM serves")
    exp.add_argument("checkpoint", type=Path, help="a step_N/ directory, or a run directory (its latest checkpoint)")
    exp.add_argument("out", type=Path, help="the bundle directory to write")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    exp.set_defaults(func=_run_export)
    ckpt = subparsers.add_parser("checkpoint", help="checkpoint maintenance")
    commands = ckpt.add_subparsers(dest="checkpoint_command", required=True)
    upgrade = commands.add_parser("upgrade", help="rewrite a pre-2026-11-30 checkpoint (pickled learner.pt) in "
                                                  "the plain format; unpickling runs code from the file")
    upgrade.add_argument("checkpoint", type=Path)
    upgrade.add_argument("--trust-pickle", action="store_true", help="required: you trust whoever wrote the file")
    upgrade.set_defaults(func=_run_upgrade)


def _run_export(args: argparse.Namespace) -> int:
    try:
        out = export(args.checkpoint, args.out, args.overwrite)
    except (ExportError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}")
        return 2
    print(f"bundle written to {out}")
    return 0


def _run_upgrade(args: argparse.Namespace) -> int:
    from spacevista.learner.checkpoint_files import CheckpointFormatError, upgrade

    if not args.trust_pickle:
        print("error: loading a pickle runs code from the file: pass --trust-pickle if you trust its author")
        return 2
    try:
        print(f"upgraded {upgrade(resolve(args.checkpoint))}")
    except (CheckpointFormatError, ExportError) as err:
        print(f"error: {err}")
        return 2
    return 0
