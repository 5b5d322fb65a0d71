"""``molgym potential refine``: hyperactive learning of the reward potential (:mod:`molgym.training.refine`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register_refine(commands) -> None:
    """``molgym potential refine``: the HAL loop (sample, select, label, refit)."""
    rf = commands.add_parser(
        "refine",
        help="hyperactive learning: sample where the committee is uncertain, label with xTB, refit, repeat",
        description="A HAL loop (molgym.training.refine): each round samples candidates (Langevin MD biased "
        "toward high committee uncertainty; random-structure-search relaxation paths under the model; optional "
        "generator samples, e.g. rl_policy agent rollouts, and their build prefixes), labels the most uncertain with GFN2-xTB, fine-tunes the model and refits the "
        "committee, and logs a JSON line (OUT/log.jsonl). Stops after --rounds or when the uncertainty of fresh "
        "samples stops falling. Resumable: rerun the same command; finished rounds are never redone.",
    )
    rf.add_argument("--data", required=True, help="dataset directory (train/valid/test.xyz, manifest)")
    rf.add_argument("--train-dir", required=True, help="training run to start from (its checkpoints and model)")
    rf.add_argument("--committee", default=None, help="committee .npz of the starting model (default: fit one)")
    rf.add_argument("--out", required=True, help="output directory (rounds, log.jsonl)")
    rf.add_argument("--rounds", type=int, default=3)
    rf.add_argument("--formula", action="append", default=None,
                    help="formula for generator samples (repeatable; default C7H10O2 and C7H8N2O2)")
    rf.add_argument("--relaxations", type=int, default=8,
                    help="random-structure-search relaxation paths per formula per round (default 8)")
    rf.add_argument("--relax-steps", type=int, default=200, help="BFGS steps per relaxation (default 200)")
    rf.add_argument("--generator", action="append", default=None, help="generator whose samples are harvested "
                    "(repeatable; default none; e.g. rl_policy with a checkpoint); options with --generator-options")
    rf.add_argument("--generator-options", default=None,
                    help='JSON: options per generator, e.g. \'{"random_search": {"steps": 100}}\'')
    rf.add_argument("--samples", type=int, default=8, help="samples per formula per generator and round (default 8)")
    rf.add_argument("--md-starts", type=int, default=8, help="biased MD trajectories per round (default 8)")
    rf.add_argument("--md-steps", type=int, default=60)
    rf.add_argument("--temperature", type=float, default=500.0, help="MD temperature in K (default 500)")
    rf.add_argument("--tau", type=float, default=1.0, help="bias strength: MD runs on E - tau*sigma (default 1)")
    rf.add_argument("--select", type=int, default=64, help="structures labelled per round (default 64)")
    rf.add_argument("--xtb-relax-frames", type=int, default=0,
                    help="also label this many frames of the GFN2-xTB relaxation of each selected generator "
                         "molecule (default 0: off), so the refit sees its strain energy, not only its energy")
    rf.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per round (default 1)")
    rf.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default 1e-3)")
    rf.add_argument("--harvest-weight", type=int, default=4,
                    help="times each harvested structure enters the fine-tuning set (default 4)")
    rf.add_argument("--members", type=int, default=8)
    rf.add_argument("--tolerance", type=float, default=0.02,
                    help="stop when fresh-sample mean sigma falls by less than this fraction (default 0.02)")
    rf.add_argument("--seed", type=int, default=0)
    rf.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    rf.add_argument("--device", default="cpu")
    rf.set_defaults(func=cmd_refine)


def cmd_refine(args: argparse.Namespace) -> int:
    from molgym.training.refine import RefineConfig, refine

    generator_options = None
    if args.generator_options:
        try:
            generator_options = json.loads(args.generator_options)
        except json.JSONDecodeError as err:
            raise ValueError(f"--generator-options is not valid JSON: {err}") from None
        if not isinstance(generator_options, dict) or not all(isinstance(v, dict) for v in generator_options.values()):
            raise ValueError('--generator-options must map generator names to option objects, e.g. '
                             '\'{"random_search": {"steps": 100}}\'')
    config = RefineConfig(
        data=args.data, train_dir=args.train_dir, committee=args.committee, rounds=args.rounds,
        formulas=tuple(args.formula) if args.formula else RefineConfig.formulas,
        generators=tuple(args.generator) if args.generator else RefineConfig.generators,
        samples_per_formula=args.samples if args.generator else 0, relaxations_per_formula=args.relaxations,
        relax_steps=args.relax_steps, md_starts=args.md_starts, md_steps=args.md_steps,
        temperature_K=args.temperature, tau=args.tau, select=args.select, xtb_relax_frames=args.xtb_relax_frames,
        epochs=args.epochs,
        harvest_weight=args.harvest_weight, lr=args.lr, members=args.members, tolerance=args.tolerance, seed=args.seed,
        threads=args.threads, device=args.device,
    )
    if generator_options is not None:
        config.generator_options = generator_options
    config.validate()  # every bad input fails here, before any sampling or training
    records = refine(config, args.out)
    for r in records:
        print(f"round {r['round']}: {r['labelled']} labelled ({r['scf_failures']} SCF failures), fresh sigma "
              f"{r['fresh_sigma_before']['mean']:.3f} -> {r['fresh_sigma_after']['mean']:.3f} eV, test MAE "
              f"{r['test_before']['energy_mae_meV']:.0f} -> {r['test_after']['energy_mae_meV']:.0f} meV")
    print(f"log: {Path(args.out) / 'log.jsonl'}")
    return 0
