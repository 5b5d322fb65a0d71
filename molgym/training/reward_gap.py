"""Reward hacking, measured: each final molecule's return under the learned potential vs under GFN2-xTB.

An episode's undiscounted return telescopes to the atomisation energy of the final canvas,
``R = sum_a E(a) - E(canvas)`` (:func:`molgym.reward.prefix_rewards` sums to it), so the return under any
potential is one energy evaluation of the final molecule plus its isolated atoms. The *gap*
``R_model - R_xTB`` is how much the model over-rewards the molecule: large positive gaps on molecules an optimiser
found are the reward hacking the uncertainty and the refinement are meant to remove.

Final molecules come from any of: generators run under the model (``random_search``, ``rl_policy`` with a trained
policy...), and extended-XYZ files (e.g. the final molecules ``molgym train`` writes).

    python -m molgym.training.reward_gap --potential default --formula C7H10O2 --formula C7H8N2O2 \\
        --generator random_search --samples 16 --out runs/gap-default
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

__all__ = ["returns", "reward_gaps", "summarise", "main"]


def returns(potential, molecules: Sequence[Atoms]) -> np.ndarray:
    """Episode return of building each molecule under ``potential``: ``sum E(atom) - E(molecule)`` (eV).

    A molecule the potential cannot evaluate (SCF failure) gets NaN. The definition is
    :func:`molgym.metrics.physics.atomisation_energies`'s.
    """
    from molgym.metrics.physics import atomisation_energies

    return atomisation_energies(potential, list(molecules))[1]


def reward_gaps(potential, molecules: Sequence[Atoms], reference=None) -> list[dict]:
    """Per molecule: formula, source, return under ``potential`` and under ``reference`` (default GFN2-xTB), the
    gap, and the potential's uncertainty when it has one."""
    from molgym.potentials import load_potential

    reference = load_potential("xtb") if reference is None else load_potential(reference)
    r_model = returns(potential, molecules)
    r_ref = returns(reference, molecules)
    sigma = (potential.uncertainties(list(molecules)) if getattr(potential, "provides_uncertainty", False)
             else np.full(len(molecules), np.nan))
    rows = []
    for i, mol in enumerate(molecules):
        d = np.linalg.norm(mol.positions[:, None] - mol.positions[None], axis=-1) + np.diag(np.full(len(mol), np.inf))
        rows.append({"formula": mol.get_chemical_formula(), "source": str(mol.info.get("source", "")),
                     "min_distance_A": float(d.min()) if len(mol) > 1 else float("nan"),
                     "return_model_eV": float(r_model[i]), "return_reference_eV": float(r_ref[i]),
                     "gap_eV": float(r_model[i] - r_ref[i]), "sigma_eV": float(sigma[i])})
    return rows


def summarise(rows: Sequence[dict]) -> dict:
    """Median and max |gap|, how many exceed 1 eV, how many could not be labelled."""
    gaps = np.array([r["gap_eV"] for r in rows], dtype=float)
    ok = np.isfinite(gaps)
    mind = np.array([r.get("min_distance_A", np.nan) for r in rows], dtype=float)
    collapsed = int(np.sum(mind < 0.6))
    if not ok.any():
        return {"molecules": len(rows), "unlabelled": int((~ok).sum()), "min_distance_below_0.6A": collapsed}
    a = np.abs(gaps[ok])
    # a molecule GFN2-xTB cannot label (SCF failure) is left out of the gap figures and counted as unlabelled;
    # in practice these are collapsed structures (atoms far closer than bonds)
    out = {"molecules": len(rows), "unlabelled": int((~ok).sum()), "median_abs_gap_eV": float(np.median(a)),
           "mean_gap_eV": float(np.mean(gaps[ok])), "max_abs_gap_eV": float(a.max()),
           "over_1eV": int((a > 1.0).sum()), "min_distance_below_0.6A": collapsed}
    sig = np.array([r["sigma_eV"] for r in rows], dtype=float)[ok]
    if np.isfinite(sig).sum() >= 3:
        from scipy.stats import spearmanr

        out["spearman_sigma_abs_gap"] = float(spearmanr(sig, a).statistic)
    return out


def _collect(args, potential, say) -> list[Atoms]:
    from molgym.io import read_structures

    molecules: list[Atoms] = []
    seen: set[bytes] = set()
    for path in args.molecules:
        for mol in read_structures(path):
            key = mol.numbers.tobytes() + np.round(mol.positions, 6).tobytes()
            if key in seen:  # e.g. repeated greedy episodes of a fixed-bag task: count each molecule once
                continue
            seen.add(key)
            info = {"source": str(path)}
            if "mode" in mol.info:
                info["source"] += f":{mol.info['mode']}"
            molecules.append(Atoms(numbers=mol.numbers, positions=mol.positions, info=info))
    if args.generator:
        from molgym.benchmark import get_generator, get_task

        options = json.loads(args.generator_options) if args.generator_options else {}
        for name in args.generator:
            generator = get_generator(name, potential=potential, **options.get(name, {}))
            for k, formula in enumerate(args.formula):
                t = time.time()
                for mol in generator.generate(get_task(formula), args.samples, seed=args.seed * 1000 + k):
                    molecules.append(Atoms(numbers=mol.numbers, positions=mol.positions,
                                           info={"source": f"{name}:{formula}"}))
                say(f"{name} {formula}: {args.samples} molecules in {time.time() - t:.0f} s")
    return molecules


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m molgym.training.reward_gap", description=__doc__.split("\n\n")[0])
    p.add_argument("--potential", default="default", help="the learned potential (spec or MACE model file)")
    p.add_argument("--committee", default=None, help="committee .npz for a MACE model file (adds sigma)")
    p.add_argument("--correct", action="store_true", help="add the committee's fitted mean to the energies")
    p.add_argument("--formula", action="append", default=[], help="formula for generator samples (repeatable)")
    p.add_argument("--generator", action="append", default=[], help="generator run under the potential (repeatable)")
    p.add_argument("--generator-options", default=None, help='JSON per generator, e.g. \'{"random_search": {"steps": 200}}\'')
    p.add_argument("--samples", type=int, default=8, help="molecules per formula and generator (default 8)")
    p.add_argument("--molecules", action="append", default=[], help="extended XYZ of final molecules (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory (gaps.json, molecules.xyz)")
    args = p.parse_args(argv)

    from molgym.io import write_json, write_xyz
    from molgym.potentials import load_potential

    if args.samples < 1:
        raise SystemExit(f"--samples must be >= 1, got {args.samples}")
    if args.generator and not args.formula:
        raise SystemExit("--generator needs at least one --formula")
    if not args.generator and not args.molecules:
        raise SystemExit("nothing to measure: give --generator with --formula, or --molecules FILE")
    for path in args.molecules:
        if not Path(path).is_file():
            raise SystemExit(f"--molecules file {path!r} does not exist")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    options = {"committee": args.committee} if args.committee else {}
    if args.correct:
        options["correct"] = True
    potential = load_potential(args.potential, device="cpu", **options)

    def say(msg: str) -> None:
        print(f"[reward-gap] {msg}", flush=True)

    molecules = _collect(args, potential, say)
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
                                   "molecules": rows, "command": " ".join(sys.argv)})
    say(json.dumps(summary))
    for k, v in per_source.items():
        say(f"{k}: {json.dumps(summarise(v))}")
    say(f"wrote {out / 'gaps.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
