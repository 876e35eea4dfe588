"""`spacevista plan`: print the GPU memory plan of a config (Hydra overrides) for a model's config.json."""

from __future__ import annotations

import argparse
import json
import sys

from spacevista.cluster.plan import GIB, ModelShape, PlanError, check_plans, format_plan, plan_for_config


def add_subparser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "plan", help="GPU memory per role and per GPU for a model and config; exit 1 naming what cannot fit",
        description="Weights, LoRA and optimizer state, activations, logits and KV cache per GPU, from the model's "
                    "config.json (no weights) and the config. Example: spacevista plan model=local "
                    "model.path=/models/Qwen2.5-VL-7B-Instruct cluster=single_node_8gpu rollout=vllm rollout.n=8")
    parser.add_argument("--model", default="", help="model directory or its config.json (Qwen2-VL / Qwen2.5-VL); "
                        "default: model.path")
    parser.add_argument("--gpu-memory-gib", type=float, default=None,
                        help="memory per GPU (default: cluster.gpu_memory_gib, 80)")
    parser.add_argument("--frames", type=int, default=0, help="frames per video prompt (0: prompt from the config)")
    parser.add_argument("--frame-size", default="448x448", help="frame HEIGHTxWIDTH in pixels after resizing")
    parser.add_argument("--text-tokens", type=int, default=256, help="text tokens of a prompt besides the frames")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for `spacevista train`")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spacevista.configs.loader import compose, to_train_config

    cfg = to_train_config(compose(list(args.overrides)))
    if not (args.model or cfg.model.path):
        print("spacevista plan: give --model or model=local model.path=... (the tiny policy needs no plan)",
              file=sys.stderr)
        return 2
    model = ModelShape.from_path(args.model or cfg.model.path)
    gpu_bytes = int((args.gpu_memory_gib or cfg.cluster.gpu_memory_gib) * GIB)
    prompt = visual = None
    if args.frames:
        height, width = (int(v) for v in args.frame_size.lower().split("x"))
        visual = model.visual_tokens(args.frames, height, width)
        prompt = visual + args.text_tokens
    plans = plan_for_config(cfg, model, gpu_bytes, prompt_tokens=prompt, visual_tokens=visual)
    if not plans:
        print("no role asks for a GPU in this cluster config (cluster=...): nothing to plan", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps([{"role": p.role, "gpus": p.gpus, "per_gpu_bytes": p.total, "budget_bytes": p.budget,
                           "parts": p.parts, "problems": p.problems(), "notes": p.notes} for p in plans], indent=1))
    else:
        print(f"model: {model.params() / 1e9:.2f} B parameters; prompt "
              f"{prompt or cfg.rollout.max_model_len - cfg.rollout.max_tokens} tokens, response "
              f"{cfg.rollout.max_tokens}; {gpu_bytes / GIB:.0f} GiB per GPU")
        print(format_plan(plans))
    try:
        check_plans(plans)
    except PlanError as err:
        print(str(err), file=sys.stderr)
        return 1
    return 0
