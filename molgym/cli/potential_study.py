"""``molgym potential study``: the reward potential's learning-curve study (:mod:`molgym.training.study`)."""

from __future__ import annotations

import argparse

from molgym.cli import duration


def register_study(commands) -> None:
    """``molgym potential study``: short time-boxed training runs, one setting changed at a time, and fits."""
    st = commands.add_parser(
        "study",
        help="learning-curve study: which MACE configuration gets lowest for the CPU hours there are",
        description="Trains each variant (one setting changed from the shipped configuration: training-set size, "
        "channels, max_L, correlation, dtype, batch size, loss weights, ZBL) for --budget seconds on one torch "
        "thread, evaluates it per category on the validation, training and test sets, fits a power law to its "
        "validation curve and ranks the variants by the error predicted after --cpu-hours. Writes "
        "OUT/summary.md, OUT/summary.json and OUT/learning_curves.png. Resumable: finished variants are skipped.",
    )
    st.add_argument("--data", required=True, help="dataset directory from `molgym potential dataset`")
    st.add_argument("--out", required=True, help="study directory (runs, results, summary)")
    st.add_argument("--variants", default="all", help="comma-separated variant names (default: all; see the list "
                    "in molgym.training.study.VARIANTS)")
    st.add_argument("--budget", type=duration, default=600.0, help="training wall time per variant (default 10m)")
    st.add_argument("--parallel", type=int, default=1, help="variants trained at once, one thread each (default 1)")
    st.add_argument("--cpu-hours", type=float, default=10.0,
                    help="CPU hours the predictions and the choice are made for (default 10)")
    st.set_defaults(func=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    from molgym.training.study import parse_variants, run_study

    variants = parse_variants(args.variants)
    summary = run_study(args.data, args.out, variants, budget=args.budget, parallel=args.parallel,
                        cpu_hours=args.cpu_hours)
    print(f"wrote {args.out}/summary.md; choice for {args.cpu_hours:g} CPU-hours: {summary['choice']}")
    return 1 if summary["failed"] else 0
