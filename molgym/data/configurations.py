"""Configurations of the dataset's categories, from one molecule (pure geometry, plus a short MD run for the
thermal ones; labelling happens afterwards, in :mod:`molgym.data.dataset_shards`)."""

from __future__ import annotations

import logging

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

from molgym.data.dataset_config import ELEMENTS, DatasetConfig
from molgym.data.placement import random_position
from molgym.reward import MAX_TERMINAL_DISTANCE, MIN_DISTANCE

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# configuration generators (pure geometry; labelling happens afterwards)
# --------------------------------------------------------------------------------------------------------------
def build_order(atoms: Atoms, rng: np.random.Generator) -> np.ndarray:
    """An atom-by-atom build order: heavy atoms in breadth-first order over covalent bonds from a random start,
    each followed at once by the hydrogens bonded to it (every H goes with its nearest heavy atom)."""
    numbers = atoms.numbers
    heavy = np.nonzero(numbers > 1)[0]
    hydrogens = np.nonzero(numbers == 1)[0]
    if len(heavy) == 0:
        return rng.permutation(len(atoms))
    pos = atoms.positions
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    radii = covalent_radii[numbers]
    bonded = d < 1.2 * (radii[:, None] + radii[None, :])
    np.fill_diagonal(bonded, False)
    owner = {int(h): int(heavy[np.argmin(d[h, heavy])]) for h in hydrogens}
    own_h: dict[int, list[int]] = {int(a): [] for a in heavy}
    for h, a in owner.items():
        own_h[a].append(h)
    order: list[int] = []
    seen: set[int] = set()
    remaining = [int(a) for a in rng.permutation(heavy)]
    while remaining:
        start = remaining.pop(0)
        if start in seen:
            continue
        queue = [start]
        seen.add(start)
        while queue:
            a = queue.pop(0)
            order.append(a)
            order.extend(own_h[a])
            nbrs = [int(b) for b in np.nonzero(bonded[a])[0] if numbers[b] > 1 and int(b) not in seen]
            for b in rng.permutation(nbrs) if nbrs else []:
                seen.add(int(b))
                queue.append(int(b))
    return np.array(order, dtype=np.int64)


