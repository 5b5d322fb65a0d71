"""``molgym best-known`` and ``molgym reward-gap``: the best return known for a formula under a potential, and how
far a learned potential's returns are from GFN2-xTB's on molecules an optimiser built.

The definitions live in :mod:`molgym.best_known` and :mod:`molgym.training.reward_gap`; this module only parses
the command line and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["register", "cmd_best_known", "cmd_reward_gap"]


def register(subparsers) -> None:
    from molgym.best_known import BEST_KNOWN_PATH

    p = subparsers.add_parser(
        "best-known", help="compute best-known returns (QM9 isomers and candidates relaxed) and store them",
        description="Compute the best-known return of each formula under a potential: every QM9 isomer plus the "
                    "candidate SMILES of that formula, single points, BFGS relaxation of the lowest, and merge "
                    "the values (with provenance) into the table.",
    )
    p.add_argument("--potential", default="default", help="potential spec (default, xtb, pm6, a .model)")
    p.add_argument("--formulas", nargs="+", required=True, help="formulas, e.g. CH4O C3H8O")
    p.add_argument("--top-k", type=int, default=16, help="relax this many lowest-energy isomers")
    p.add_argument("--fmax", type=float, default=0.05, help="BFGS force threshold (eV/A)")
    p.add_argument("--steps", type=int, default=300, help="BFGS step limit")
    p.add_argument("--out", default=str(BEST_KNOWN_PATH), help="table to update (JSON; default: the shipped one)")
    p.add_argument("--candidates", nargs="*", default=[],
                   help="extra candidate SMILES (each formula takes those that match it); needed for formulas "
                        "QM9 lacks")
    p.set_defaults(func=cmd_best_known)

    p = subparsers.add_parser(
        "reward-gap", help="returns under a learned potential vs GFN2-xTB on generated molecules",
        description="Each final molecule's return under the learned potential against its GFN2-xTB return (the "
                    "gap is how much the potential over-rewards it), for generator samples and/or molecule files.",
    )
    p.add_argument("--potential", default="default", help="the learned potential (spec or MACE model file)")
    p.add_argument("--committee", default=None, help="committee .npz for a MACE model file (adds sigma)")
    p.add_argument("--correct", action="store_true", help="add the committee's fitted mean to the energies")
    p.add_argument("--formula", action="append", default=[], help="formula for generator samples (repeatable)")
    p.add_argument("--generator", action="append", default=[], help="generator run under the potential (repeatable)")
    p.add_argument("--generator-options", default=None,
                   help='JSON per generator, e.g. \'{"random_search": {"steps": 200}}\'')
    p.add_argument("--samples", type=int, default=8, help="molecules per formula and generator (default 8)")
    p.add_argument("--molecules", action="append", default=[], help="extended XYZ of final molecules (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory (gaps.json, molecules.xyz)")
    p.set_defaults(func=cmd_reward_gap)


def cmd_best_known(args: argparse.Namespace) -> int:
    from molgym.best_known import candidate_formula, compute_best_known, update_table
    from molgym.chem import format_formula, parse_formula
    from molgym.cli import CLIError
    from molgym.potentials import load_potential

    formulas = [format_formula(parse_formula(f)) for f in args.formulas]  # bad formulas fail before any work
    formula_of = {c: candidate_formula(c) for c in args.candidates}  # a bad SMILES fails here, before any work
    stray = [c for c in args.candidates if formula_of[c] not in formulas]
    if stray:
        raise CLIError(f"candidate(s) {', '.join(map(repr, stray))} match none of the formulas {', '.join(formulas)}")
    potential = load_potential(args.potential)
    failures = 0
    for formula in formulas:
        matching = [c for c in args.candidates if formula_of[c] == formula]
        try:
            entry = compute_best_known(formula, potential, top_k=args.top_k, fmax=args.fmax, steps=args.steps,
                                       candidates=matching)
        except (ValueError, RuntimeError) as err:
            print(f"[best-known] {formula}: skipped: {err}", file=sys.stderr, flush=True)
            failures += 1
            continue
        entry["command"] = (
            f"molgym best-known --potential {args.potential} --formulas {formula} "
            f"--top-k {args.top_k} --fmax {args.fmax} --steps {args.steps}"
            + (f" --candidates {' '.join(repr(c) for c in matching)}" if matching else "")
        )
        update_table([entry], args.out)  # written after every formula: an interrupted run keeps what it did
        print(f"[best-known] {formula}: {entry['return']:.4f} eV ({entry['best_smiles']}) -> {args.out}", flush=True)
    return 1 if failures == len(formulas) else 0


def cmd_reward_gap(args: argparse.Namespace) -> int:
    from molgym.cli import CLIError

    if args.samples < 1:
        raise CLIError(f"--samples must be >= 1, got {args.samples}")
    if args.generator and not args.formula:
        raise CLIError("--generator needs at least one --formula")
    if not args.generator and not args.molecules:
        raise CLIError("nothing to measure: give --generator with --formula, or --molecules FILE")
    for path in args.molecules:
        if not Path(path).is_file():
            raise CLIError(f"--molecules file {path!r} does not exist")
    try:
        options = json.loads(args.generator_options) if args.generator_options else {}
    except ValueError as err:
        raise CLIError(f"--generator-options is not JSON: {err}") from None

    import torch

    from molgym.io import write_json, write_xyz
    from molgym.potentials import load_potential
    from molgym.training.reward_gap import collect_molecules, reward_gaps, summarise

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_options = {"committee": args.committee} if args.committee else {}
    if args.correct:
        load_options["correct"] = True
    potential = load_potential(args.potential, device="cpu", **load_options)

    def say(msg: str) -> None:
        print(f"[reward-gap] {msg}", flush=True)

    molecules = collect_molecules(potential, args.molecules, args.generator, args.formula, options, args.samples,
                                  args.seed, say)
    rows = reward_gaps(potential, molecules)
    summary = summarise(rows)
    per_source: dict[str, list[dict]] = {}
    for r in rows:
        per_source.setdefault(r["source"].split(":prefix")[0], []).append(r)
    out = Path(args.out)
    for mol, r in zip(molecules, rows):
        mol.info.update(r)
    write_xyz(out / "molecules.xyz", molecules)
    write_json(out / "gaps.json", {"potential": potential.name, "potential_spec": args.potential,
                                   "committee": args.committee, "corrected": args.correct, "summary": summary,
                                   "per_source": {k: summarise(v) for k, v in per_source.items()},
                                   "molecules": rows, "command": " ".join(["molgym", *sys.argv[1:]])})
    say(json.dumps(summary))
    for k, v in per_source.items():
        say(f"{k}: {json.dumps(summarise(v))}")
    say(f"wrote {out / 'gaps.json'}")
    return 0
