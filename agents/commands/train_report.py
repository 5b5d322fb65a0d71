"""``molgym train-report RUN_DIR ...``: seeds side by side, a learning table and learning curves.

    molgym train-report runs/learn2 --out runs/learn2/report

Each argument is a ``molgym train`` run folder or a folder of them; runs that differ only in their seed are
grouped (see :mod:`molgym.agents.common.run_report`).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add ``molgym train-report`` to the top-level sub-parsers."""
    p = subparsers.add_parser(
        "train-report",
        help="learning table and curves over seeds from finished molgym train runs",
        description="Group finished `molgym train` runs by setting (seeds together) and write training_report.md "
        "(median over seeds of the final greedy return / best-known, validity, first evaluation at >= 90%, cost) "
        "and learning_curves.png (periodic greedy evaluations, median and min-max band per agent).",
    )
    p.add_argument("runs", nargs="+", help="run folders, or folders holding run folders")
    p.add_argument("--out", required=True, help="where to write training_report.md and learning_curves.png")
    p.add_argument("--referee", default=None,
                   help="also judge each run's final greedy molecules with this potential (e.g. 'xtb'): its return "
                   "/ best-known, validity, relaxation energy drop and RMSD (cached in each run folder)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="LABEL:FORMULA=PATH",
                   help="with --referee, also play this policy file greedily on FORMULA and judge it (repeatable)")
    p.add_argument("--policy", type=_policy_choice, default="final",
                   help="with --referee, which policy of each run to judge: its final one (default), that of its "
                   "best periodic evaluation (greedy validity, then mean return), or mean:K, the mean weights of "
                   "its last K checkpoints (the last two: fixed-bag runs only)")
    p.set_defaults(func=cmd_train_report)


def _policy_choice(text: str) -> str:
    if text in ("final", "best") or (text.startswith("mean:") and text[5:].isdigit() and int(text[5:]) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"expected final, best or mean:K (K a positive integer), got {text!r}")


def cmd_train_report(args: argparse.Namespace) -> int:
    """Write the report and print the learning table."""
    from molgym.agents.common.run_report import write_training_report

    checkpoints = []
    for item in args.checkpoint:
        label, sep, spec = item.partition(":")
        if not sep or "=" not in spec:
            raise ValueError(f"--checkpoint must be LABEL:FORMULA=PATH, got {item!r}")
        checkpoints.append((label, spec))
    if checkpoints and not args.referee:
        raise ValueError("--checkpoint needs --referee (the checkpoints are judged by it)")
    if args.policy != "final" and not args.referee:
        raise ValueError(f"--policy {args.policy} needs --referee (it chooses which policy the referee judges)")
    md, png = write_training_report(args.runs, args.out, referee=args.referee, checkpoints=checkpoints,
                                    policy=args.policy)
    print(f"wrote {md}")
    if png is not None:
        print(f"wrote {png}")
    return 0
