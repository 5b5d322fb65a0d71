"""Distance-based bond perception and EDM-style atom and molecule stability.

Bond orders follow the rule used by the EDM paper (E. Hoogeboom, V. G. Satorras, C. Vignac, M. Welling,
"Equivariant Diffusion for Molecule Generation in 3D", ICML 2022) to score generated QM9-like molecules:
two atoms at distance ``d`` are

- triply bonded if ``d < triple[a, b] + 0.03 Å``,
- else doubly bonded if ``d < double[a, b] + 0.05 Å``,
- else singly bonded if ``d < single[a, b] + 0.10 Å``,
- else not bonded,

with the standard bond lengths of the tables below (Å; the usual textbook values EDM tabulates in pm). A pair
with no entry in a table cannot have that bond order. An atom is *stable* when the sum of its bond orders equals
its valence (H 1, C 4, N 3, O 2, F 1; molgym's :mod:`molgym.chem` valences for other elements); a molecule is
stable when all its atoms are. On QM9 itself EDM reports 99.0 % atom and 95.2 % molecule stability, which the
tests reproduce.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from molgym.chem import valences

__all__ = [
    "SINGLE",
    "DOUBLE",
    "TRIPLE",
    "MARGINS",
    "bond_length",
    "connectivity_cutoff",
    "connectivity",
    "bond_order_matrix",
    "atom_stability",
    "is_stable",
]


def _table(entries: dict[str, float]) -> dict[frozenset, float]:
    out: dict[frozenset, float] = {}
    for key, value in entries.items():
        a, b = key.split("-")
        out[frozenset((a, b))] = value
    return out


#: Standard single-bond lengths (Å).
SINGLE: dict[frozenset, float] = _table({
    "H-H": 0.74, "H-C": 1.09, "H-N": 1.01, "H-O": 0.96, "H-F": 0.92,
    "C-C": 1.54, "C-N": 1.47, "C-O": 1.43, "C-F": 1.35,
    "N-N": 1.45, "N-O": 1.40, "N-F": 1.36,
    "O-O": 1.48, "O-F": 1.42, "F-F": 1.42,
    "H-S": 1.34, "C-S": 1.82, "S-S": 2.04, "H-Cl": 1.27, "C-Cl": 1.77, "H-P": 1.44, "C-P": 1.84,
    "H-Br": 1.41, "C-Br": 1.94, "H-I": 1.61, "C-I": 2.14, "H-B": 1.19, "C-B": 1.56,
})
#: Standard double-bond lengths (Å).
DOUBLE: dict[frozenset, float] = _table({
    "C-C": 1.34, "C-N": 1.29, "C-O": 1.20, "N-N": 1.25, "N-O": 1.21, "O-O": 1.21,
    "C-S": 1.60, "O-S": 1.43, "O-P": 1.50,
})
#: Standard triple-bond lengths (Å).
TRIPLE: dict[frozenset, float] = _table({"C-C": 1.20, "C-N": 1.16, "N-N": 1.10, "C-O": 1.13})
#: Tolerance added to the single, double and triple bond lengths (Å).
MARGINS: tuple[float, float, float] = (0.10, 0.05, 0.03)


def bond_length(a: str, b: str, order: int = 1) -> float | None:
    """Standard length (Å) of an ``order`` bond between elements ``a`` and ``b``; ``None`` if not tabulated."""
    table = {1: SINGLE, 2: DOUBLE, 3: TRIPLE}[order]
    return table.get(frozenset((a, b)))


def connectivity_cutoff(a: str, b: str) -> float:
    """Longest distance (Å) at which ``a`` and ``b`` count as bonded: single length + margin.

    Pairs missing from :data:`SINGLE` fall back to 1.15 x the sum of covalent radii.
    """
    single = SINGLE.get(frozenset((a, b)))
    if single is None:
        from molgym.chem import covalent_radius

        return 1.15 * (covalent_radius(a) + covalent_radius(b))
    return single + MARGINS[0]


def connectivity(atoms: Atoms) -> np.ndarray:
    """Symmetric boolean ``(n, n)`` bond graph: ``i`` and ``j`` bonded when closer than
    :func:`connectivity_cutoff` (the rule of bond perception and of the validity metric)."""
    n = len(atoms)
    bonded = np.zeros((n, n), dtype=bool)
    if n < 2:
        return bonded
    symbols = atoms.get_chemical_symbols()
    distances = atoms.get_all_distances()
    for i in range(n):
        for j in range(i + 1, n):
            bonded[i, j] = bonded[j, i] = distances[i, j] < connectivity_cutoff(symbols[i], symbols[j])
    return bonded


def bond_order_matrix(atoms: Atoms) -> np.ndarray:
    """Symmetric ``(n, n)`` integer matrix of EDM-rule bond orders (0 = no bond)."""
    symbols = atoms.get_chemical_symbols()
    n = len(atoms)
    orders = np.zeros((n, n), dtype=np.int64)
    if n < 2:
        return orders
    distances = atoms.get_all_distances()
    for i in range(n):
        for j in range(i + 1, n):
            d = distances[i, j]
            if d >= connectivity_cutoff(symbols[i], symbols[j]):
                continue
            order = 1
            key = frozenset((symbols[i], symbols[j]))
            if key in DOUBLE and d < DOUBLE[key] + MARGINS[1]:
                order = 2
                if key in TRIPLE and d < TRIPLE[key] + MARGINS[2]:
                    order = 3
            orders[i, j] = orders[j, i] = order
    return orders


def atom_stability(atoms: Atoms) -> np.ndarray:
    """Boolean array: is each atom's sum of bond orders one of its allowed valences?

    For H, C, N, O and F the allowed valence is the single EDM one (1, 4, 3, 2, 1); P and S accept any of their
    :func:`molgym.chem.valences`.
    """
    orders = bond_order_matrix(atoms).sum(axis=1)
    return np.array([int(o) in valences(int(z)) for o, z in zip(orders, atoms.numbers)], dtype=bool)


def is_stable(atoms: Atoms) -> bool:
    """True when every atom is stable (EDM's molecule stability)."""
    return bool(len(atoms) > 0 and atom_stability(atoms).all())
