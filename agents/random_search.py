"""Random structure search: the baseline of the MACE hybrid-perovskite random-structure-search paper, for
molecules.

For each sample: place the task's atoms one at a time at random positions that obey MolGym's placement rules
(:func:`molgym.reward.placement_problem`: no two atoms closer than ``MIN_DISTANCE``; H and F within
``MAX_TERMINAL_DISTANCE`` of a heavy atom) and a stricter clash rule (no two atoms closer than ``clash`` x the
sum of their covalent radii), each new atom at a bonding-like distance from a randomly chosen atom already
placed (heavy atoms first, then H and F); then relax the structure with the potential (ASE BFGS on
``potential.as_calculator()``). With ``tries > 1`` it keeps the lowest-energy relaxed structure of that many
independent tries. Fully seeded; every energy/force evaluation is counted in ``potential_calls``.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from molgym.chem import atomic_number
from molgym.generator import Generator, Progress
from molgym.data.placement import random_structure
from molgym.potentials.base import PotentialError

__all__ = ["RandomSearch"]


class RandomSearch(Generator):
    """Random placements + relaxation with the potential.

    Args:
        potential: potential spec used for relaxation (default ``"auto"``: shipped MACE, else GFN2-xTB).
        fmax: BFGS force threshold (eV/Å).
        steps: maximum BFGS steps per relaxation.
        tries: independent random structures per sample; the lowest-energy relaxed one is returned.
        stretch: range of the anchor-distance factor (x sum of covalent radii).
        clash: minimum distance factor (x sum of covalent radii) between any two placed atoms.
    """

    name = "random_search"
    version = "1"

    def __init__(self, potential="auto", fmax: float = 0.05, steps: int = 200, tries: int = 1,
                 stretch: tuple[float, float] = (0.95, 1.35), clash: float = 0.8):
        if steps < 0 or tries < 1 or fmax <= 0:
            raise ValueError(f"need steps >= 0, tries >= 1 and fmax > 0; got steps={steps}, tries={tries}, fmax={fmax}")
        super().__init__(potential=potential, fmax=fmax, steps=steps, tries=tries, stretch=list(stretch), clash=clash)
        self.fmax, self.steps, self.tries = float(fmax), int(steps), int(tries)
        self.stretch, self.clash = (float(stretch[0]), float(stretch[1])), float(clash)
        self.failed_relaxations = 0

    def _relax(self, atoms: Atoms) -> tuple[Atoms, float]:
        from ase.optimize import BFGS

        pot = self.potential()
        work = atoms.copy()
        work.calc = pot.as_calculator()
        if self.steps > 0:
            BFGS(work, logfile=None).run(fmax=self.fmax, steps=self.steps)
        energy = float(work.get_potential_energy())
        return Atoms(numbers=work.numbers, positions=work.positions), energy

    def generate(self, task, n: int, seed: int, progress: Progress | None = None) -> list[Atoms]:
        """``n`` relaxed random structures for ``task`` (seeded by ``seed``); ``progress(k)`` after each one."""
        task = self.require_task(task)
        pot = self.potential()
        pot.check_species([Atoms(numbers=[atomic_number(s) for b in task.bags(1, seed) for s in b])])
        rng = np.random.default_rng([seed, 15485863])
        out = []
        for bag in task.bags(n, seed):
            best: tuple[float, Atoms] | None = None
            attempts = 0
            while best is None or attempts < self.tries:
                attempts += 1
                start = random_structure(bag, rng, stretch=self.stretch, clash=self.clash)
                try:
                    relaxed, energy = self._relax(start)
                except PotentialError:
                    self.failed_relaxations += 1
                    if attempts > 20 * self.tries:
                        raise
                    continue
                if np.isfinite(energy) and (best is None or energy < best[0]):
                    best = (energy, relaxed)
            relaxed = best[1]
            relaxed.info["energy"] = best[0]
            out.append(relaxed)
            if progress is not None:
                progress(len(out))
        return out

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["failed_relaxations"] = self.failed_relaxations
        return meta
