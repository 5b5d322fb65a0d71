"""The ``Potential`` interface every reward and every metric in molgym talks to.

A potential maps a *list* of ``ase.Atoms`` to energies in eV in one call, so that backends that can batch (MACE)
evaluate many structures in one forward pass, and backends that cannot (xTB, PM6) loop internally. All
structures are isolated, neutral molecules (or fragments of them) in the lowest spin state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from ase import Atoms

__all__ = [
    "Potential",
    "PotentialError",
    "UnsupportedElementError",
    "SCFConvergenceError",
    "lowest_multiplicity",
]


class PotentialError(RuntimeError):
    """A potential could not evaluate a structure."""


class UnsupportedElementError(ValueError):
    """A structure contains an element that the potential does not cover."""


class SCFConvergenceError(PotentialError):
    """A semi-empirical SCF did not converge. ``index`` is the position of the structure in the call's list."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


def lowest_multiplicity(numbers: Sequence[int] | np.ndarray, charge: int = 0) -> int:
    """Spin multiplicity of the lowest spin state: singlet for an even electron count, doublet for odd."""
    electrons = int(np.sum(numbers)) - charge
    return 1 if electrons % 2 == 0 else 2


class Potential(ABC):
    """A potential energy function for isolated molecules.

    Subclasses set ``name`` and ``species`` and implement :meth:`energies_and_forces`; batching backends also
    override :meth:`energies` to skip the force computation.
    """

    #: Human-readable name, e.g. ``"GFN2-xTB"`` or ``"MACE(default)"``.
    name: str = "potential"
    #: Atomic numbers the potential covers.
    species: frozenset[int] = frozenset()

    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        """Total energies in eV, one per structure, as a float64 array."""
        return self.energies_and_forces(structures)[0]

    @abstractmethod
    def energies_and_forces(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (eV, shape ``(n,)``) and forces (eV/Å, one ``(n_atoms, 3)`` array per structure)."""

    def descriptors(self, structures: Sequence[Atoms]) -> list[np.ndarray]:
        """Per-atom invariant features, one ``(n_atoms, n_features)`` array per structure."""
        raise NotImplementedError(f"{self.name} does not provide descriptors")

    #: Whether :meth:`uncertainties` (and ``committee_energies``) work for this potential.
    provides_uncertainty: bool = False

    def uncertainties(self, structures: Sequence[Atoms]) -> np.ndarray:
        """Predicted energy uncertainty in eV, one per structure (calibrated against the reference).

        Implemented by committee potentials (:class:`molgym.potentials.committee.CommitteeMACEPotential`, which
        ``load_potential("default")`` returns when the default model's committee ships).
        """
        raise NotImplementedError(
            f"{self.name} does not provide uncertainties: use load_potential('default') with its shipped committee "
            "(molgym/potentials/models/default-committee.npz), or load_potential(model_path, committee=heads.npz) "
            "with heads from `molgym potential committee`"
        )

    def check_species(self, structures: Sequence[Atoms]) -> None:
        """Raise :class:`UnsupportedElementError` if any structure has an element outside :attr:`species`.

        Called before any evaluation, so a bad element fails fast instead of deep inside a batch.
        """
        if isinstance(structures, Atoms):
            raise TypeError("expected a list of ase.Atoms, got a single ase.Atoms; wrap it in a list")
        for i, atoms in enumerate(structures):
            if not isinstance(atoms, Atoms):
                raise TypeError(f"structure {i} is a {type(atoms).__name__}, expected ase.Atoms")
            bad = set(np.unique(atoms.numbers).tolist()) - self.species
            if bad:
                from ase.data import chemical_symbols

                raise UnsupportedElementError(
                    f"structure {i} ({atoms.get_chemical_formula()}) contains "
                    f"{', '.join(chemical_symbols[z] for z in sorted(bad))}, which {self.name} does not cover; "
                    f"it covers {', '.join(chemical_symbols[z] for z in sorted(self.species))}"
                )
            if not np.all(np.isfinite(atoms.positions)):
                raise ValueError(f"structure {i} ({atoms.get_chemical_formula()}) has non-finite coordinates")

    def as_calculator(self):
        """An ASE calculator backed by this potential (for relaxations and MD with ASE)."""
        from molgym.potentials.calculator import PotentialCalculator

        return PotentialCalculator(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
