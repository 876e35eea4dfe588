"""`spacevista` command line: train | eval | submit | jobs | plan | data | rewards | study | export | checkpoint.

`train` hands its arguments to Hydra (overrides, `-m` multiruns, `--cfg job`); the other
subcommands are argparse. Heavy imports happen inside each subcommand, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spacevista",
        description="RL post-training for all-scale visual spatial reasoning (SpaceVista).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="run the training job (Hydra overrides follow, e.g. rollout.n=8)", add_help=False)
    from spacevista.datasets.cli import add_subparser as add_data
    from spacevista.rewards.cli import add_subparser as add_rewards
    from spacevista.eval.cli import add_subparser as add_eval
    add_data(sub)
    add_rewards(sub)
    add_eval(sub)
    from spacevista.cluster.submit import add_jobs_subparser, add_submit_subparser
    add_submit_subparser(sub)
    add_jobs_subparser(sub)
    from spacevista.cluster.plan_cli import add_subparser as add_plan
    add_plan(sub)
    from spacevista.study.cli import add_subparser as add_study
    add_study(sub)
    from spacevista.export import add_subparsers as add_export
    add_export(sub)
    return parser


def train_args(args: list[str]) -> list[str]:
    """`spacevista train` arguments for Hydra. Hydra makes a new timestamped output directory for every
    run; when `run_dir=` names the run's own directory, Hydra writes there too, so a run (and every
    `resume=auto` of it) leaves no other, empty directory behind. Multiruns keep Hydra's sweep layout."""
    if any(a in ("-m", "--multirun") or a.startswith("hydra.run.dir=") for a in args):
        return args
    given = [a.split("=", 1)[1] for a in args if a.startswith("run_dir=")]
    return [*args, f"hydra.run.dir={given[-1]}"] if given and given[-1] else args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from spacevista.train import hydra_main
        return hydra_main(train_args(argv[1:]))
    args = _parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
