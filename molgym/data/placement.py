"""Random placements that obey MolGym's placement rules (:func:`molgym.reward.placement_problem`): one atom next
to a canvas (:func:`random_position`, the dataset builder's perturbations) or a whole structure from a bag
(:func:`random_structure`, random structure search and the refinement loop's relaxation paths).

Every random number comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from molgym.chem import atomic_number, covalent_radius
from molgym.reward import placement_problem

__all__ = ["unit_vector", "random_position", "random_structure"]


def unit_vector(rng: np.random.Generator) -> np.ndarray:
    """A direction drawn uniformly on the sphere."""
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def random_position(canvas: Atoms, number: int, rng: np.random.Generator, low: float, high: float,
                     avoid: np.ndarray | None = None, avoid_radius: float = 0.7, tries: int = 200) -> np.ndarray | None:
    """A position for atom ``number`` at ``low..high`` Å from a random canvas atom that the environment rules
    allow (``placement_problem`` is None), at least ``avoid_radius`` from ``avoid``; None if none was found."""
    for _ in range(tries):
        anchor = canvas.positions[rng.integers(len(canvas))]
        pos = anchor + rng.uniform(low, high) * unit_vector(rng)
        if avoid is not None and np.linalg.norm(pos - avoid) < avoid_radius:
            continue
        if placement_problem(canvas, number, pos) is None:
            return pos
    return None


def random_structure(
    bag: dict[str, int],
    rng: np.random.Generator,
    stretch: tuple[float, float] = (0.95, 1.35),
    clash: float = 0.8,
    max_attempts: int = 2000,
) -> Atoms:
    """Random 3D placement of the atoms of ``bag`` obeying MolGym's placement rules (see module docstring).

    Each atom goes at ``U(stretch) x (r_a + r_b)`` from a random atom ``a`` already placed (a heavy atom when
    one exists), in a uniformly random direction; a draw that breaks a rule is rejected and redrawn.
    Raises ``RuntimeError`` if an atom cannot be placed in ``max_attempts`` draws.
    """
    symbols = [s for s, k in bag.items() for _ in range(k)]
    heavy = [s for s in symbols if s not in ("H", "F")]
    terminal = [s for s in symbols if s in ("H", "F")]
    order = list(rng.permutation(heavy)) + list(rng.permutation(terminal)) if heavy else list(rng.permutation(symbols))
    canvas = Atoms()
    for sym in order:
        z = atomic_number(sym)
        placed = False
        for _attempt in range(max_attempts):
            if len(canvas) == 0:
                position = np.zeros(3)
            else:
                heavy_idx = np.nonzero(~np.isin(canvas.numbers, (1, 9)))[0]
                pool = heavy_idx if len(heavy_idx) else np.arange(len(canvas))
                anchor = int(rng.choice(pool))
                r = covalent_radius(int(canvas.numbers[anchor])) + covalent_radius(z)
                position = canvas.positions[anchor] + rng.uniform(*stretch) * r * unit_vector(rng)
            if placement_problem(canvas, z, position) is not None:
                continue
            if len(canvas):
                d = np.linalg.norm(canvas.positions - position, axis=1)
                limits = clash * (np.array([covalent_radius(int(n)) for n in canvas.numbers]) + covalent_radius(z))
                if np.any(d < limits):
                    continue
            canvas += Atoms(numbers=[z], positions=[position])
            placed = True
            break
        if not placed:
            raise RuntimeError(f"could not place {sym} after {max_attempts} random draws")
    return canvas
