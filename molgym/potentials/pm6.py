"""PM6 through SCINE Sparrow: the reward method of the original MolGym, for side-by-side comparisons.

Optional: needs the ``pm6`` extra (``pip install molgym[pm6]``, which installs ``scine-sparrow``). Sparrow's
per-calculation banner is silenced with SCINE's silent log. Same spin convention as xTB: neutral, lowest
multiplicity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from molgym.potentials.base import Potential, SCFConvergenceError, lowest_multiplicity

# Elements with PM6 parameters in Sparrow: H-Ba and Lu-Bi (no lanthanides but Lu).
_PM6_SPECIES = frozenset(list(range(1, 57)) + list(range(71, 84)))


def _import_sparrow():
    try:
        import scine_sparrow  # noqa: F401  (registers the Sparrow module with SCINE's module manager)
        import scine_utilities as su
    except ImportError as err:
        raise ImportError(
            "the PM6 potential needs SCINE Sparrow: install the extra with `pip install 'molgym[pm6]'`"
        ) from err
    return su


class PM6Potential(Potential):
    """PM6 (or another Sparrow method: ``"AM1"``, ``"PM3"``, ``"MNDO"``, ``"DFTB3"``) energies and forces."""

    def __init__(self, method: str = "PM6", max_scf_iterations: int = 200):
        su = _import_sparrow()
        self._su = su
        self.method = method
        self.max_scf_iterations = int(max_scf_iterations)
        try:
            self._calc = su.core.ModuleManager.get_instance().get("calculator", method)
        except Exception as err:  # SCINE raises its own exception types for unknown models
            raise ValueError(f"Sparrow has no method {method!r}; try 'PM6', 'AM1', 'PM3', 'MNDO'") from err
        self._calc.log = su.core.Log.silent()
        self.name = method
        self.species = _PM6_SPECIES

    def __getstate__(self):
        return {"method": self.method, "max_scf_iterations": self.max_scf_iterations}

    def __setstate__(self, state):
        self.__init__(**state)

    def _calculate(self, atoms: Atoms, index: int, forces: bool):
        su = self._su
        elements = [getattr(su.ElementType, s) for s in atoms.get_chemical_symbols()]
        calc = self._calc
        multiplicity = lowest_multiplicity(atoms.numbers)
        # Settings before the structure: Sparrow checks a new structure against the current multiplicity.
        calc.settings["molecular_charge"] = 0
        calc.settings["spin_multiplicity"] = multiplicity
        calc.settings["spin_mode"] = "restricted" if multiplicity == 1 else "unrestricted"
        calc.settings["max_scf_iterations"] = self.max_scf_iterations
        calc.structure = su.AtomCollection(elements, atoms.positions / Bohr)
        props = [su.Property.Energy] + ([su.Property.Gradients] if forces else [])
        calc.set_required_properties(props)
        try:
            return calc.calculate()
        except RuntimeError as err:
            raise SCFConvergenceError(
                f"{self.method} failed on structure {index} ({atoms.get_chemical_formula()}): {err}", index=index
            ) from err

    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        self.check_species(structures)
        return np.array(
            [self._calculate(a, i, forces=False).energy * Hartree for i, a in enumerate(structures)],
            dtype=np.float64,
        )

    def energies_and_forces(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        self.check_species(structures)
        energies, forces = [], []
        for i, atoms in enumerate(structures):
            res = self._calculate(atoms, i, forces=True)
            energies.append(res.energy * Hartree)
            forces.append(-np.asarray(res.gradients) * Hartree / Bohr)
        return np.array(energies, dtype=np.float64), forces
