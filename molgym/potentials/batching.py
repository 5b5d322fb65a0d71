"""One batched potential call that tolerates failures: the helper every caller of ``energies`` (or
``energies_and_forces``) on many structures uses (environments, metrics, best-known returns, reward-gap checks,
model evaluation, labelling).

A potential evaluates a whole list in one call (one MACE forward pass, one threaded xTB batch). When that call
fails on one structure (:class:`~molgym.potentials.base.PotentialError`, e.g. an SCF that does not converge), the
structures are evaluated one by one so that only the failing ones lose their result, and the caller learns why.
Only :class:`PotentialError` is tolerated: anything else (an element the potential does not cover, a capability it
lacks) fails the whole call, as it would fail every structure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from ase import Atoms

from molgym.potentials.base import Potential, PotentialError

__all__ = ["evaluate_batch", "evaluate_one", "energies_or_nan", "energies_and_forces_or_nan"]

_Result = TypeVar("_Result")


def _tolerant(evaluate: Callable[[list[Atoms]], list[_Result]], structures: Sequence[Atoms]
              ) -> list[tuple[_Result | None, str]]:
    """``(result, "")`` per structure from ONE ``evaluate(structures)`` call; if it raises :class:`PotentialError`,
    ``evaluate([structure])`` for each structure, with ``(None, reason)`` for those that fail."""
    structures = list(structures)
    if not structures:
        return []
    try:
        return [(result, "") for result in evaluate(structures)]
    except PotentialError:
        return [_tolerant_one(evaluate, s) for s in structures]


def _tolerant_one(evaluate: Callable[[list[Atoms]], list[_Result]], structure: Atoms) -> tuple[_Result | None, str]:
    try:
        return evaluate([structure])[0], ""
    except PotentialError as err:
        return None, str(err)


def _energy_evaluator(potential: Potential, committee: bool) -> Callable[[list[Atoms]], list]:
    """``structures -> [(energy, members)]``: members (the committee's energies) only when ``committee``."""
    if committee:
        def evaluate(structures: list[Atoms]) -> list:
            energies, members = potential.committee_energies(structures)
            return [(float(e), m) for e, m in zip(energies, members)]
    else:
        def evaluate(structures: list[Atoms]) -> list:
            return [(float(e), None) for e in potential.energies(structures)]
    return evaluate


def evaluate_one(potential: Potential, structure: Atoms, committee: bool = False
                 ) -> tuple[float | None, str, np.ndarray | None]:
    """``(energy, "", members)`` of one structure, or ``(None, reason, None)`` when the potential cannot evaluate
    it; ``members`` (the committee's energies) only when ``committee``."""
    result, reason = _tolerant_one(_energy_evaluator(potential, committee), structure)
    return (None, reason, None) if result is None else (result[0], "", result[1])


def evaluate_batch(potential: Potential, structures: Sequence[Atoms], committee: bool = False
                   ) -> list[tuple[float | None, str, np.ndarray | None]]:
    """``(energy, reason, members)`` per structure (see :func:`evaluate_one`) from ONE potential call; if that
    call fails, the structures are evaluated one by one to isolate the failures."""
    return [(None, reason, None) if result is None else (result[0], "", result[1])
            for result, reason in _tolerant(_energy_evaluator(potential, committee), structures)]


def energies_or_nan(potential: Potential, structures: Sequence[Atoms]) -> np.ndarray:
    """Energies (eV) of ``structures`` as a float array, NaN where the potential fails (:func:`evaluate_batch`)."""
    return np.array([np.nan if e is None else e for e, _reason, _m in evaluate_batch(potential, structures)],
                    dtype=float)


def energies_and_forces_or_nan(potential: Potential, structures: Sequence[Atoms]
                               ) -> tuple[np.ndarray, list[np.ndarray | None], list[str]]:
    """Energies (eV; NaN where the potential fails), forces (eV/Å; ``None`` there) and the failure reasons (``""``
    where it worked) of ``structures``, from ONE ``energies_and_forces`` call, one by one only if that fails."""

    def evaluate(batch: list[Atoms]) -> list[tuple[float, np.ndarray]]:
        energies, forces = potential.energies_and_forces(batch)
        return list(zip(energies, forces))

    results = _tolerant(evaluate, structures)
    energies = np.array([np.nan if r is None else r[0] for r, _ in results], dtype=float)
    return energies, [None if r is None else r[1] for r, _ in results], [reason for _, reason in results]
