"""Potentials: the energy functions behind rewards, metrics and labels.

``load_potential(spec)`` returns a :class:`Potential` for the shipped MACE model (``"default"``), GFN2-xTB
(``"xtb"``), PM6 (``"pm6"``) or any MACE model file. Backends import torch, tblite or Sparrow only when loaded.
What a potential can do beyond energies and forces (descriptors, uncertainties, a committee) is asked with
``potential.supports(name)``; a missing capability raises :class:`UnsupportedCapabilityError`.
"""

from molgym.potentials.base import (
    CAPABILITIES,
    Potential,
    PotentialError,
    SCFConvergenceError,
    UnsupportedCapabilityError,
    UnsupportedElementError,
    lowest_multiplicity,
)
from molgym.potentials.registry import ModelNotAvailableError, load_potential, shipped_model_card

__all__ = [
    "CAPABILITIES",
    "Potential",
    "PotentialError",
    "SCFConvergenceError",
    "UnsupportedCapabilityError",
    "UnsupportedElementError",
    "ModelNotAvailableError",
    "lowest_multiplicity",
    "load_potential",
    "shipped_model_card",
]
