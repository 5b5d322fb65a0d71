"""One batched potential call that tolerates failures: the helper every caller of ``energies`` on many
structures uses (environments, metrics, best-known returns, reward-gap checks).

A potential evaluates a whole list in one call (one MACE forward pass, one threaded xTB batch). When that call
fails on one structure (:class:`~molgym.potentials.base.PotentialError`, e.g. an SCF that does not converge), the
structures are evaluated one by one so that only the failing ones lose their energy, and the caller learns why.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from molgym.potentials.base import Potential, PotentialError

__all__ = ["evaluate_batch", "evaluate_one", "energies_or_nan"]


def _evaluate(potential: Potential, structures: list[Atoms], committee: bool):
    if committee:
        energies, members = potential.committee_energies(structures)
        return [(float(e), "", m) for e, m in zip(energies, members)]
    return [(float(e), "", None) for e in potential.energies(structures)]


def evaluate_one(potential: Potential, structure: Atoms, committee: bool = False
                 ) -> tuple[float | None, str, np.ndarray | None]:
    """``(energy, "", members)`` of one structure, or ``(None, reason, None)`` when the potential cannot evaluate
    it; ``members`` (the committee's energies) only when ``committee``."""
    try:
        return _evaluate(potential, [structure], committee)[0]
    except PotentialError as err:
        return None, str(err), None


def evaluate_batch(potential: Potential, structures: Sequence[Atoms], committee: bool = False
                   ) -> list[tuple[float | None, str, np.ndarray | None]]:
    """``(energy, reason, members)`` per structure (see :func:`evaluate_one`) from ONE potential call; if that
    call fails, the structures are evaluated one by one to isolate the failures."""
    structures = list(structures)
    if not structures:
        return []
    try:
        return _evaluate(potential, structures, committee)
    except PotentialError:
        return [evaluate_one(potential, s, committee) for s in structures]


def energies_or_nan(potential: Potential, structures: Sequence[Atoms]) -> np.ndarray:
    """Energies (eV) of ``structures`` as a float array, NaN where the potential fails (:func:`evaluate_batch`)."""
    return np.array([np.nan if e is None else e for e, _reason, _m in evaluate_batch(potential, structures)],
                    dtype=float)
