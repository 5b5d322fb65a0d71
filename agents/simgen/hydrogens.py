"""From a heavy-atom skeleton to a whole molecule: bond orders from geometry, hydrogens by valence.

1. **Connectivity**: two heavy atoms are bonded when closer than molgym's connectivity cutoff (standard single
   bond + 0.10 Å, :func:`molgym.metrics.bonds.connectivity_cutoff`), the same rule the validity metric uses.
2. **Bond orders** (:func:`assign_bond_orders`): each bond gets an order 1..3 (only where the element pair has
   such a bond in molgym's tables), chosen by a small exhaustive search that keeps every atom within its valence
   and prefers orders whose standard length is closest to the bond's length (a multiple bond costs more the
   longer it is, and an atom with two multiple bonds costs extra unless it is linear). With ``n_hydrogens`` given (formula tasks), only assignments leaving exactly that many
   hydrogens are accepted.
3. **Hydrogens** (:func:`add_hydrogens`): each heavy atom gets ``valence - sum of bond orders`` hydrogens at its
   X-H bond length, in the directions a VSEPR picture gives (tetrahedral, trigonal or linear from the atom's
   total number of neighbours), pointing away from its heavy neighbours. The group is turned about its axis
   (and a lone hydrogen tilted) to the orientation that keeps the new hydrogens farthest outside the bonding
   distance of every other atom (:data:`ROTATIONS` tried), so that a hydrogen is not placed where it would be
   bonded to a second atom: such a molecule would fail validity for the placement, not for its skeleton.
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms

from molgym.chem import symbol, valences
from molgym.metrics.bonds import DOUBLE, SINGLE, TRIPLE, connectivity_cutoff

__all__ = ["heavy_bonds", "assign_bond_orders", "hydrogen_counts", "add_hydrogens", "hydrogenate"]

_XH = {"C": 1.09, "N": 1.01, "O": 0.96, "F": 0.92, "S": 1.34, "P": 1.42, "Cl": 1.27, "Br": 1.41, "I": 1.61,
       "B": 1.19}
#: Search at most this many bonds exhaustively for multiple-bond orders (the rest stay single).
MAX_SEARCH_BONDS = 12
#: Cost (Å^2) of an atom with two or more extra bond orders (C=C=C, C#C-...) that is not linear: bonds of
#: aromatic length (1.39-1.40 Å) sit closer to a double than a single bond, and without this every such ring would
#: become a cumulene instead of alternating single and double bonds.
CUMULENE_PENALTY = 0.03
#: Orientations of a hydrogen group tried about its axis (only when the first one puts a hydrogen within
#: ``CLEARANCE`` of the bonding distance of another atom).
ROTATIONS = 24
#: Margin (Å) beyond an atom pair's connectivity cutoff that a new hydrogen should keep from atoms it is not
#: bonded to.
CLEARANCE = 0.25


def _linear_atoms(positions: np.ndarray, bonds: list[tuple[int, int, float]], n: int,
                  min_angle: float = 150.0) -> np.ndarray:
    """Atoms with exactly two bonded neighbours at an angle of at least ``min_angle`` degrees (sp centres)."""
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for i, j, _ in bonds:
        neighbours[i].append(j)
        neighbours[j].append(i)
    out = np.zeros(n, dtype=bool)
    for a, nb in enumerate(neighbours):
        if len(nb) == 1:
            out[a] = True  # a terminal atom (C#N, C=O) carries at most one multiple bond anyway
        elif len(nb) == 2:
            u = positions[nb[0]] - positions[a]
            v = positions[nb[1]] - positions[a]
            cos = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12)
            out[a] = cos <= math.cos(math.radians(min_angle))
    return out


def heavy_bonds(numbers: np.ndarray, positions: np.ndarray) -> list[tuple[int, int, float]]:
    """``(i, j, distance)`` of every bonded pair of heavy atoms (connectivity cutoff rule)."""
    syms = [symbol(int(z)) for z in numbers]
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    out = []
    for i in range(len(numbers)):
        for j in range(i + 1, len(numbers)):
            if d[i, j] < connectivity_cutoff(syms[i], syms[j]):
                out.append((i, j, float(d[i, j])))
    return out


def _order_cost(a: str, b: str, order: int, distance: float) -> float:
    """How badly a bond of ``order`` fits ``distance`` (Å^2); ``inf`` when the pair has no such bond."""
    table = {1: SINGLE, 2: DOUBLE, 3: TRIPLE}[order]
    length = table.get(frozenset((a, b)))
    if length is None:
        return math.inf
    return (distance - length) ** 2


def assign_bond_orders(numbers: np.ndarray, positions: np.ndarray, bonds: list[tuple[int, int, float]] | None = None,
                       n_hydrogens: int | None = None) -> dict[tuple[int, int], int] | None:
    """Bond orders ``{(i, j): order}`` for the heavy-atom skeleton, or ``None`` if no assignment exists.

    Every atom's bond-order sum stays within its largest valence; among the feasible assignments the one with
    the smallest total :func:`_order_cost` wins. ``n_hydrogens`` (if given) must equal the hydrogens left over.
    """
    numbers = np.asarray(numbers)
    if bonds is None:
        bonds = heavy_bonds(numbers, positions)
    syms = [symbol(int(z)) for z in numbers]
    cap = np.array([max(valences(int(z))) for z in numbers])
    first = np.array([valences(int(z))[0] for z in numbers])
    degree = np.zeros(len(numbers), dtype=int)
    for i, j, _ in bonds:
        degree[i] += 1
        degree[j] += 1
    if np.any(degree > cap):
        return None
    base = {(i, j): 1 for i, j, _ in bonds}
    # candidate multiple bonds: both atoms have spare valence and the pair has a double bond
    cands = [(i, j, d) for i, j, d in bonds
             if degree[i] < cap[i] and degree[j] < cap[j] and math.isfinite(_order_cost(syms[i], syms[j], 2, d))]
    cands.sort(key=lambda b: _order_cost(syms[b[0]], syms[b[1]], 2, b[2]) - _order_cost(syms[b[0]], syms[b[1]], 1, b[2]))
    cands = cands[:MAX_SEARCH_BONDS]
    options = []
    for i, j, d in cands:
        opts = [(0, 0.0)]
        for order in (2, 3):
            c = _order_cost(syms[i], syms[j], order, d)
            if math.isfinite(c):
                opts.append((order - 1, c - _order_cost(syms[i], syms[j], 1, d)))
        options.append(opts)

    best: tuple[float, tuple] | None = None
    spare0 = cap - degree
    linear = _linear_atoms(positions, bonds, len(numbers))
    # lower bound of the cost still to come, for pruning (relative costs can be negative)
    bound = np.zeros(len(cands) + 1)
    for k in range(len(cands) - 1, -1, -1):
        bound[k] = bound[k + 1] + min(c for _, c in options[k])
    # depth-first search with pruning on spare valence
    extra = [0] * len(cands)

    def total_h(spare_used: np.ndarray) -> int:
        return int(np.maximum(first - degree - spare_used, 0).sum())

    def dfs(k: int, used: np.ndarray, cost: float):
        nonlocal best
        if best is not None and cost + bound[k] >= best[0]:
            return
        if k == len(cands):
            if n_hydrogens is not None and total_h(used) != n_hydrogens:
                return
            # cumulated multiple bonds (allene-like centres) only where the atom is linear
            total = cost + CUMULENE_PENALTY * sum(1 for a in np.nonzero(used >= 2)[0] if not linear[a])
            if best is None or total < best[0]:
                best = (total, tuple(extra))
            return
        i, j, _ = cands[k]
        for add, c in options[k]:
            if add and (used[i] + add > spare0[i] or used[j] + add > spare0[j]):
                continue
            used[i] += add
            used[j] += add
            extra[k] = add
            dfs(k + 1, used, cost + c)
            used[i] -= add
            used[j] -= add
            extra[k] = 0

    dfs(0, np.zeros(len(numbers), dtype=int), 0.0)
    if best is None:
        return None
    orders = dict(base)
    for (i, j, _), add in zip(cands, best[1]):
        orders[(i, j)] = 1 + add
    return orders


def hydrogen_counts(numbers: np.ndarray, orders: dict[tuple[int, int], int]) -> np.ndarray:
    """Hydrogens each heavy atom needs: its first valence (or the smallest valence not below its bond-order sum,
    for elements with several) minus its bond-order sum."""
    total = np.zeros(len(numbers), dtype=int)
    for (i, j), o in orders.items():
        total[i] += o
        total[j] += o
    out = np.zeros(len(numbers), dtype=int)
    for k, z in enumerate(numbers):
        fitting = [v for v in valences(int(z)) if v >= total[k]]
        out[k] = (min(fitting) - total[k]) if fitting else 0
    return out


def _perpendicular(u: np.ndarray, hint: np.ndarray | None) -> np.ndarray:
    if hint is not None:
        p = hint - np.dot(hint, u) * u
        if np.linalg.norm(p) > 1e-3:
            return p / np.linalg.norm(p)
    trial = np.array([1.0, 0.0, 0.0]) if abs(u[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    p = trial - np.dot(trial, u) * u
    return p / np.linalg.norm(p)


# angle (degrees) between the hydrogens and the "away from neighbours" axis, by (neighbours, hydrogens)
_TETRA = {(1, 3): 70.53, (2, 2): 54.74, (1, 2): 70.53, (1, 1): 0.0, (2, 1): 0.0, (3, 1): 0.0}
_TRIG = {(1, 2): 60.0, (1, 1): 0.0, (2, 1): 0.0}


def _h_directions(center: np.ndarray, neighbours: np.ndarray, n_h: int, n_bonds_total: int,
                  hint: np.ndarray | None, turn: float = 0.0, tilt: float = 0.0) -> np.ndarray:
    """Unit vectors for ``n_h`` hydrogens on an atom at ``center`` with heavy ``neighbours``, the group turned by
    ``turn`` radians about its axis; ``tilt`` (radians) leans a group on its axis (a lone hydrogen) off it."""
    if len(neighbours) == 0:
        if n_h == 1:
            return np.array([[1.0, 0.0, 0.0]])
        # a lone heavy atom: tetrahedral (sp3), or the directions of a regular polygon for fewer hydrogens
        tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) / math.sqrt(3)
        if n_h <= 4:
            return tet[:n_h]
        return tet
    vecs = neighbours - center
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    away = -vecs.sum(axis=0)
    if np.linalg.norm(away) < 1e-3:  # neighbours symmetric around the atom: any perpendicular direction
        away = _perpendicular(vecs[0], None)
    u = away / np.linalg.norm(away)
    steric = len(neighbours) + n_h
    table = _TETRA if n_bonds_total >= 4 or steric >= 4 else _TRIG
    theta = math.radians(table.get((len(neighbours), n_h), 0.0 if n_h == 1 else 60.0))
    if steric <= 2:
        theta = 0.0
    theta += tilt
    p = _perpendicular(u, hint if hint is not None else (vecs[1] if len(vecs) > 1 else None))
    if len(neighbours) == 2 and n_h == 2:
        p = np.cross(vecs[0], vecs[1])
        p = p / np.linalg.norm(p) if np.linalg.norm(p) > 1e-3 else _perpendicular(u, None)
    q = np.cross(u, p)
    out = []
    for k in range(n_h):
        phi = 2 * math.pi * k / max(n_h, 1) + turn
        out.append(math.cos(theta) * u + math.sin(theta) * (math.cos(phi) * p + math.sin(phi) * q))
    return np.array(out)


def add_hydrogens(skeleton: Atoms, counts: np.ndarray) -> Atoms:
    """``skeleton`` plus ``counts[i]`` hydrogens on heavy atom ``i`` (placed by VSEPR directions)."""
    numbers = skeleton.numbers
    pos = skeleton.positions
    bonds = heavy_bonds(numbers, pos)
    neigh: list[list[int]] = [[] for _ in numbers]
    for i, j, _ in bonds:
        neigh[i].append(j)
        neigh[j].append(i)
    # an H's bonding distance to each heavy atom and to another H, for keeping new hydrogens clear of them
    h_cutoffs = np.array([connectivity_cutoff("H", symbol(int(z))) for z in numbers])
    hh_cutoff = connectivity_cutoff("H", "H")
    h_pos = []
    for i, n_h in enumerate(counts):
        if n_h <= 0:
            continue
        nb = pos[neigh[i]] if neigh[i] else np.zeros((0, 3))
        # a second-shell neighbour gives the plane for trigonal hydrogens (keeps sp2 groups planar)
        hint = None
        if len(neigh[i]) == 1:
            j = neigh[i][0]
            others = [k for k in neigh[j] if k != i]
            if others:
                hint = pos[others[0]] - pos[j]
        length = _XH.get(symbol(int(numbers[i])), 1.05)
        others = np.concatenate([np.delete(pos, i, axis=0), np.reshape(h_pos, (-1, 3))])
        cutoffs = np.concatenate([np.delete(h_cutoffs, i), np.full(len(h_pos), hh_cutoff)])

        def placed(turn: float, tilt: float) -> tuple[float, np.ndarray]:
            dirs = _h_directions(pos[i], nb, int(n_h), len(neigh[i]) + int(n_h), hint, turn, tilt)
            new = pos[i] + length * dirs
            if not len(others):
                return math.inf, new
            gaps = np.linalg.norm(new[:, None] - others[None], axis=-1) - cutoffs[None]
            return float(gaps.min()), new

        clearance, best = placed(0.0, 0.0)
        if clearance < CLEARANCE:
            tilts = (0.0,) if len(nb) and int(n_h) > 1 else (0.0, math.radians(20), math.radians(40))
            for tilt in tilts:
                for k in range(ROTATIONS):
                    trial = placed(2 * math.pi * k / ROTATIONS, tilt)
                    if trial[0] > clearance + 1e-9:
                        clearance, best = trial
        h_pos.extend(best)
    if not h_pos:
        return Atoms(numbers=numbers.copy(), positions=pos.copy())
    return Atoms(numbers=np.concatenate([numbers, np.ones(len(h_pos), dtype=int)]),
                 positions=np.concatenate([pos, np.array(h_pos)]))



def hydrogenate(skeleton: Atoms, n_hydrogens: int | None = None) -> Atoms | None:
    """Steps 1-3 on a heavy-atom ``skeleton``: the whole molecule, or ``None`` when no bond-order assignment keeps
    every atom within its valence. With ``n_hydrogens`` an assignment leaving exactly that many hydrogens is
    preferred; if none exists, the best one without that constraint is used."""
    heavy = Atoms(numbers=skeleton.numbers, positions=skeleton.positions)
    orders = assign_bond_orders(heavy.numbers, heavy.positions, n_hydrogens=n_hydrogens)
    if orders is None and n_hydrogens is not None:
        orders = assign_bond_orders(heavy.numbers, heavy.positions)
    if orders is None:
        return None
    return add_hydrogens(heavy, hydrogen_counts(heavy.numbers, orders))
