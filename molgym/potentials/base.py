"""The ``Potential`` interface every reward and every metric in molgym talks to.

A potential maps a *list* of ``ase.Atoms`` to energies in eV in one call, so that backends that can batch (MACE)
evaluate many structures in one forward pass, and backends that cannot (xTB, PM6) loop internally. All
structures are isolated, neutral molecules (or fragments of them) in the lowest spin state.

Every capability that environments, metrics and generators use is declared here, on :class:`Potential`, whether
or not a backend has it: energies and forces (every potential), per-atom descriptors (MACE), uncertainties and
committee members (a MACE model with a committee). A backend without one raises
:class:`UnsupportedCapabilityError`, which names the potential, the capability and what provides it. Callers ask
first with :meth:`Potential.supports` (or read :attr:`Potential.capabilities`) instead of probing attributes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
from ase import Atoms

__all__ = [
    "CAPABILITIES",
    "Potential",
    "PotentialError",
    "UnsupportedCapabilityError",
    "UnsupportedElementError",
    "SCFConvergenceError",
    "lowest_multiplicity",
]

_COMMITTEE_HINT = (
    "use load_potential('default') with its shipped committee (molgym/potentials/models/default-committee.npz), "
    "or load_potential(model_path, committee=heads.npz) with heads from `molgym potential committee`"
)

#: Every capability a potential can have, with what provides it (the hint of :class:`UnsupportedCapabilityError`).
#:
#: - ``"energies"``: :meth:`Potential.energies` (every potential).
#: - ``"forces"``: :meth:`Potential.energies_and_forces` (every potential).
#: - ``"descriptors"``: :meth:`Potential.descriptors`, per-atom invariant features (MACE models).
#: - ``"uncertainties"``: :meth:`Potential.uncertainties` and :meth:`Potential.energies_and_uncertainties`.
#: - ``"committee"``: :meth:`Potential.committee_energies`, :attr:`Potential.committee_size` and
#:   :attr:`Potential.uncertainty_scale` (a last-layer committee, :mod:`molgym.potentials.committee`); a
#:   potential with a committee also has ``"uncertainties"`` (the calibrated spread of its members).
CAPABILITIES: dict[str, str] = {
    "energies": "every potential provides energies",
    "forces": "every potential provides forces",
    "descriptors": "per-atom descriptors come from MACE models (load_potential('default') or a MACE .model file)",
    "uncertainties": _COMMITTEE_HINT,
    "committee": _COMMITTEE_HINT,
}


class PotentialError(RuntimeError):
    """A potential could not evaluate a structure."""


class UnsupportedElementError(ValueError):
    """A structure contains an element that the potential does not cover."""


class SCFConvergenceError(PotentialError):
    """A semi-empirical SCF did not converge. ``index`` is the position of the structure in the call's list."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class UnsupportedCapabilityError(NotImplementedError):
    """A potential was asked for a capability it does not have (descriptors from xTB, uncertainties from a MACE
    model without a committee).

    The message names the potential, the capability and what provides it. Deliberately *not* a
    :class:`PotentialError`: that one means "this structure failed" and is caught per structure by the tolerant
    batch (:mod:`molgym.potentials.batching`); a missing capability fails every structure and must surface.

    Attributes:
        potential: the potential's :attr:`~Potential.name`.
        capability: the missing capability, one of :data:`CAPABILITIES`.
    """

    def __init__(self, potential: str, capability: str):
        self.potential, self.capability = potential, capability
        super().__init__(f"potential {potential!r} does not provide {capability}: {CAPABILITIES[capability]}")


class _UnsupportedAttributeError(UnsupportedCapabilityError, AttributeError):
    """An :class:`UnsupportedCapabilityError` raised by a capability *attribute* (``committee_size``,
    ``uncertainty_scale``): also an ``AttributeError``, so ``hasattr``/``getattr(..., default)`` report the
    attribute as absent, and a subclass's ``__getattr__`` fallback (a forwarding wrapper) is still consulted."""


def lowest_multiplicity(numbers: Sequence[int] | np.ndarray, charge: int = 0) -> int:
    """Spin multiplicity of the lowest spin state: singlet for an even electron count, doublet for odd."""
    electrons = int(np.sum(numbers)) - charge
    return 1 if electrons % 2 == 0 else 2


