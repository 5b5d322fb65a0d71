"""GFN-xTB through tblite: molgym's reference method for labels and referee energies.

Convention (shared with the dataset builder and the environments' rewards): neutral molecules in the lowest
spin state, i.e. ``uhf = n_electrons % 2`` unpaired electrons (a doublet for radicals). tblite is silenced
(``verbosity=0``). A failed SCF becomes :class:`~molgym.potentials.base.SCFConvergenceError`, which callers
in a loop can catch per structure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from molgym.potentials.base import Potential, SCFConvergenceError, lowest_multiplicity

#: tblite method names, keyed by the lower-case spec ``load_potential`` accepts.
XTB_METHODS = {"xtb": "GFN2-xTB", "gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB", "ipea1-xtb": "IPEA1-xTB"}


class XTBPotential(Potential):
    """GFN1/GFN2-xTB energies and forces via tblite, one structure at a time.

    Args:
        method: ``"GFN2-xTB"`` (default), ``"GFN1-xTB"`` or ``"IPEA1-xTB"``.
        accuracy: tblite's numerical accuracy (smaller is tighter).
        max_iterations: SCF iteration limit before :class:`SCFConvergenceError`.
        electronic_temperature: Fermi smearing temperature in K (tblite's default is 300 K).
    """

    def __init__(
        self,
        method: str = "GFN2-xTB",
        accuracy: float = 1.0,
        max_iterations: int = 250,
        electronic_temperature: float = 300.0,
    ):
        allowed = sorted(set(XTB_METHODS.values()))
        if method not in allowed:
            raise ValueError(f"unknown xTB method {method!r}; allowed: {', '.join(allowed)}")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.method = method
        self.accuracy = float(accuracy)
        self.max_iterations = int(max_iterations)
        self.electronic_temperature = float(electronic_temperature)
        self.name = method
        # tblite's GFN parametrisations cover H to Rn.
        self.species = frozenset(range(1, 87))

    def _singlepoint(self, atoms: Atoms, index: int):
        from tblite.exceptions import TBLiteRuntimeError
        from tblite.interface import Calculator

        uhf = lowest_multiplicity(atoms.numbers) - 1
        calc = Calculator(self.method, atoms.numbers, atoms.positions / Bohr, charge=0.0, uhf=uhf)
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy)
        calc.set("max-iter", self.max_iterations)
        calc.set("temperature", self.electronic_temperature * 3.166808578545117e-06)  # K -> Hartree
        try:
            return calc.singlepoint()
        except TBLiteRuntimeError as err:
            raise SCFConvergenceError(
                f"{self.method} failed on structure {index} ({atoms.get_chemical_formula()}): {err}", index=index
            ) from err

    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        self.check_species(structures)
        return np.array(
            [self._singlepoint(a, i).get("energy") * Hartree for i, a in enumerate(structures)], dtype=np.float64
        )

    def energies_and_forces(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        self.check_species(structures)
        energies, forces = [], []
        for i, atoms in enumerate(structures):
            res = self._singlepoint(atoms, i)
            energies.append(res.get("energy") * Hartree)
            forces.append(-np.asarray(res.get("gradient")) * Hartree / Bohr)
        return np.array(energies, dtype=np.float64), forces
