"""``CountingPotential``: a potential wrapper that counts what is asked of the wrapped one.

The benchmark's cost metrics (potential calls per valid molecule) and the generators' ``potential_calls`` read these
counts, so every structure a generator or a metric evaluates goes through one of these wrappers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from molgym.potentials.base import Potential

__all__ = ["CountingPotential"]


class CountingPotential(Potential):
    """Wraps a potential and counts the structures it evaluates (``calls``) and the batched calls (``batches``)."""

    def __init__(self, inner: Potential):
        self.inner = inner
        self.name = inner.name
        self.species = inner.species
        self.calls = 0
        self.batches = 0

    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        self.calls += len(structures)
        self.batches += 1
        return self.inner.energies(structures)

    def energies_and_forces(self, structures: Sequence[Atoms]):
        self.calls += len(structures)
        self.batches += 1
        return self.inner.energies_and_forces(structures)

    def __getattr__(self, item):  # descriptors, uncertainties, r_max, ... of the wrapped potential
        if item == "inner":
            raise AttributeError(item)
        return getattr(self.inner, item)
