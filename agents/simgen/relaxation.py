"""SiMGen's steps 4-5: hydrogens for each candidate skeleton, batched relaxation with the potential (FIRE), and
the choice of the best candidate of each molecule."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms

from molgym.potentials.base import Potential

from molgym.agents.simgen import hydrogens
from molgym.agents.simgen.settings import _Job


class Relaxation:
    """Mixin of :class:`~molgym.agents.simgen.SiMGen`: candidates, their relaxation and the choice per molecule."""

    def _build(self, score: float, numbers: np.ndarray, pos: np.ndarray, job: _Job) -> tuple[float, Atoms, bool]:
        """Bond orders and hydrogens for one candidate skeleton: ``(score, molecule, feasible)``."""
        skel = self._full(pos, numbers)
        whole = hydrogens.hydrogenate(skel, job.n_hydrogens)
        if whole is None:  # some atom has more bonds than its valence allows: scored as invalid
            return score - 1e6, skel, False
        return score, whole, True

    def _choose(self, candidates: list[list[tuple[float, Atoms, bool]]],
                report: Callable[[float], None] | None = None) -> list[Atoms]:
        """For each molecule, relax its candidates best-score first (one batched relaxation per round, over every
        molecule still without a valid, connected, uncharged candidate) and keep the first valid, connected one
        without formal charges; failing that the first valid and connected one, then the first valid one, then the
        best-scored one. A candidate whose relaxation made it worse by that order is kept unrelaxed.

        A round relaxes the next candidate of every molecule still searching, or, when fewer than
        ``RELAX_ROUND_MIN`` (8) molecules are, the next ``ceil(8 / searching)`` candidates of each (a batched
        relaxation of a few molecules costs little more than of one: the cost of a call is mostly overhead up to
        a few molecules), examined in the same order: the choice is the same as with one candidate per round, in
        fewer rounds (what made small ``n`` slow: 3 molecules took up to 8 rounds of 60 steps)."""
        from molgym.metrics.chemistry import perceive

        order = [sorted(c, key=lambda b: -b[0]) for c in candidates]
        chosen: list[tuple[Atoms, int] | None] = [None] * len(order)  # (molecule, quality 0..3)
        taken = [0] * len(order)  # candidates of each molecule examined so far
        rnd = 0
        while True:
            todo = [k for k in range(len(order))
                    if (chosen[k] is None or chosen[k][1] < 3) and taken[k] < len(order[k])]
            if not todo:
                break
            per = max(1, -(-RELAX_ROUND_MIN // len(todo)))
            picks = []  # (molecule, candidate)
            for k in todo:
                picks += [(k, c) for c in order[k][taken[k]:taken[k] + per]]
                taken[k] = min(taken[k] + per, len(order[k]))
            feasible = [i for i, (_k, p) in enumerate(picks) if p[2]]
            relaxed = [p[1] for _k, p in picks]
            if feasible:
                def step(fraction: float, rnd=rnd) -> None:
                    if report is not None:
                        report(1 - 0.5**rnd * (1 - 0.5 * fraction))
                for i, mol in zip(feasible, self._relax_batch([picks[i][1][1] for i in feasible], step)):
                    relaxed[i] = mol
            for (k, (score, unrelaxed, _ok)), mol in zip(picks, relaxed):
                if chosen[k] is not None and chosen[k][1] == 3:
                    continue  # an earlier candidate of this round already made it
                quality = _quality(perceive(mol))
                if mol is not unrelaxed:
                    # the potential may disagree with the bonding found by the kernel (an under-trained model can
                    # break or form bonds): keep the unrelaxed molecule when it is the better one
                    before = _quality(perceive(unrelaxed))
                    if before > quality:
                        mol, quality = unrelaxed, before
                        mol.info["relaxed"] = False
                    else:
                        mol.info["relaxed"] = True
                mol.info["simgen_score"] = float(score)
                if chosen[k] is None or quality > chosen[k][1]:
                    chosen[k] = (mol, quality)
            rnd += 1
            if report is not None:
                report(1 - 0.5**rnd)
        return [c[0] for c in chosen]

    def _relax_batch(self, molecules: list[Atoms], callback: Callable[[float], None] | None = None) -> list[Atoms]:
        """Relax all ``molecules`` together with FIRE (one batched energies-and-forces call per step; the
        fragment's atoms stay fixed; ``callback(fraction)`` after every step). Molecules whose evaluation fails are
        returned unrelaxed."""
        from molgym.potentials.base import PotentialError

        if self.relax_steps == 0 or not molecules:
            return molecules
        pot = self.potential()
        self.relaxations += len(molecules)
        n_fixed = 0 if self.fragment is None else len(self.fragment)
        try:
            relaxed, energies = fire_relax(pot, molecules, steps=self.relax_steps, fmax=self.relax_fmax,
                                           n_fixed=n_fixed, callback=callback)
        except (PotentialError, ValueError):
            if len(molecules) == 1:
                return molecules
            return [m for chunk in ([x] for x in molecules) for m in self._relax_batch(chunk)]
        for mol, e in zip(relaxed, energies):
            mol.info["energy"] = float(e)
        return relaxed


#: Fewest candidates one relaxation round of :meth:`SiMGen._choose` relaxes while enough remain.
RELAX_ROUND_MIN = 8


def _quality(perception) -> int:
    """0 invalid, 1 valid, 2 valid and connected, 3 valid, connected and without formal charges."""
    quality = int(perception.valid) + int(perception.valid and perception.connected)
    if quality == 2 and not any(a.GetFormalCharge() for a in perception.mol.GetAtoms()):
        quality = 3
    return quality


def fire_relax(potential: Potential, molecules: list[Atoms], steps: int = 60, fmax: float = 0.05,
               n_fixed: int = 0, max_move: float = 0.2,
               callback: Callable[[float], None] | None = None) -> tuple[list[Atoms], np.ndarray]:
    """FIRE (Bitzek et al. 2006) on many molecules at once: one ``energies_and_forces`` call per step for all
    molecules not yet converged (max force below ``fmax`` eV/Å). The first ``n_fixed`` atoms of each stay put.
    ``callback(fraction)`` is called after every step with the fraction of ``steps`` done.

    Returns the relaxed molecules (new ``ase.Atoms``) and their final energies (eV).
    """
    pos = [m.positions.copy() for m in molecules]
    vel = [np.zeros_like(p) for p in pos]
    dt = np.full(len(molecules), 0.1)
    alpha = np.full(len(molecules), 0.1)
    since_negative = np.zeros(len(molecules), dtype=int)
    energies = np.full(len(molecules), np.nan)
    active = list(range(len(molecules)))
    for _step in range(steps + 1):
        if not active:
            break
        batch = [Atoms(numbers=molecules[i].numbers, positions=pos[i]) for i in active]
        e, forces = potential.energies_and_forces(batch)
        still = []
        for k, i in enumerate(active):
            f = forces[k].copy()
            f[:n_fixed] = 0.0
            energies[i] = e[k]
            if np.abs(f).max(initial=0.0) < fmax or _step == steps or not np.all(np.isfinite(f)):
                continue
            still.append(i)
            power = float(np.sum(f * vel[i]))
            fn = np.linalg.norm(f)
            vn = np.linalg.norm(vel[i])
            vel[i] = (1 - alpha[i]) * vel[i] + alpha[i] * (f / max(fn, 1e-12)) * vn
            if power > 0:
                since_negative[i] += 1
                if since_negative[i] > 5:
                    dt[i] = min(dt[i] * 1.1, 1.0)
                    alpha[i] *= 0.99
            else:
                since_negative[i] = 0
                dt[i] *= 0.5
                alpha[i] = 0.1
                vel[i][:] = 0.0
            vel[i] = vel[i] + dt[i] * f
            move = dt[i] * vel[i]
            norm = np.linalg.norm(move, axis=1, keepdims=True)
            move = move * np.minimum(1.0, max_move / np.maximum(norm, 1e-12))
            move[:n_fixed] = 0.0
            pos[i] = pos[i] + move
        active = still
        if callback is not None:
            callback((_step + 1) / (steps + 1))
    return [Atoms(numbers=m.numbers.copy(), positions=p) for m, p in zip(molecules, pos)], energies
