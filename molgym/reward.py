"""MolGym's reward: the interaction energy of a new atom with the canvas, and the placement rules.

    r = -[E(canvas + atom) - E(canvas) - E(atom)]      (eV; positive when placing the atom releases energy)

One definition serves the environments (rewards), the dataset builder (build-trajectory labels) and the
potential's evaluation (per-step reward errors), so they cannot drift apart. ``E(atom)`` is the energy of the
isolated neutral atom in its lowest spin state, computed once per potential and element and cached.

The rewards of an episode telescope to its *build return* under the potential (:func:`build_return`),

    R(final) = E(start) + sum_{placed atoms} E(atom) - E(final)

(the atomisation energy of the molecule when the episode starts from an empty canvas). An environment with a
*reference* (e.g. GFN2-xTB) keeps the potential's per-step rewards as dense shaping and adds, on the step that
ends the episode, :func:`reference_correction` ``= R_ref(final) - R_potential(final)`` (minus the floor terms it
added), so the undiscounted return of every episode is the reference's build return of what was built, plus
the rule penalties (``invalid_reward``, task terms): no policy can gain from the potential's errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from weakref import WeakKeyDictionary

import numpy as np
from ase import Atoms

from molgym.potentials.base import Potential

#: The closest two atoms may be placed (Å); closer placements are invalid (MolGym's default).
MIN_DISTANCE = 0.6
#: H and F must lie within this distance (Å) of some heavy atom on the canvas, once one exists (MolGym's default).
MAX_TERMINAL_DISTANCE = 2.0

_ATOM_ENERGIES: WeakKeyDictionary = WeakKeyDictionary()


def isolated_atom_energies(potential: Potential, numbers: Sequence[int]) -> dict[int, float]:
    """Energy (eV) of each isolated atom, from ``potential``, cached per potential object."""
    cache = _ATOM_ENERGIES.setdefault(potential, {})
    missing = sorted({int(z) for z in numbers} - set(cache))
    if missing:
        energies = potential.energies([Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]) for z in missing])
        cache.update({z: float(e) for z, e in zip(missing, energies)})
    return {int(z): cache[int(z)] for z in numbers}


def interaction_reward(e_after: float | np.ndarray, e_before: float | np.ndarray, e_atom: float | np.ndarray):
    """``-(E(canvas + atom) - E(canvas) - E(atom))``; works elementwise on arrays. An empty canvas has E = 0."""
    return -(np.asarray(e_after) - np.asarray(e_before) - np.asarray(e_atom))


def prefix_rewards(prefix_energies: np.ndarray, atom_energies: np.ndarray) -> np.ndarray:
    """Per-step rewards of building a molecule atom by atom, from the energies of its prefixes.

    ``prefix_energies[k]`` is ``E`` of the first ``k + 1`` atoms and ``atom_energies[k]`` the isolated energy of
    atom ``k``; step ``k`` places atom ``k`` on the prefix before it (an empty canvas has E = 0). The rewards sum
    to the atomisation energy ``sum E(atom) - E(molecule)``.
    """
    energies = np.asarray(prefix_energies, dtype=float)
    before = np.concatenate([[0.0], energies[:-1]])
    return interaction_reward(energies, before, np.asarray(atom_energies, dtype=float))


def build_return(e_final: float, e_start: float, placed_atom_energies: Sequence[float]) -> float:
    """``E(start) + sum E(atom) - E(final)``: the sum of an episode's interaction rewards (eV).

    ``e_start`` is the energy of the start structure (0 for an empty canvas), ``placed_atom_energies`` the
    isolated energies of the atoms the episode placed and ``e_final`` the energy of the final canvas, all under one
    potential (each potential's own isolated-atom energies, so two potentials' returns are comparable).
    """
    return float(e_start) + float(np.sum(placed_atom_energies, dtype=float)) - float(e_final)


def reference_correction(reference_return: float, potential_return: float, floor_total: float = 0.0) -> float:
    """The reward added on the step that ends an episode so that its return is the reference's build return.

    ``potential_return`` is the sum of the episode's interaction rewards (:func:`build_return` under the
    potential) and ``floor_total`` the sum of the ``min_reward`` floor terms the episode received; the floor
    guards the value function step by step, but the episode's total must still be the true one.
    """
    return float(reference_return) - float(potential_return) - float(floor_total)


def structure_problem(numbers: np.ndarray, positions: np.ndarray) -> str | None:
    """Why a whole structure breaks the placement rules, or ``None``: the rules of :func:`placement_problem` for
    every atom at once (finite coordinates; no two atoms closer than :data:`MIN_DISTANCE`; every H and F within
    :data:`MAX_TERMINAL_DISTANCE` of a heavy atom when the structure has one), independent of atom order. A start
    canvas must pass it, so an episode cannot begin where no sequence of valid steps could lead."""
    numbers = np.asarray(numbers)
    positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    if not np.isfinite(positions).all():
        return "non-finite coordinates"
    if len(numbers) < 2:
        return None
    delta = positions[:, None, :] - positions[None, :, :]
    distances = np.sqrt(np.einsum("ijk,ijk->ij", delta, delta))
    np.fill_diagonal(distances, np.inf)
    i, j = np.unravel_index(int(distances.argmin()), distances.shape)
    if distances[i, j] < MIN_DISTANCE:
        return f"atoms {min(i, j)} and {max(i, j)} are {distances[i, j]:.2f} Å apart (minimum {MIN_DISTANCE} Å)"
    heavy = (numbers != 1) & (numbers != 9)
    if heavy.any():
        for k in np.flatnonzero(~heavy):
            nearest = float(distances[k, heavy].min())
            if nearest > MAX_TERMINAL_DISTANCE:
                return (f"terminal atom {k} is {nearest:.2f} Å from the nearest heavy atom "
                        f"(maximum {MAX_TERMINAL_DISTANCE} Å)")
    return None


def placement_problem(canvas: Atoms, number: int, position: np.ndarray) -> str | None:
    """Why placing atom ``number`` at ``position`` on ``canvas`` is invalid, or ``None`` if it is valid.

    Rules: finite coordinates; no atom closer than :data:`MIN_DISTANCE`; H and F within
    :data:`MAX_TERMINAL_DISTANCE` of a heavy (non-H, non-F) atom when the canvas has one.
    """
    position = np.asarray(position, dtype=float)
    if position.shape != (3,) or not np.isfinite(position).all():
        return f"position {position.tolist()} is not three finite coordinates"
    if len(canvas) == 0:
        return None
    # squared distances and plain comparisons: this runs for every step of every environment
    delta = canvas.positions - position
    squared = np.einsum("ij,ij->i", delta, delta)
    closest = int(squared.argmin())
    if squared[closest] < MIN_DISTANCE**2:
        return f"too close: {np.sqrt(squared[closest]):.2f} Å from atom {closest} (minimum {MIN_DISTANCE} Å)"
    if number in (1, 9):
        numbers = canvas.numbers
        heavy = (numbers != 1) & (numbers != 9)
        if heavy.any():
            nearest = float(np.sqrt(squared[heavy].min()))
            if nearest > MAX_TERMINAL_DISTANCE:
                return (
                    f"terminal atom too far: {nearest:.2f} Å from the nearest heavy atom "
                    f"(maximum {MAX_TERMINAL_DISTANCE} Å)"
                )
    return None