def thermal_configurations(atoms: Atoms, potential, rng: np.random.Generator, config: DatasetConfig) -> list[Atoms]:
    """Snapshots of a short Langevin MD run on ``potential`` at a temperature drawn from the configured range.

    Velocities start at twice the target temperature so that, after equipartition between kinetic and potential
    energy, the geometry is distorted roughly as at the target temperature within the short run.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from molgym.potentials.base import PotentialError

    n = config.thermal_per_molecule
    if n == 0 or len(atoms) < 2:
        return []
    temperature = float(rng.uniform(*config.temperature_range))
    work = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    work.calc = potential.as_calculator()
    MaxwellBoltzmannDistribution(work, temperature_K=2 * temperature, rng=rng)
    dyn = Langevin(work, timestep=config.md_timestep_fs * units.fs, temperature_K=temperature,
                   friction=config.md_friction_per_fs / units.fs, fixcm=False, rng=rng)
    every = max(1, config.md_steps // n)
    snapshots = []
    try:
        for k in range(n):
            dyn.run(every)
            snap = Atoms(numbers=work.numbers, positions=work.positions.copy())
            snap.info["temperature_K"] = temperature
            snap.info["md_time_fs"] = (k + 1) * every * config.md_timestep_fs
            snapshots.append(snap)
    except PotentialError as err:
        log.info("thermal MD stopped early: %s", err)
    return snapshots


def prefix(atoms: Atoms, order: np.ndarray, k: int) -> Atoms:
    """The first ``k`` atoms of ``atoms`` in build ``order``."""
    idx = order[:k]
    return Atoms(numbers=atoms.numbers[idx], positions=atoms.positions[idx].copy())


def build_prefixes(atoms: Atoms, order: np.ndarray, rng: np.random.Generator, n: int) -> list[Atoms]:
    """``n`` distinct random proper prefixes (2..N-1 atoms) of the build order; radicals included."""
    sizes = np.arange(2, len(atoms))
    if len(sizes) == 0 or n == 0:
        return []
    chosen = rng.choice(sizes, size=min(n, len(sizes)), replace=False)
    out = []
    for k in sorted(int(s) for s in chosen):
        p = prefix(atoms, order, k)
        p.info["step"] = k
        out.append(p)
    return out


def misplaced_configurations(atoms: Atoms, order: np.ndarray, rng: np.random.Generator, n: int) -> list[Atoms]:
    """Canvases (random prefixes) plus the next atom placed where the rules allow but chemistry does not: at
    ``MIN_DISTANCE..MAX_TERMINAL_DISTANCE`` Å from a random canvas atom, away from its true position."""
    out = []
    for _ in range(n):
        if len(atoms) < 3:
            break
        k = int(rng.integers(2, len(atoms)))
        canvas = prefix(atoms, order, k)
        z = int(atoms.numbers[order[k]])
        pos = random_position(canvas, z, rng, MIN_DISTANCE, MAX_TERMINAL_DISTANCE, avoid=atoms.positions[order[k]])
        if pos is None:
            continue
        s = canvas + Atoms(numbers=[z], positions=[pos])
        s.info["step"] = k + 1
        out.append(s)
    return out


def close_contact_configurations(atoms: Atoms, rng: np.random.Generator, n: int,
                                 distance_range: tuple[float, float]) -> list[Atoms]:
    """Copies of ``atoms`` with one atom moved towards a neighbour to a distance in ``distance_range`` (down to
    ``MIN_DISTANCE``), keeping every other pair at least ``MIN_DISTANCE`` apart."""
    out = []
    if len(atoms) < 2:
        return out
    for _ in range(n):
        for _attempt in range(50):
            i = int(rng.integers(len(atoms)))
            d = np.linalg.norm(atoms.positions - atoms.positions[i], axis=1)
            d[i] = np.inf
            near = np.argsort(d)[: min(3, len(atoms) - 1)]
            j = int(rng.choice(near))
            target = float(rng.uniform(*distance_range))
            direction = (atoms.positions[i] - atoms.positions[j]) / d[j]
            pos = atoms.positions.copy()
            pos[i] = pos[j] + target * direction
            dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
            np.fill_diagonal(dist, np.inf)
            if dist.min() >= MIN_DISTANCE - 1e-9:
                s = Atoms(numbers=atoms.numbers, positions=pos)
                s.info["contact_distance"] = target
                out.append(s)
                break
    return out


def alternative_placements(atoms: Atoms, order: np.ndarray, rng: np.random.Generator, count: int) -> list[Atoms]:
    """One canvas (a random prefix) with ``count`` placements of the same next atom: its true position and
    ``count - 1`` random positions the rules allow (0.8-2.0 Å from a random canvas atom)."""
    if len(atoms) < 3:
        return []
    k = int(rng.integers(2, len(atoms)))
    canvas = prefix(atoms, order, k)
    z = int(atoms.numbers[order[k]])
    true_pos = atoms.positions[order[k]]
    positions = [true_pos]
    for _ in range(count - 1):
        pos = random_position(canvas, z, rng, 0.8, 2.0, avoid=true_pos, avoid_radius=0.3)
        if pos is not None:
            positions.append(pos)
    out = []
    for a, pos in enumerate(positions):
        s = canvas + Atoms(numbers=[z], positions=[pos])
        s.info["step"] = k + 1
        s.info["alternative"] = a
        s.info["is_true_placement"] = a == 0
        out.append(s)
    return out


def diatomic_configurations(distances: np.ndarray) -> list[Atoms]:
    """Every pair of H, C, N, O, F at each distance (Å)."""
    out = []
    for a, za in enumerate(ELEMENTS):
        for zb in ELEMENTS[a:]:
            for r in distances:
                s = Atoms(numbers=[za, zb], positions=[[0.0, 0.0, 0.0], [0.0, 0.0, float(r)]])
                s.info["distance"] = float(r)
                s.info["pair"] = s.get_chemical_formula(mode="hill") if za != zb else f"{s.get_chemical_symbols()[0]}2"
                out.append(s)
    return out
