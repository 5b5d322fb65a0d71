"""An ASE calculator around any molgym :class:`~molgym.potentials.base.Potential`.

Lets ASE optimisers and MD drivers (``BFGS``, ``Langevin``) run on molgym's potentials, so relaxations in the
benchmark and the dataset builder use the same code path as the rewards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ase.calculators.calculator import Calculator, all_changes

if TYPE_CHECKING:  # the base class builds this calculator (Potential.as_calculator): no import at run time
    from molgym.potentials.base import Potential


class PotentialCalculator(Calculator):
    """ASE calculator giving ``energy`` (eV) and ``forces`` (eV/Å) from a molgym potential."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, potential: Potential, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energies, forces = self.potential.energies_and_forces([self.atoms])
        self.results = {
            "energy": float(energies[0]),
            "free_energy": float(energies[0]),
            "forces": forces[0],
        }
