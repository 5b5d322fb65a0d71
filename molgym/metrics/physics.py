"""Energy metrics under a potential: energy, return (atomisation energy), fraction of the best-known return,
relaxation energy drop and heavy-atom RMSD, and a GFN2-xTB referee.

Definitions:

- **energy**: total energy ``E(molecule)`` under the benchmark's potential (eV).
- **return**: the sum of MolGym's per-step rewards for building the molecule, which telescopes to the
  atomisation energy ``sum_i E(atom_i) - E(molecule)`` (eV; larger is better), see :mod:`molgym.reward`.
- **fraction of best-known return** (formula tasks): ``return / best_known[formula]``, with best-known returns
  from ``molgym/data/best_known.json`` (:mod:`molgym.best_known`) for the same potential; ``None`` when no value
  is known.
- **relaxation energy drop**: ``E(generated) - E(relaxed)`` (eV, >= 0 up to optimiser noise) after relaxing
  with the potential (ASE BFGS until max force < ``fmax`` or ``steps``); small means the generator already
  produced a local minimum.
- **relaxation RMSD**: RMSD (Å) between the heavy atoms before and after relaxation, after optimal rigid
  alignment (Kabsch); small means the generated geometry was already near a minimum.
- **referee energy**: atomisation energy per atom (eV/atom) under GFN2-xTB on a seeded sample, so that
  generators tuned against a learned potential are also judged by a quantum-chemical method.
- **plausibility** (:func:`implausibility`): the gate before every energy-based score. Two atoms closer than
  ``max(MIN_DISTANCE, CLOSE_CONTACT_FACTOR x (r_cov,i + r_cov,j))`` are fused: no molecule has such a contact
  (a C≡C triple bond is 0.79 of the C-C covalent sum, H2 1.19 of H-H), the potentials are not trained there
  (molgym's dataset stops at 0.6 Å; learned potentials score fused atoms at returns of thousands of eV), and
  xTB's SCF often fails on them. An implausible molecule gets no energy, return, relaxation or referee score; a
  relaxation that ends implausible gives no relaxation score either.
- **referee relaxation** (:func:`referee_relaxation`), the strain checks of the 3D-generation literature (GEOM-drugs
  revisited, PoseBusters-era evaluations): the molecule is relaxed under GFN2-xTB (ASE BFGS until the largest
  force is below 0.05 eV/Å, about xTB's own "normal" gradient threshold of 1e-3 Eh/bohr, or 300 steps) and
  reports the **relaxation energy** ``E(generated) - E(relaxed)`` in kcal/mol (the literature's unit), the
  **heavy-atom RMSD** (Å, Kabsch-aligned) and whether the **bond graph survives** (the connectivity of
  :func:`molgym.metrics.bonds.connectivity`, hydrogens included, identical before and after). A relaxation whose
  SCF fails, that does not converge within the steps, or that ends implausible gives no score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from ase import Atoms

from molgym.chem import covalent_radius
from molgym.metrics.bonds import connectivity
from molgym.potentials.base import Potential, PotentialError
from molgym.potentials.batching import energies_or_nan
from molgym.reward import MIN_DISTANCE, isolated_atom_energies

__all__ = [
    "atomisation_energies",
    "relax",
    "Relaxation",
    "kabsch_rmsd",
    "best_known_return",
    "implausibility",
    "referee_relaxation",
    "graph_kept",
    "CLOSE_CONTACT_FACTOR",
    "KCAL_PER_MOL",
]

#: Atoms closer than this fraction of the sum of their covalent radii are fused (see :func:`implausibility`).
CLOSE_CONTACT_FACTOR = 0.6
#: One kcal/mol in eV (the unit in which relaxation energies are reported in the literature).
KCAL_PER_MOL = 0.0433641043


def implausibility(atoms: Atoms) -> str | None:
    """Why ``atoms`` is outside the domain where an energy means anything (fused atoms, non-finite coordinates),
    or ``None`` when it is plausible. The one gate of every energy-based metric (module docstring)."""
    positions = np.asarray(atoms.positions, dtype=float)
    if not np.isfinite(positions).all():
        return "non-finite coordinates"
    if len(atoms) < 2:
        return None
    radii = np.array([covalent_radius(int(z)) for z in atoms.numbers])
    limit = np.maximum(MIN_DISTANCE, CLOSE_CONTACT_FACTOR * (radii[:, None] + radii[None, :]))
    delta = positions[:, None, :] - positions[None, :, :]
    distances = np.sqrt(np.einsum("ijk,ijk->ij", delta, delta))
    ratio = distances / limit
    np.fill_diagonal(ratio, np.inf)
    i, j = np.unravel_index(int(ratio.argmin()), ratio.shape)
    if ratio[i, j] < 1.0:
        i, j = min(i, j), max(i, j)
        return (f"fused atoms: {atoms[i].symbol}{i} and {atoms[j].symbol}{j} are {distances[i, j]:.2f} Å apart "
                f"(plausible from {limit[i, j]:.2f} Å)")
    return None


def atomisation_energies(potential: Potential, structures: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
    """``(energies, returns)`` for ``structures`` in one batched call; entries are NaN where the potential fails."""
    if not structures:
        return np.zeros(0), np.zeros(0)
    energies = energies_or_nan(potential, structures)
    atom = isolated_atom_energies(potential, sorted({int(z) for a in structures for z in a.numbers}))
    refs = np.array([sum(atom[int(z)] for z in a.numbers) for a in structures])
    return energies, refs - energies


class Relaxation(NamedTuple):
    """A relaxation's result: the relaxed copy, the optimiser steps, and the energies (eV) at the start and end with
    the final forces (eV/Å), as the optimiser evaluated them (no evaluation beyond the optimiser's own)."""

    atoms: Atoms
    steps: int
    start_energy: float
    energy: float
    forces: np.ndarray


def relax(atoms: Atoms, potential: Potential, fmax: float = 0.05, steps: int = 200,
          fixed: Sequence[int] = ()) -> Relaxation:
    """Relax a copy of ``atoms`` with ASE's BFGS on ``potential`` (see :class:`Relaxation`); the atoms indexed by
    ``fixed`` stay where they are (their forces are zeroed, so ``fmax`` applies to the others)."""
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    work = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    if len(fixed):
        work.set_constraint(FixAtoms(indices=list(fixed)))
    work.calc = potential.as_calculator()
    start = float(work.get_potential_energy())  # cached by the calculator: BFGS's first step reuses it
    opt = BFGS(work, logfile=None)
    opt.run(fmax=fmax, steps=steps)
    # the optimiser ends on a force evaluation of the final positions, so these come from the calculator's cache
    energy, forces = float(work.get_potential_energy()), np.array(work.get_forces())
    return Relaxation(Atoms(numbers=work.numbers, positions=work.positions), int(opt.nsteps), start, energy, forces)


def graph_kept(start: Atoms, relaxed: Atoms) -> bool:
    """Whether a relaxation kept the bond graph (:func:`molgym.metrics.bonds.connectivity`, hydrogens included):
    a relaxation that breaks or makes a bond released a reaction's energy, not only strain."""
    return bool(np.array_equal(connectivity(start), connectivity(relaxed)))


def referee_relaxation(atoms: Atoms, referee: Potential, fmax: float = 0.05, steps: int = 300) -> dict:
    """Relax ``atoms`` under ``referee`` (GFN2-xTB in the benchmark) and measure how far it was from a minimum.

    Returns ``{"referee_relax_energy": kcal/mol, "referee_relax_rmsd": Å (heavy atoms), "referee_graph_kept":
    bool, "referee_relax_steps": int}``, or ``{"referee_relax_failed": reason}`` when there is no score (SCF
    failure, no convergence within ``steps``, an implausible start or end; see the module docstring).
    """
    problem = implausibility(atoms)
    if problem:
        return {"referee_relax_failed": problem}
    try:
        result = relax(atoms, referee, fmax=fmax, steps=steps)
    except (PotentialError, ValueError, np.linalg.LinAlgError) as err:
        return {"referee_relax_failed": f"{type(err).__name__}: {err}"}
    if float(np.sqrt((result.forces ** 2).sum(axis=1)).max()) > fmax:
        return {"referee_relax_failed": f"not converged to {fmax} eV/Å in {steps} steps"}
    relaxed = result.atoms
    problem = implausibility(relaxed)
    if problem:
        return {"referee_relax_failed": f"relaxation left the domain: {problem}"}
    heavy = atoms.numbers > 1
    return {
        "referee_relax_energy": (result.start_energy - result.energy) / KCAL_PER_MOL,
        "referee_relax_rmsd": kabsch_rmsd(atoms.positions[heavy], relaxed.positions[heavy]),
        "referee_graph_kept": graph_kept(atoms, relaxed),
        "referee_relax_steps": result.steps,
    }


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD (Å) between two equally ordered point sets after optimal rotation and translation."""
    a = np.asarray(a, float) - np.mean(a, axis=0)
    b = np.asarray(b, float) - np.mean(b, axis=0)
    if len(a) == 0:
        return 0.0
    u, _s, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(np.mean(np.sum((a @ rot - b) ** 2, axis=1))))


def best_known_return(formula: str, potential: Potential, path: str | Path | None = None) -> float | None:
    """Best-known return (eV) of ``formula`` under ``potential`` from :mod:`molgym.best_known` (the table the
    environments ship in ``molgym/data/best_known.json``); ``None`` when the table, the formula or an entry for
    this potential is missing (values are only valid for the potential they were computed with)."""
    try:
        from molgym import best_known as bk
    except ImportError:
        return None
    inner = getattr(potential, "inner", potential)  # unwrap a CountingPotential
    try:
        entry = bk.best_known(formula, inner) if path is None else bk.best_known(formula, inner, path)
    except (OSError, ValueError, KeyError):
        return None
    return None if entry is None else float(entry.value)
