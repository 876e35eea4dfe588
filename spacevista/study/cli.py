"""`spacevista study --preset NAME`: a named grid of variants x seeds, trained and evaluated in
parallel on Ray, then one report (markdown table, JSON, PNG, reproduce commands)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from rich.console import Console

from spacevista.study.presets import PRESETS

console = Console(stderr=True)


def add_subparser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("study", help="run one of the paper's ablations over seeds and report it")
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS), help="which study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--out", type=Path, help="report directory (default runs/study/<preset>)")
    parser.add_argument("--runs", type=Path, help="where trials' run directories go (default OUT/runs); studies "
                                                  "sharing it reuse identical training runs (rl and router do)")
    parser.add_argument("--budget", "--steps", dest="budget", type=int, help="RL steps per run (default: the config's)")
    parser.add_argument("--sft-steps", type=int, help="SFT warm-up steps per run (default: the config's)")
    parser.add_argument("--parallel", type=int, default=1, help="trials at once on the local Ray (default 1)")
    parser.add_argument("--address", default="", help="a running Ray cluster to fan trials out on (default: local)")
    parser.add_argument("--trial-cpus", type=float, default=1.0, help="CPUs each trial's task claims on a cluster")
    parser.add_argument("--eval-arg", action="append", default=[], metavar="ARG",
                        help="extra `eval run` argument, e.g. --eval-arg=--max-tokens=64 (repeatable)")
    parser.add_argument("--reading", choices=("lenient", "summary"), default="lenient",
                        help="lenient: each result row's lenient score (our parsers: units, MRA; default); summary: "
                             "the eval summary's numbers (the official scorer's reading for SpaceVista-Bench entries)")
    parser.add_argument("--report-only", action="store_true", help="write the report from finished trials only")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. rollout.n=8")
    parser.set_defaults(func=run_study)
    return parser


def run_study(args: argparse.Namespace) -> int:
    from spacevista.configs.checks import ConfigError
    from spacevista.configs.loader import compose
    from spacevista.study.report import analyse, write_report
    from spacevista.study.runner import StudyOptions, plan_trials, run_trials, variant_summaries

    study = PRESETS[args.preset]
    out = (args.out or Path("runs/study") / study.name).resolve()
    runs = (args.runs or out / "runs").resolve()
    common = [*args.overrides, *([f"steps={args.budget}"] if args.budget else []),
              *([f"learner.sft.steps={args.sft_steps}"] if args.sft_steps is not None else [])]
    options = StudyOptions(seeds=tuple(args.seeds), overrides=tuple(common), parallel=args.parallel,
                           address=args.address, trial_cpus=args.trial_cpus, eval_args=tuple(args.eval_arg))
    trials = plan_trials(study, options, runs)
    try:
        for trial in {t.key: t for t in trials}.values():
            compose(list(trial.overrides))  # a bad override fails here, before any run starts
    except (ConfigError, Exception) as err:
        console.print(f"error: {err}")
        return 2
    console.print(f"study {study.name}: {len(study.variants)} variants x {len(options.seeds)} seeds = "
                  f"{len(trials)} training runs in {runs}")
    done = trials if args.report_only else run_trials(trials, options, progress=console.print)
    analysis = analyse(study, variant_summaries(study, done), args.reading)
    command = shlex.join(["spacevista", "study", "--preset", study.name, "--seeds", *map(str, options.seeds),
                          "--out", str(out), "--runs", str(runs),
                          *([f"--budget={args.budget}"] if args.budget else []),
                          *([f"--sft-steps={args.sft_steps}"] if args.sft_steps is not None else []),
                          f"--reading={args.reading}", *(f"--eval-arg={a}" for a in args.eval_arg), *args.overrides])
    commands = ["# the whole study", command, "# each run, as the study ran it",
                *(c for t in sorted(done, key=lambda t: (t.key, t.seed)) for c in _commands(t))]
    path = write_report(out, analysis, commands, options.seeds)
    console.print(path.read_text())
    console.print(f"report: {path} (+ report.json, report.png)")
    return 0


def _commands(trial) -> list[str]:
    """The trial's commands as it recorded them (trial.json), also for --report-only."""
    import json

    if trial.commands:
        return trial.commands
    recorded = Path(trial.run_dir) / "trial.json"
    return json.loads(recorded.read_text())["commands"] if recorded.is_file() else []