class Potential(ABC):
    """A potential energy function for isolated molecules.

    Subclasses set ``name`` and ``species`` and implement :meth:`energies_and_forces`; batching backends also
    override :meth:`energies` to skip the force computation. A backend with more (descriptors, a committee)
    adds those names to :attr:`capabilities` and overrides the matching methods; the defaults here raise
    :class:`UnsupportedCapabilityError`.
    """

    #: Human-readable name, e.g. ``"GFN2-xTB"`` or ``"MACE(default)"``.
    name: str = "potential"
    #: Atomic numbers the potential covers.
    species: frozenset[int] = frozenset()
    #: What this potential can do: names from :data:`CAPABILITIES`. Ask with :meth:`supports`.
    capabilities: frozenset[str] = frozenset({"energies", "forces"})

    # --- asking ---------------------------------------------------------------------------------------------------
    def supports(self, capability: str) -> bool:
        """Whether this potential has ``capability`` (a name from :data:`CAPABILITIES`; ``ValueError`` for any other
        name, so a misspelt capability is an error rather than a silent ``False``)."""
        if capability not in CAPABILITIES:
            raise ValueError(f"unknown potential capability {capability!r}; capabilities: {', '.join(CAPABILITIES)}")
        return capability in self.capabilities

    def require(self, capability: str) -> None:
        """Raise :class:`UnsupportedCapabilityError` unless this potential has ``capability``: for callers that
        should fail before any long work starts rather than at the first evaluation."""
        if not self.supports(capability):
            raise UnsupportedCapabilityError(self.name, capability)

    # --- energies and forces (every potential) ------------------------------------------------------------------
    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        """Total energies in eV, one per structure, as a float64 array."""
        return self.energies_and_forces(structures)[0]

    @abstractmethod
    def energies_and_forces(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (eV, shape ``(n,)``) and forces (eV/Å, one ``(n_atoms, 3)`` array per structure)."""

    # --- descriptors (MACE) ---------------------------------------------------------------------------------------
    def descriptors(self, structures: Sequence[Atoms]) -> list[np.ndarray]:
        """Per-atom invariant features, one ``(n_atoms, n_features)`` array per structure (capability
        ``"descriptors"``: MACE models, :meth:`molgym.potentials.mace.MACEPotential.descriptors`)."""
        raise UnsupportedCapabilityError(self.name, "descriptors")

    # --- uncertainties and committee (a MACE model with a committee) ----------------------------------------------
    def uncertainties(self, structures: Sequence[Atoms]) -> np.ndarray:
        """Predicted energy uncertainty in eV, one per structure (calibrated against the reference).

        Capability ``"uncertainties"``: committee potentials
        (:class:`molgym.potentials.committee.CommitteeMACEPotential`, which ``load_potential("default")`` returns
        when the default model's committee ships).
        """
        raise UnsupportedCapabilityError(self.name, "uncertainties")

    def energies_and_uncertainties(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """Energies and calibrated uncertainties (eV), one per structure, from one evaluation (capability
        ``"uncertainties"``)."""
        raise UnsupportedCapabilityError(self.name, "uncertainties")

    def committee_energies(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """Energies ``(n,)`` and the committee members' energies ``(n, committee_size)`` in eV, from one batched
        evaluation (capability ``"committee"``). The environments' step uncertainty is the spread of the members'
        rewards times :attr:`uncertainty_scale`."""
        raise UnsupportedCapabilityError(self.name, "committee")

    @property
    def committee_size(self) -> int:
        """Number of committee members, the second dimension of :meth:`committee_energies` (capability
        ``"committee"``; without it, reading this raises :class:`UnsupportedCapabilityError`, which is also an
        ``AttributeError``)."""
        raise _UnsupportedAttributeError(self.name, "committee")

    @property
    def uncertainty_scale(self) -> float:
        """Calibration factor: an uncertainty is this times the standard deviation of the members' energies (or
        rewards) (capability ``"committee"``; without it, reading this raises :class:`UnsupportedCapabilityError`,
        which is also an ``AttributeError``)."""
        raise _UnsupportedAttributeError(self.name, "committee")

    # --- shared helpers -------------------------------------------------------------------------------------------
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
