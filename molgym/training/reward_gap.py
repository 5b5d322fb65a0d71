"""Reward hacking, measured: each final molecule's return under the learned potential vs under GFN2-xTB.

An episode's undiscounted return telescopes to the atomisation energy of the final canvas,
``R = sum_a E(a) - E(canvas)`` (:func:`molgym.reward.prefix_rewards` sums to it), so the return under any
potential is one energy evaluation of the final molecule plus its isolated atoms. The *gap*
``R_model - R_xTB`` is how much the model over-rewards the molecule: large positive gaps on molecules an optimiser
found are the reward hacking the uncertainty and the refinement are meant to remove.

Final molecules come from any of: generators run under the model (``random_search``, ``rl_policy`` with a trained
policy...), and extended-XYZ files (e.g. the final molecules ``molgym train`` writes).

    molgym reward-gap --potential default --formula C7H10O2 --formula C7H8N2O2 \\
        --generator random_search --samples 16 --out runs/gap-default
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from ase import Atoms

if TYPE_CHECKING:
    from molgym.potentials.base import Potential

__all__ = ["returns", "reward_gaps", "summarise", "collect_molecules"]


def returns(potential, molecules: Sequence[Atoms]) -> np.ndarray:
    """Episode return of building each molecule under ``potential``: ``sum E(atom) - E(molecule)`` (eV).

    A molecule the potential cannot evaluate (SCF failure) gets NaN. The definition is
    :func:`molgym.metrics.physics.atomisation_energies`'s.
    """
    from molgym.metrics.physics import atomisation_energies

    return atomisation_energies(potential, list(molecules))[1]


def reward_gaps(potential: Potential, molecules: Sequence[Atoms], reference: str | Potential | None = None
                ) -> list[dict]:
    """Per molecule: formula, source, return under ``potential`` and under ``reference`` (default GFN2-xTB), the
    gap, and the potential's uncertainty when it has one (NaN when it has none)."""
    from molgym.potentials import load_potential

    reference = load_potential("xtb") if reference is None else load_potential(reference)
    r_model = returns(potential, molecules)
    r_ref = returns(reference, molecules)
    sigma = (potential.uncertainties(list(molecules)) if potential.supports("uncertainties")
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


def collect_molecules(potential, paths: Sequence[str], generators: Sequence[str], formulas: Sequence[str],
                      options: dict, samples: int, seed: int, say=print) -> list[Atoms]:
    """The molecules to measure: each distinct structure of the extended-XYZ files at ``paths``, then ``samples``
    molecules per formula from each generator run under ``potential`` (``options``: generator -> options)."""
    from molgym.io import read_structures

    molecules: list[Atoms] = []
    seen: set[bytes] = set()
    for path in paths:
        for mol in read_structures(path):
            key = mol.numbers.tobytes() + np.round(mol.positions, 6).tobytes()
            if key in seen:  # e.g. repeated greedy episodes of a fixed-bag task: count each molecule once
                continue
            seen.add(key)
            info = {"source": str(path)}
            if "mode" in mol.info:
                info["source"] += f":{mol.info['mode']}"
            molecules.append(Atoms(numbers=mol.numbers, positions=mol.positions, info=info))
    if generators:
        from molgym.benchmark import get_generator, get_task

        for name in generators:
            generator = get_generator(name, potential=potential, **options.get(name, {}))
            for k, formula in enumerate(formulas):
                t = time.time()
                for mol in generator.generate(get_task(formula), samples, seed=seed * 1000 + k):
                    molecules.append(Atoms(numbers=mol.numbers, positions=mol.positions,
                                           info={"source": f"{name}:{formula}"}))
                say(f"{name} {formula}: {samples} molecules in {time.time() - t:.0f} s")
    return molecules
