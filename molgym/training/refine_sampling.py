"""Step 1 of a refinement round, *sample*: candidates where the current model may be wrong.

Biased MD on ``E - tau * σ``, random-structure-search relaxation paths under the model, and generator samples
with their build prefixes (see :mod:`molgym.training.refine`). The refinement loop calls these helpers; they
are private to it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from molgym.training.refine_config import RefineConfig


def _too_close(atoms: Atoms, min_distance: float) -> bool:
    if len(atoms) < 2:
        return False
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return bool(d.min() < min_distance)


def _build_prefixes(atoms: Atoms) -> list[Atoms]:
    """Canvases of a rollout that builds ``atoms`` heavy atoms first (then H/F), 2 atoms and more."""
    heavy = [i for i, z in enumerate(atoms.numbers) if z not in (1, 9)]
    order = heavy + [i for i in range(len(atoms)) if i not in heavy]
    return [Atoms(numbers=atoms.numbers[order[:k]], positions=atoms.positions[order[:k]])
            for k in range(2, len(atoms) + 1)]


def _generator_samples(config: RefineConfig, potential, seed: int, say) -> list[Atoms]:
    from molgym.benchmark import get_generator, get_task

    out: list[Atoms] = []
    for name in config.generators:
        generator = get_generator(name, potential=potential, **config.generator_options.get(name, {}))
        for k, formula in enumerate(config.formulas):
            if not config.samples_per_formula:
                continue
            t = time.time()
            molecules = generator.generate(get_task(formula), config.samples_per_formula, seed=seed * 1000 + k)
            for mol in molecules:
                mol = Atoms(numbers=mol.numbers, positions=mol.positions)
                mol.info["source"] = f"{name}:{formula}"
                out.append(mol)
                for prefix in _build_prefixes(mol)[:-1]:
                    prefix.info["source"] = f"{name}:{formula}:prefix"
                    out.append(prefix)
            say(f"  {name} {formula}: {len(molecules)} samples in {time.time() - t:.0f} s")
    return out


def _relaxation_paths(config: RefineConfig, potential, seed: int, say) -> list[Atoms]:
    """Frames of random-structure-search relaxations under ``potential`` (every ``relax_interval`` steps)."""
    from ase.optimize import BFGS

    from molgym.data.placement import random_structure
    from molgym.chem import parse_formula
    from molgym.potentials.base import PotentialError

    frames: list[Atoms] = []
    for k, formula in enumerate(config.formulas):
        t = time.time()
        rng = np.random.default_rng([seed, k, 13])
        bag = parse_formula(formula)
        for j in range(config.relaxations_per_formula):
            atoms = random_structure(bag, rng)
            atoms.calc = potential.as_calculator()
            opt = BFGS(atoms, logfile=None)
            path: list[Atoms] = []

            def keep(atoms=atoms, path=path, j=j):
                snap = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
                snap.info.update(source=f"relax:{formula}:{j}", relax_step=opt.nsteps)
                path.append(snap)

            opt.attach(keep, interval=config.relax_interval)
            try:
                opt.run(fmax=0.05, steps=config.relax_steps)
            except (PotentialError, ValueError) as err:
                say(f"  relaxation {formula} {j} stopped: {type(err).__name__}")
            keep()
            frames.extend(path)
        say(f"  relaxations {formula}: {config.relaxations_per_formula} paths in {time.time() - t:.0f} s")
    return frames


def _biased_md(config: RefineConfig, potential, starts: Sequence[Atoms], seed: int, say) -> list[Atoms]:
    """Langevin MD on ``E - tau σ`` from each start; a snapshot every ``md_interval`` steps (with its σ)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from molgym.potentials.committee import HALCalculator

    snapshots: list[Atoms] = []
    t = time.time()
    for k, start in enumerate(starts):
        atoms = Atoms(numbers=start.numbers, positions=start.positions)
        atoms.calc = HALCalculator(potential, config.tau)
        rng = np.random.default_rng([seed, k, 7])
        MaxwellBoltzmannDistribution(atoms, temperature_K=config.temperature_K, rng=rng)
        dyn = Langevin(atoms, config.timestep_fs * units.fs, temperature_K=config.temperature_K, friction=0.02,
                       rng=rng)
        for step in range(config.md_interval, config.md_steps + 1, config.md_interval):
            try:
                dyn.run(config.md_interval)
            except Exception as err:  # a blown-up trajectory ends; what it found so far is kept
                say(f"  MD {k} stopped at step {step}: {type(err).__name__}")
                break
            sigma = float(atoms.calc.results.get("sigma", np.nan))
            snap = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
            snap.info.update(source=f"hal_md:{k}", md_step=step, sigma=sigma)
            snapshots.append(snap)
            if not np.isfinite(sigma) or sigma > config.max_sigma or _too_close(atoms, config.min_distance):
                break
    say(f"  biased MD: {len(starts)} trajectories, {len(snapshots)} snapshots in {time.time() - t:.0f} s")
    return snapshots
