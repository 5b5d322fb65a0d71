"""Fit, calibrate and assess the last-layer committee of a MACE model on a molgym dataset.

``fit_dataset_committee(model, data)`` (CLI: ``molgym potential committee``):

1. fits ``members`` linear heads on bootstrap resamples of ``DATA/train.xyz`` (plus any extra labelled files,
   e.g. the structures a refinement loop harvested) to the model's residual against the stored GFN2-xTB labels
   (:func:`molgym.potentials.committee.fit_committee`);
2. calibrates the scale on ``DATA/valid.xyz`` (RMS σ = RMS energy error);
3. assesses it on the build trajectories of ``DATA/test.xyz`` (the structures
   :func:`molgym.potentials.evaluation.build_reward_errors` uses: ``category == "build"`` with a ``trajectory``):
   Spearman rank correlation between σ and |E_model - E_xTB| per structure, and between the step uncertainty
   and the per-step reward error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

__all__ = ["fit_dataset_committee", "calibration_report", "build_trajectory_structures"]


def build_trajectory_structures(structures: Sequence[Atoms]) -> list[Atoms]:
    """The structures of complete-trajectory builds (as the evaluation's per-step reward errors select them)."""
    return [a for a in structures if a.info.get("category") == "build" and "trajectory" in a.info]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def calibration_report(potential, structures: Sequence[Atoms]) -> dict:
    """How well ``potential``'s uncertainty ranks its errors on build trajectories (see module docstring)."""
    from molgym.potentials.evaluation import stored_labels

    build = build_trajectory_structures(structures)
    if not build:
        raise ValueError("no build trajectories (category 'build' with a 'trajectory') among the structures")
    reference = stored_labels(build)[0]
    energies, members = potential.committee_energies(build)
    scale = potential.uncertainty_scale
    sigma = scale * members.std(axis=1)
    err = np.abs(energies - reference)
    # per step: reward error vs the spread of the members' rewards (consecutive prefixes of one trajectory)
    by_traj: dict[str, dict[int, int]] = {}
    for i, atoms in enumerate(build):
        by_traj.setdefault(str(atoms.info["trajectory"]), {})[int(atoms.info["step"])] = i
    step_sigma, step_err = [], []
    dev = members - energies[:, None]
    for steps in by_traj.values():
        idx = [steps.get(k) for k in range(1, max(steps) + 1)]
        if None in idx:
            continue
        prev_dev, prev_err = np.zeros(dev.shape[1]), 0.0
        for i in idx:
            e = energies[i] - reference[i]
            step_sigma.append(scale * float(np.std(dev[i] - prev_dev)))
            step_err.append(abs(e - prev_err))
            prev_dev, prev_err = dev[i], e
    step_sigma, step_err = np.array(step_sigma), np.array(step_err)
    evaluated = step_sigma > 0  # the first atom of a trajectory is exact under both (sigma 0, error 0)
    return {
        "structures": len(build),
        "spearman_energy": _spearman(sigma, err),
        "steps": int(len(step_sigma)),
        "spearman_step": _spearman(step_sigma[evaluated], step_err[evaluated]),
        "steps_evaluated": int(evaluated.sum()),
        "energy_mae_eV": float(np.mean(err)),
        "sigma_mean_eV": float(np.mean(sigma)),
        "sigma_rms_eV": float(np.sqrt(np.mean(sigma**2))),
        "error_rms_eV": float(np.sqrt(np.mean(err**2))),
    }


def fit_dataset_committee(
    model: str | os.PathLike,
    data: str | os.PathLike,
    members: int = 8,
    ridge: float = 1e-3,
    seed: int = 0,
    extra_train: Sequence[str | os.PathLike] = (),
    device: str = "cpu",
    progress: bool = True,
):
    """Fit, calibrate and assess a committee for MACE model file ``model`` on dataset ``data``.

    Returns ``(potential, report)``: a :class:`~molgym.potentials.committee.CommitteeMACEPotential` (save its
    ``heads``) and a JSON-ready report (fit settings, calibration scale, validation and build-trajectory figures).
    """
    from molgym.io import read_structures
    from molgym.potentials.committee import CommitteeMACEPotential, calibrate, fit_committee
    from molgym.potentials.evaluation import stored_labels
    from molgym.potentials.mace import MACEPotential

    data = Path(data)
    for name in ("train.xyz", "valid.xyz", "test.xyz"):
        if not (data / name).is_file():
            raise FileNotFoundError(f"dataset {data} has no {name}; build it with `molgym potential dataset`")
    for path in extra_train:
        if not Path(path).is_file():
            raise FileNotFoundError(f"extra training file {str(path)!r} does not exist")

    def say(msg: str) -> None:
        if progress:
            print(f"[committee] {msg}", flush=True)

    start = time.time()
    base = MACEPotential(model, device=device)
    train = read_structures(data / "train.xyz")
    for path in extra_train:
        train += read_structures(path)
    say(f"fitting {members} heads on {len(train)} structures")
    heads = fit_committee(base, train, stored_labels(train)[0], members=members, ridge=ridge, seed=seed)
    potential = CommitteeMACEPotential(base.model, heads, device=device, name=base.name)
    valid = read_structures(data / "valid.xyz")
    valid_ref = stored_labels(valid)[0]
    scale = calibrate(potential, valid, valid_ref)
    energies, sigma = potential.energies_and_uncertainties(valid)
    err = np.abs(energies - valid_ref)
    say(f"calibration scale {scale:.3f} (valid: RMS error {np.sqrt(np.mean(err**2)):.3f} eV)")
    test = read_structures(data / "test.xyz")
    build = calibration_report(potential, test)
    say(f"build trajectories: Spearman(σ, |error|) = {build['spearman_energy']:.3f} over {build['structures']} "
        f"structures; per step {build['spearman_step']:.3f}")
    report = {
        "method": "last-layer bootstrap committee (molgym.potentials.committee)",
        "model": str(model),
        "members": members,
        "ridge": ridge,
        "seed": seed,
        "train_structures": len(train),
        "extra_train": [str(p) for p in extra_train],
        "calibration_scale": scale,
        "valid": {"structures": len(valid), "spearman": _spearman(sigma, err),
                  "error_rms_eV": float(np.sqrt(np.mean(err**2))), "sigma_rms_eV": float(np.sqrt(np.mean(sigma**2)))},
        "build_trajectories": build,
        "seconds": round(time.time() - start, 1),
    }
    potential.heads.meta.update({"calibration": report})
    return potential, report
