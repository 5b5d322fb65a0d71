"""``CountingPotential``: a potential wrapper that counts what is asked of the wrapped one.

The benchmark's cost metrics (potential calls per valid molecule) and the generators' ``potential_calls`` read these
counts, so every structure a generator or a metric evaluates goes through one of these wrappers.

The wrapper has exactly the surface of :class:`~molgym.potentials.base.Potential`: each declared capability is
forwarded explicitly (and counted where it evaluates structures), and :attr:`capabilities` is the wrapped
potential's, so ``supports`` and the "not supported" errors answer as the wrapped
potential does. Backend-specific attributes (a MACE model's ``r_max``, ``path``, ``torch_descriptors``...) are
not forwarded: unwrap with :attr:`CountingPotential.inner` to use them, uncounted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from molgym.potentials.base import Potential

__all__ = ["CountingPotential"]


class CountingPotential(Potential):
    """Wraps a potential and counts the structures it evaluates (``calls``) and the evaluations (``batches``).

    Every method that evaluates a list of structures (energies, energies and forces, descriptors, uncertainties,
    committee energies) adds the list's length to ``calls`` and 1 to ``batches``, then calls the wrapped
    potential's method of the same name once, so a wrapped potential's own internal calls are never counted twice.
    """

    def __init__(self, inner: Potential):
        self.inner = inner
        self.name = inner.name
        self.species = inner.species
        self.calls = 0
        self.batches = 0

    def _count(self, structures: Sequence[Atoms]) -> None:
        self.calls += len(structures)
        self.batches += 1

    # --- asking: the wrapped potential's answers ------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:  # type: ignore[override]
        """The wrapped potential's capabilities."""
        return self.inner.capabilities

    # --- evaluations: forwarded and counted -------------------------------------------------------------------------
    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        """The wrapped potential's energies (counted)."""
        self._count(structures)
        return self.inner.energies(structures)

    def energies_and_forces(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The wrapped potential's energies and forces (counted)."""
        self._count(structures)
        return self.inner.energies_and_forces(structures)

    def descriptors(self, structures: Sequence[Atoms], **options) -> list[np.ndarray]:
        """The wrapped potential's per-atom descriptors (counted); ``options`` (e.g. MACE's ``num_layers``) are
        passed on."""
        self._count(structures)
        return self.inner.descriptors(structures, **options)

    def uncertainties(self, structures: Sequence[Atoms]) -> np.ndarray:
        """The wrapped potential's uncertainties (counted)."""
        self._count(structures)
        return self.inner.uncertainties(structures)

    def energies_and_uncertainties(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """The wrapped potential's energies and uncertainties (counted)."""
        self._count(structures)
        return self.inner.energies_and_uncertainties(structures)

    def committee_energies(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """The wrapped potential's energies and committee members' energies (counted)."""
        self._count(structures)
        return self.inner.committee_energies(structures)

    # --- committee attributes: forwarded ------------------------------------------------------------------------------
    @property
    def committee_size(self) -> int:
        """The wrapped potential's number of committee members."""
        return self.inner.committee_size

    @property
    def uncertainty_scale(self) -> float:
        """The wrapped potential's uncertainty calibration factor."""
        return self.inner.uncertainty_scale

