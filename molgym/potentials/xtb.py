"""GFN-xTB through tblite: molgym's reference method for labels and referee energies.

Convention (shared with the dataset builder and the environments' rewards): neutral molecules in the lowest
spin state, i.e. ``uhf = n_electrons % 2`` unpaired electrons (a doublet for radicals). tblite is silenced
(``verbosity=0``). A failed SCF becomes :class:`~molgym.potentials.base.SCFConvergenceError`, which callers
in a loop can catch per structure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from molgym.potentials.base import Potential, SCFConvergenceError, lowest_multiplicity

#: tblite method names, keyed by the lower-case spec ``load_potential`` accepts.
XTB_METHODS = {"xtb": "GFN2-xTB", "gfn2-xtb": "GFN2-xTB", "gfn1-xtb": "GFN1-xTB", "ipea1-xtb": "IPEA1-xTB"}


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class XTBPotential(Potential):
    """GFN1/GFN2-xTB energies and forces via tblite, one structure at a time.

    Args:
        method: ``"GFN2-xTB"`` (default), ``"GFN1-xTB"`` or ``"IPEA1-xTB"``.
        accuracy: tblite's numerical accuracy (smaller is tighter).
        max_iterations: SCF iteration limit before :class:`SCFConvergenceError`.
        electronic_temperature: Fermi smearing temperature in K (tblite's default is 300 K).
        workers: structures of one call evaluated at the same time, in threads (tblite releases the GIL while it
            computes: 64 random 19-atom structures took 8.0 instead of 12.1 ms each with 2 threads on 2 cores);
            default ``MOLGYM_XTB_WORKERS``, else the number of CPUs this process may use. Runners that already
            run one job per core set ``MOLGYM_XTB_WORKERS=1``. Results do not depend on it.
    """

    def __init__(
        self,
        method: str = "GFN2-xTB",
        accuracy: float = 1.0,
        max_iterations: int = 250,
        electronic_temperature: float = 300.0,
        workers: int | None = None,
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
        if workers is None:
            workers = os.environ.get("MOLGYM_XTB_WORKERS") or _usable_cpus()
        try:
            self.workers = int(workers)
        except (TypeError, ValueError):
            self.workers = 0
        if self.workers < 1:
            raise ValueError(f"workers (MOLGYM_XTB_WORKERS) must be a positive integer, got {workers!r}")
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

    def _map(self, fn: Callable, structures: Sequence[Atoms]) -> list:
        """``fn(atoms, index)`` for every structure, in order, in up to ``workers`` threads; the first failure (in
        order) is raised."""
        jobs = list(enumerate(structures))
        if self.workers == 1 or len(jobs) < 2:
            return [fn(a, i) for i, a in jobs]
        with ThreadPoolExecutor(min(self.workers, len(jobs))) as pool:
            return list(pool.map(lambda job: fn(job[1], job[0]), jobs))

    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        self.check_species(structures)
        results = self._map(lambda a, i: self._singlepoint(a, i).get("energy") * Hartree, structures)
        return np.array(results, dtype=np.float64)

    def energies_and_forces(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        self.check_species(structures)

        def one(atoms: Atoms, index: int) -> tuple[float, np.ndarray]:
            res = self._singlepoint(atoms, index)
            return res.get("energy") * Hartree, -np.asarray(res.get("gradient")) * Hartree / Bohr

        results = self._map(one, structures)
        return np.array([e for e, _ in results], dtype=np.float64), [f for _, f in results]
