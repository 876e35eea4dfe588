"""`spacevista eval run | score | compare`: wired into the main CLI by `add_subparser`; each handler
takes the parsed args and returns an exit code. Torch and the engines load only inside `run`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from spacevista.eval.official import read_lines
from spacevista.eval.report import (DIFFERENCES, category_table, leaderboard_markdown, leaderboard_table,
                                    load_summary, pct, write_outputs)
from spacevista.eval.scoring import READINGS, Readings, read_results, result_row, score_sample
from spacevista.eval.summary import summarize

console = Console()
errors = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def add_subparser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `eval` with its `run`, `score` and `compare` subcommands."""
    parser = subparsers.add_parser("eval", help="evaluate a checkpoint on a benchmark; score and compare results")
    commands = parser.add_subparsers(dest="eval_command", required=True)

    run = commands.add_parser("run", help="generate answers with a checkpoint's experts and score them")
    run.add_argument("--checkpoint", required=True,
                     help="a step_N/ checkpoint (or a run directory: its latest), or 'none' for the base policy")
    run.add_argument("--data", required=True, type=Path,
                     help="Record parquet file or shard directory; a synthetic dataset root means its test split")
    run.add_argument("--model", type=Path, help="base model directory (required with --checkpoint none; "
                                                "default: the checkpoint's base/ or recorded model_path)")
    run.add_argument("--router", choices=("learned", "label"),
                     help="learned: the checkpoint's router (default); label: each record's scale")
    run.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    run.add_argument("--out", type=Path, help="output directory (default runs/eval/<name>-<time>)")
    run.add_argument("--limit", type=int, help="evaluate the first N records only")
    run.add_argument("--max-tokens", type=int, default=512, help="generated tokens per answer (default 512)")
    run.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    run.add_argument("--workers", type=int, default=1, help="> 1: that many Ray rollout workers")
    run.add_argument("--dtype", default="auto", help="torch dtype (default: bfloat16 on GPU, float32 on CPU)")
    run.add_argument("--reading", choices=("auto", *READINGS), default="auto",
                     help="auto (default): the official scorer's reading for SpaceVista-Bench entries, ours "
                          "(lenient: units converted, MRA on numbers) for any other data")
    run.add_argument("--max-model-len", type=int,
                     help="vLLM context length (default: the model's limit, at most 8192)")
    run.set_defaults(func=run_eval)

    score = commands.add_parser("score", help="score a SpaceVista-Bench results JSONL file offline")
    score.add_argument("file", type=Path, help="one JSON object per line: predicted_answer, ground_truth, "
                                               "answer_type, category, original_type (or the older layout: "
                                               "question_type, task_type)")
    score.add_argument("--out", required=True, type=Path, help="output directory")
    score.add_argument("--name", help="the run's name in tables (default: the file name)")
    score.add_argument("--reading", choices=READINGS, default="official",
                       help="official: the SpaceVista-Bench scorer's reading, exactly (default); lenient: ours "
                            "(last <answer> block, units converted, choice letters and text normalised)")
    score.set_defaults(func=score_file)

    compare = commands.add_parser("compare", help="several runs' summaries side by side")
    compare.add_argument("runs", nargs="+", type=Path,
                         help="`eval run` / `eval score` output directories (labelled by name, by path if repeated)")
    compare.add_argument("--out", type=Path, help="write the Markdown tables to this file")
    compare.set_defaults(func=compare_runs)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    from spacevista.records.frames import FrameError
    from spacevista.records.io import DataError
    from spacevista.eval.policy import EvalError, base_policy, load_policy_from_checkpoint
    from spacevista.eval.run import RunOptions, evaluate, read_eval_records

    base = args.checkpoint == "none"
    try:
        if base and args.model is None:
            raise EvalError("--checkpoint none evaluates the base policy: pass --model PATH")
        if base and args.router:
            raise EvalError("--router does not apply to --checkpoint none (no experts to route to)")
        policy = base_policy(args.model) if base else load_policy_from_checkpoint(args.checkpoint, args.model)
        records = read_eval_records(args.data, args.limit)
        if not records:
            raise EvalError(f"--data {args.data}: no records")
        options = RunOptions(routing="none" if base else args.router or "learned", engine=args.engine,
                             max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                             batch_size=args.batch_size, workers=args.workers, dtype=args.dtype,
                             max_model_len=args.max_model_len)
        train = sum(r.split == "train" for r in records)
        if train:
            errors.print(f"warning: {train} of {len(records)} records are from the train split")
        samples, stats = evaluate(policy, records, options)
    except (EvalError, DataError, FrameError, FileNotFoundError, ImportError) as err:  # ImportError: no vLLM
        errors.print(f"error: {err}")
        return 2
    out = args.out or Path("runs/eval") / f"{policy.name}-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    run_info = {"checkpoint": str(policy.checkpoint) if policy.checkpoint else None, "model": str(policy.model_path),
                "experts": policy.experts, "router": options.routing, "engine": options.engine,
                "workers": options.workers, "data": str(args.data), "records": len(records),
                "max_tokens": options.max_tokens, "temperature": options.temperature, **stats}
    scored = [score_sample(s) for s in samples]
    reading = args.reading
    if reading == "auto":  # the official reading reads a ground truth with a unit ("12 cm") as exact text
        reading = "official" if all(r.meta.get("source_shape") == "bench" for r in records) else "lenient"
    run_info["reading"] = reading
    readings = read_results(list(enumerate((result_row(s) for s in scored), start=1)), reading=reading,
                            lenient=scored)
    return _report(readings, policy.name, out, run=run_info)


