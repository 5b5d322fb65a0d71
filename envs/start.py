"""What an episode starts from: the task's start structure (a solute, or nothing) plus an optional user canvas
(``reset(options={"canvas": atoms})``), checked against the rules every step obeys, and its energy.

:class:`StartStructure` is a mixin of :class:`~molgym.envs.base.MolecularEnv`. Tasks may override
:meth:`~StartStructure._apply_canvas` (which atoms of the bag a user canvas uses) and
:meth:`~StartStructure._structure_energy` (solvation caches its solute's energy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from molgym.chem import bag_from_numbers, format_formula, symbol
from molgym.potentials.base import Potential
from molgym.potentials.batching import evaluate_one
from molgym.reward import isolated_atom_energies, structure_problem

__all__ = ["StartStructure"]


class StartStructure:
    """The start structure and bag of an episode, and the energy of the start structure."""

    potential: Potential
    reports_uncertainty: bool
    elements: tuple[str, ...]
    element_numbers: np.ndarray
    max_atoms: int
    workspace: float

    def _start(self, options: dict[str, Any]) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """``(bag, numbers, positions)`` of a new episode: the task's bag and start structure
        (``_new_episode``), with the user's ``options["canvas"]`` (removed from ``options``) added after it."""
        bag, start = self._new_episode(options)
        canvas = options.pop("canvas", None)
        numbers = start.numbers.astype(np.int64)
        positions = start.positions.astype(np.float64)
        if canvas is not None:
            if not isinstance(canvas, Atoms):
                raise ValueError(f"options['canvas'] must be an ase.Atoms, got {type(canvas).__name__}")
            self._check_canvas(canvas, numbers, positions)
            bag = self._apply_canvas(bag, canvas)
            numbers = np.concatenate([numbers, canvas.numbers.astype(np.int64)])
            positions = np.concatenate([positions, canvas.positions.astype(np.float64)])
        if len(numbers) + sum(bag.values()) > self.max_atoms:
            raise ValueError(
                f"canvas ({len(numbers)} atoms) + bag ({sum(bag.values())}) exceed max_atoms={self.max_atoms}"
            )
        return bag, numbers, positions

    def _apply_canvas(self, bag: dict[str, int], canvas: Atoms) -> dict[str, int]:
        """The bag left after the atoms of a user-given start ``canvas`` (formula tasks: remove them)."""
        from molgym.envs.bags import bag_contains, bag_subtract

        part = bag_from_numbers(canvas.numbers)
        if not bag_contains(bag, part):
            raise ValueError(
                f"the start canvas {format_formula(part)} is not part of this episode's bag {format_formula(bag)}"
            )
        left = bag_subtract(bag, part)
        if not left:
            raise ValueError(f"the start canvas {format_formula(part)} already uses the whole bag; nothing to place")
        return left

    def _check_canvas(self, canvas: Atoms, numbers: np.ndarray, positions: np.ndarray) -> None:
        if len(canvas) == 0:
            return
        if not np.all(np.isfinite(canvas.positions)):
            raise ValueError("options['canvas'] has non-finite positions")
        if np.any(np.abs(canvas.positions) > self.workspace):
            w = self.workspace
            raise ValueError(f"options['canvas'] has atoms outside the workspace [-{w}, {w}]^3 Å")
        self._check_species(set(canvas.numbers.tolist()))
        problem = structure_problem(np.concatenate([numbers, canvas.numbers]),
                                    np.concatenate([positions, canvas.positions]))
        if problem:  # a start canvas obeys the rules every step obeys
            raise ValueError(f"options['canvas'] breaks the placement rules: {problem}")
        allowed = set(self.element_numbers.tolist())
        bad = sorted(set(canvas.numbers.tolist()) - allowed)
        if bad:
            raise ValueError(
                f"options['canvas'] contains {', '.join(symbol(z) for z in bad)}; this task places only "
                f"{', '.join(self.elements)}"
            )

    def _structure_energy(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray | None]:
        """``E`` of a start structure and its committee deviations (``None`` without uncertainties; zeros for an
        empty canvas or a lone atom, whose energies are exact)."""
        if len(numbers) <= 1:
            energy = 0.0 if len(numbers) == 0 else isolated_atom_energies(self.potential, [int(numbers[0])])[
                int(numbers[0])]
            return energy, (self._zero_dev() if self.reports_uncertainty else None)
        energy, error, members = evaluate_one(self.potential, Atoms(numbers=numbers, positions=positions),
                                               self.reports_uncertainty)
        if energy is None or not np.isfinite(energy):
            raise ValueError(f"the start structure could not be evaluated with {self.potential.name}: {error}")
        return float(energy), (None if members is None else np.asarray(members, dtype=float) - energy)
