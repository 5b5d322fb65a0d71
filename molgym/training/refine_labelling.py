"""Steps 2-3 of a refinement round, *select* and *label*: the most uncertain distinct candidates, labelled
with GFN2-xTB (and, optionally, frames of the GFN2-xTB relaxation of generator molecules)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from molgym.data.labels import labelled_copy
from molgym.training.refine_sampling import _too_close


def _fingerprint(atoms: Atoms) -> tuple:
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    return (atoms.get_chemical_formula(), np.sort(d[np.triu_indices(len(atoms), 1)]))


def select_uncertain(candidates: Sequence[Atoms], sigma: np.ndarray, n: int, min_distance: float,
                     tolerance: float = 0.05) -> list[int]:
    """Indices of the ``n`` most uncertain candidates, skipping clashes and near-duplicates (sorted distances
    within ``tolerance`` Å, same formula)."""
    chosen: list[int] = []
    prints: list[tuple] = []
    for i in np.argsort(-np.asarray(sigma), kind="stable"):
        if len(chosen) >= n:
            break
        atoms = candidates[int(i)]
        if len(atoms) < 2 or not np.isfinite(sigma[i]) or _too_close(atoms, min_distance):
            continue
        fp = _fingerprint(atoms)
        if any(fp[0] == p[0] and len(fp[1]) == len(p[1]) and np.max(np.abs(fp[1] - p[1])) < tolerance
               for p in prints):
            continue
        chosen.append(int(i))
        prints.append(fp)
    return chosen


def label_with_xtb(structures: Sequence[Atoms], say=None) -> tuple[list[Atoms], int]:
    """GFN2-xTB energies/forces as ``REF_energy``/``REF_forces``; SCF failures are skipped and counted."""
    from molgym.potentials import SCFConvergenceError, load_potential

    xtb = load_potential("xtb")
    labelled, failures = [], 0
    for atoms in structures:
        try:
            e, f = xtb.energies_and_forces([atoms])
        except SCFConvergenceError:
            failures += 1
            continue
        labelled.append(labelled_copy(atoms, float(e[0]), f[0], category="hal"))
    return labelled, failures


def xtb_relaxation_frames(structures: Sequence[Atoms], frames: int, steps: int,
                          generators: Sequence[str]) -> list[Atoms]:
    """``frames`` evenly spaced frames (the last one included) of the GFN2-xTB BFGS relaxation of each structure
    that is a generator's final molecule (``source`` is ``"<generator>:<formula>"``, not a build prefix).

    Each frame carries the GFN2-xTB energy and forces the relaxation computed at it (labelled as
    :func:`label_with_xtb` labels). A relaxation that fails to converge an SCF keeps the frames it reached.
    """
    from ase.optimize import BFGS

    from molgym.potentials import SCFConvergenceError, load_potential

    xtb = load_potential("xtb")
    out: list[Atoms] = []
    for atoms in structures:
        source = str(atoms.info.get("source", ""))
        if source.split(":")[0] not in generators or source.endswith(":prefix"):
            continue
        work = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
        work.calc = xtb.as_calculator()
        path: list[Atoms] = []

        def keep(work=work, path=path):  # observers run after the forces at the new positions are computed
            frame = Atoms(numbers=work.numbers, positions=work.positions.copy())
            path.append(labelled_copy(frame, work.get_potential_energy(), work.get_forces(), category="hal"))

        opt = BFGS(work, logfile=None)
        opt.attach(keep, interval=1)
        try:
            opt.run(fmax=0.05, steps=steps)
        except SCFConvergenceError:
            pass
        if len(path) < 2:
            continue
        picks = np.unique(np.linspace(1, len(path) - 1, frames).round().astype(int))
        for k in picks:
            path[k].info.update(source=f"{source}:xtb-relax", xtb_relax_step=int(k))
            out.append(path[k])
    return out