def score_file(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        errors.print(f"error: no file {args.file}")
        return 2
    readings = read_results(*read_lines(args.file), reading=args.reading)
    for bad in readings.malformed:
        errors.print(f"{args.file}:{bad.line}: not scored: {bad.error}")
    for row in readings.official.rows:
        if row.note:
            errors.print(f"{args.file}:{row.line}: scored 0: {row.note}")
    for note in readings.official.notes:
        errors.print(f"{args.file}: {note}")
    if not readings.rows:
        errors.print(f"error: {args.file}: no scorable row under the {args.reading} reading "
                     f"({len(readings.malformed)} line(s) not scored); nothing written")
        return 2
    return _report(readings, args.name or args.file.stem, args.out, source=str(args.file))


def _report(readings: Readings, name: str, out: Path, **extra: object) -> int:
    official = readings.official
    notes = [*({"line": s.line, "note": f"{s.error}: the official scorer would crash here"}
               for s in official.skipped if s.crashes),
             *({"line": r.line, "note": r.note} for r in official.rows if r.note),
             *({"line": None, "note": note} for note in official.notes)]
    summary = summarize(readings.rows, readings.malformed, name, readings.reading, layout=official.layout,
                        official_notes=sorted(notes, key=lambda n: n["line"] or 0),
                        reading_differences=len(readings.differences), **extra)
    write_outputs(out, readings.results, summary, official.metrics, readings.differences)
    if summary["per_category"]:
        console.print(category_table(summary))
    note = f", {len(readings.malformed)} line(s) not scored" if readings.malformed else ""
    console.print(f"{summary['total_count']} samples scored ({readings.reading} reading, {official.layout} layout), "
                  f"overall {pct(summary['overall'])}%{note}; outputs in {out}")
    if readings.differences:
        console.print(f"{len(readings.differences)} row(s) scored differently by the official and lenient readings: "
                      f"{out / DIFFERENCES}")
    if notes:
        console.print(f"{len(notes)} place(s) where the official scorer would crash "
                      f"(see official_notes in summary.json)")
    return 0


def compare_runs(args: argparse.Namespace) -> int:
    names = [path.resolve().name for path in args.runs]
    labels = names if len(set(names)) == len(names) else [str(path) for path in args.runs]
    try:
        runs = [(label, load_summary(path)) for label, path in zip(labels, args.runs)]
    except FileNotFoundError as err:
        errors.print(f"error: {err}")
        return 2
    console.print(leaderboard_table(runs))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(leaderboard_markdown(runs))
        console.print(f"comparison written to {args.out}")
    return 0
