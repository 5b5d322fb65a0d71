"""``molgym potential study`` and ``molgym potential campaign``: choosing the reward potential's configuration
(:mod:`molgym.training.study`) and training it across sessions (:mod:`molgym.training.campaign`)."""

from __future__ import annotations

import argparse
from dataclasses import replace

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


def register_campaign(commands) -> None:
    """``molgym potential campaign``: one session of the resumable training campaign."""
    cp = commands.add_parser(
        "campaign",
        help="train the reward potential for one session, resuming from the committed campaign state",
        description="Continues the campaign in --state (default molgym/potentials/campaign: campaign.json and "
        "checkpoint.pt, committed to the repository after each session) for --time-limit, evaluates the model on "
        "the dataset's test files, compares it row by row with the shipped default and the interim goals, and "
        "writes the new checkpoint and the session back to --state. Start a campaign with --variant NAME (a study "
        "variant, normally the study's choice).",
    )
    cp.add_argument("--data", required=True, help="the dataset the campaign trains on (molgym potential dataset)")
    cp.add_argument("--work", required=True, help="work directory (mace checkpoints, logs, model)")
    cp.add_argument("--state", default=None, help="campaign state directory (default: molgym/potentials/campaign)")
    cp.add_argument("--time-limit", type=duration, required=True, help="training wall time (3600, 45m, 2h)")
    cp.add_argument("--variant", default=None, help="start a new campaign with this study variant")
    cp.add_argument("--max-epochs", type=int, default=5000, help="epoch cap of a new campaign (default 5000)")
    cp.add_argument("--lr", type=float, default=None,
                    help="learning rate of a new campaign (default: the variant's, 0.01; lower for a warm start)")
    cp.add_argument("--warm-start", default=None, metavar="MODEL",
                    help="start a new campaign from this trained model's weights ('default': the shipped model)")
    cp.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per idle core)")
    cp.add_argument("--stage-two", action="store_true",
                    help="switch the campaign to mace's stage two (higher energy weight, SWA) from its next epoch; "
                    "recorded in campaign.json, so later sessions continue in stage two without the flag. Given "
                    "again with other --stage-two-weights or --stage-two-lr, it changes them from the next epoch")
    cp.add_argument("--stage-two-weights", type=float, nargs=2, default=(1000.0, 10.0), metavar=("ENERGY", "FORCES"),
                    help="stage two's loss weights (default 1000 10; mace's own are 1000 100; stage one's are the "
                    "variant's, 40 10)")
    cp.add_argument("--stage-two-lr", type=float, default=1e-3,
                    help="stage two's learning rate (default 1e-3; a lower one anneals a campaign that has levelled off)")
    cp.set_defaults(func=cmd_campaign)


def cmd_campaign(args: argparse.Namespace) -> int:
    from molgym.training.campaign import (STATE_DIR, begin_stage_two, check_session_inputs, format_comparison,
                                          run_session, start_campaign)
    from molgym.training.study import parse_variants

    state = args.state or STATE_DIR
    if args.stage_two and args.variant:
        raise ValueError("--stage-two continues a campaign that has trained; start it with --variant first, "
                         "and add --stage-two in a later session")
    if args.stage_two:
        check_session_inputs(state, args.data, args.time_limit)  # before the switch is recorded
        energy, forces = args.stage_two_weights
        two = begin_stage_two(state, energy_weight=energy, forces_weight=forces, lr=args.stage_two_lr)
        weights = (f"energy weight {two['energy_weight']:g}, forces {two['forces_weight']:g}, lr {two['lr']:g}"
                   + (f" from epoch {two['reweighted_from']}" if "reweighted_from" in two else ""))
        print(f"campaign: stage two from epoch {two['from_epoch']} ({weights})")
    if args.variant:
        (variant,) = parse_variants(args.variant)
        if args.lr is not None:
            if not args.lr > 0:
                raise ValueError(f"--lr must be > 0, got {args.lr}")
            variant = replace(variant, lr=args.lr, changes=f"{variant.changes}, learning rate {args.lr:g}")
        warm = args.warm_start
        if warm == "default":
            from molgym.potentials.registry import MODELS_DIR

            warm = MODELS_DIR / "default.model"
        start_campaign(state, variant, args.data, max_epochs=args.max_epochs, warm_start=warm)
    session = run_session(state, args.data, args.work, time_limit=args.time_limit, threads=args.threads)
    print(f"campaign: epochs {session['epoch_before']} -> {session['epoch_after']} in {session['wall_seconds']:.0f} s "
          f"({session['torch_threads']} threads); state written to {state}")
    if "against_shipped" in session:
        print(format_comparison(session["against_shipped"]))
    return 0
