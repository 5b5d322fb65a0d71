"""EDM's QM9 figures for a set of generated molecules, computed with molgym's own metrics.

- **atom stability**: stable atoms / all atoms, pooled over molecules (EDM's definition;
  :func:`molgym.metrics.bonds.atom_stability`);
- **molecule stability**: molecules whose atoms are all stable / molecules;
- **validity**: molgym's ``valid`` (:func:`molgym.metrics.chemistry.perceive`: RDKit sanitises the perceived
  molecule, neutral fragments, no radicals). It is stricter than EDM's, which sanitises the largest fragment
  only, so ``valid_largest_fragment`` is reported as well;
- **valid and unique**: distinct canonical SMILES among valid molecules / molecules;
- **novelty**: molgym's novelty, valid molecules whose SMILES is not in QM9 (all of it) / valid molecules; and
  over the distinct valid SMILES (EDM's convention) as ``novelty_unique``.

EDM's published figures (Hoogeboom et al. 2022, QM9 with hydrogens, 10,000 samples) are in :data:`EDM_QM9`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

__all__ = ["EDM_QM9", "qm9_metrics"]

#: EDM's published QM9 figures (fractions) and sampling cost (seconds per molecule on a GTX 1080 Ti).
EDM_QM9: dict[str, float] = {"atom_stability": 0.987, "molecule_stability": 0.820, "validity": 0.919,
                             "valid_and_unique": 0.907, "seconds_per_molecule_gtx1080ti": 1.7}


def _largest_fragment_valid(atoms: Atoms) -> bool:
    """EDM-style validity: the largest connected fragment (by atoms) alone is valid."""
    from molgym.metrics.bonds import connectivity_cutoff
    from molgym.metrics.chemistry import perceive

    n = len(atoms)
    if n == 0:
        return False
    symbols = atoms.get_chemical_symbols()
    d = atoms.get_all_distances() if n > 1 else np.zeros((1, 1))
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if d[i, j] < connectivity_cutoff(symbols[i], symbols[j]):
                parent[find(i)] = find(j)
    roots = np.array([find(i) for i in range(n)])
    values, counts = np.unique(roots, return_counts=True)
    keep = roots == values[np.argmax(counts)]
    return bool(perceive(atoms[keep]).valid)


def qm9_metrics(molecules: Sequence[Atoms]) -> dict:
    """EDM's four figures plus novelty, uniqueness and connectivity for ``molecules`` (fractions in [0, 1]); for
    a heavy-atom model's samples also ``skeleton_valid``, the heavy-atom figure before hydrogens were added (the
    fraction of skeletons for which valence rules found bond orders)."""
    from molgym.metrics.bonds import atom_stability
    from molgym.metrics.chemistry import novelty, perceive

    if not molecules:
        raise ValueError("no molecules to evaluate")
    stable_atoms, total_atoms, stable_molecules = 0, 0, 0
    smiles: list[str | None] = []
    connected = 0
    largest_valid = 0
    for atoms in molecules:
        stable = atom_stability(atoms) if len(atoms) else np.zeros(0, bool)
        stable_atoms += int(stable.sum())
        total_atoms += len(atoms)
        stable_molecules += bool(len(atoms) and stable.all())
        p = perceive(atoms)
        smiles.append(p.smiles if p.valid else None)
        connected += bool(p.connected)
        largest_valid += bool(p.valid and p.connected) or (not p.connected and _largest_fragment_valid(atoms))
    n = len(molecules)
    valid = [s for s in smiles if s is not None]
    distinct = sorted(set(valid))
    novel_unique = novelty(distinct) if distinct else None
    return {
        "molecules": n,
        "atom_stability": stable_atoms / max(total_atoms, 1),
        "molecule_stability": stable_molecules / n,
        "validity": len(valid) / n,
        "valid_largest_fragment": largest_valid / n,
        "valid_and_unique": len(distinct) / n,
        "uniqueness": len(distinct) / len(valid) if valid else None,
        "novelty": novelty(smiles),
        "novelty_unique": novel_unique,
        "connected": connected / n,
        **({"skeleton_valid": sum(bool(m.info.get("skeleton_valid")) for m in molecules) / n}
           if any("skeleton_valid" in m.info for m in molecules) else {}),
    }
