"""Potentials: the energy functions behind rewards, metrics and labels.

``load_potential(spec)`` returns a :class:`Potential` for the shipped MACE model (``"default"``), GFN2-xTB
(``"xtb"``), PM6 (``"pm6"``) or any MACE model file. Backends import torch, tblite or Sparrow only when loaded.
"""

from molgym.potentials.base import (
    Potential,
    PotentialError,
    SCFConvergenceError,
    UnsupportedElementError,
    lowest_multiplicity,
)
from molgym.potentials.registry import ModelNotAvailableError, load_potential, shipped_model_card

__all__ = [
    "Potential",
    "PotentialError",
    "SCFConvergenceError",
    "UnsupportedElementError",
    "ModelNotAvailableError",
    "lowest_multiplicity",
    "load_potential",
    "shipped_model_card",
]
