"""The reward potential's dataset: configurations derived from QM9, labelled with GFN2-xTB.

``build_dataset(out, config)`` (CLI: ``molgym potential dataset --out DIR``) writes, under ``DIR``:

- ``train.xyz``, ``valid.xyz``: training data for mace-torch (``--energy_key REF_energy --forces_key REF_forces``);
- ``test.xyz``: held-out QM9 molecules (every category below, plus full build trajectories and sets of
  alternative placements for the rank test);
- ``nonqm9.xyz``: molecules that are not in QM9 (10-16 heavy atoms, embedded from ``nonqm9_smiles.txt``);
- ``isomers.xyz``: xTB-relaxed C7H10O2 isomers from QM9 (held out), for an energy-ranking test;
- ``manifest.json``: provenance (QM9 citation and licence, reference method, sampling settings, counts,
  isolated-atom energies, failures);
- ``shards/``: the per-shard files the above are assembled from (a rerun skips finished shards).

Every structure carries ``info["category"]`` (``equilibrium``, ``thermal``, ``build``, ``misplaced``,
``close_contact``, ``alternatives``, ``atoms``, ``diatomic``, ``isomer``), ``info["molecule_id"]`` (a QM9 id,
``nonqm9:<name>``, or ``special``), the label ``info["REF_energy"]`` (eV) and ``arrays["REF_forces"]`` (eV/Å).

The split is by molecule: a QM9 id's split is a hash of (seed, id), so no molecule is in two splits and the
C7H10O2 isomers (drawn from the test split) never reach training. Every random choice comes from a generator
seeded with (seed, category code, molecule id), so a dataset is reproducible structure by structure whatever
the number of workers or the order shards finish in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

from molgym.data.labels import ENERGY_KEY, FORCES_KEY, labelled_copy
from molgym.data.placement import random_position
from molgym.io import write_json, write_xyz
from molgym.reward import MAX_TERMINAL_DISTANCE, MIN_DISTANCE

log = logging.getLogger(__name__)

ELEMENTS = (1, 6, 7, 8, 9)
REFERENCE_METHOD = "GFN2-xTB (tblite), neutral, lowest spin multiplicity (uhf = n_electrons % 2)"
SPLITS = ("train", "valid", "test")
OUTPUT_FILES = ("train", "valid", "test", "nonqm9", "isomers")
NONQM9_SMILES_FILE = Path(__file__).with_name("nonqm9_smiles.txt")
ISOMER_FORMULA = "C7H10O2"
DATASET_VERSION = 1

# category codes mixed into the per-molecule seeds
_CODES = {"thermal": 1, "build": 2, "misplaced": 3, "close_contact": 4, "alternatives": 5, "order": 6, "nonqm9": 7}


@dataclass(frozen=True)
class DatasetConfig:
    """Sizes and sampling settings of a dataset. ``SIZES`` holds named presets."""

    seed: int = 0
    train_molecules: int = 2000
    valid_molecules: int = 100
    test_molecules: int = 150
    #: fraction of QM9 ids in the valid and test splits (the rest is train)
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    thermal_per_molecule: int = 2
    temperature_range: tuple[float, float] = (300.0, 1000.0)
    md_steps: int = 40
    md_timestep_fs: float = 0.5
    md_friction_per_fs: float = 0.05
    build_per_molecule: int = 2
    misplaced_per_molecule: int = 1
    close_contact_per_molecule: int = 1
    close_contact_range: tuple[float, float] = (MIN_DISTANCE, 1.0)
    #: test molecules whose whole build trajectory (every prefix) is labelled
    test_build_trajectories: int = 40
    #: test molecules that get a set of alternative placements of one next atom
    alternative_groups: int = 40
    alternatives_per_group: int = 8
    diatomic_range: tuple[float, float] = (0.5, 3.0)
    diatomic_points: int = 26
    isomers: int = 200
    isomer_fmax: float = 0.05
    isomer_max_steps: int = 300
    #: None: every molecule in nonqm9_smiles.txt
    nonqm9_molecules: int | None = None
    nonqm9_thermal: int = 2
    molecules_per_shard: int = 25

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        for name in ("train_molecules", "valid_molecules", "test_molecules", "thermal_per_molecule", "md_steps",
                     "build_per_molecule", "misplaced_per_molecule", "close_contact_per_molecule",
                     "test_build_trajectories", "alternative_groups", "isomers", "nonqm9_thermal"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.train_molecules < 1 or self.valid_molecules < 1:
            raise ValueError("train_molecules and valid_molecules must be >= 1")
        if self.molecules_per_shard < 1:
            raise ValueError(f"molecules_per_shard must be >= 1, got {self.molecules_per_shard}")
        if self.alternatives_per_group < 2:
            raise ValueError(f"alternatives_per_group must be >= 2, got {self.alternatives_per_group}")
        if self.diatomic_points < 2:
            raise ValueError(f"diatomic_points must be >= 2, got {self.diatomic_points}")
        lo, hi = self.temperature_range
        if not 0 < lo <= hi:
            raise ValueError(f"temperature_range must be 0 < low <= high, got {self.temperature_range}")
        if not (0 < self.valid_fraction and 0 < self.test_fraction and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("valid_fraction and test_fraction must be positive and sum to less than 1")
        lo, hi = self.close_contact_range
        if not MIN_DISTANCE <= lo <= hi:
            raise ValueError(f"close_contact_range must satisfy {MIN_DISTANCE} <= low <= high, got {(lo, hi)}")
        if self.nonqm9_molecules is not None and self.nonqm9_molecules < 0:
            raise ValueError(f"nonqm9_molecules must be >= 0 or None, got {self.nonqm9_molecules}")

    def as_dict(self) -> dict:
        return asdict(self)


#: Named dataset sizes: ``tiny`` builds in seconds (tests), ``default`` is what the shipped model was trained on.
SIZES: dict[str, DatasetConfig] = {
    "tiny": DatasetConfig(
        train_molecules=6, valid_molecules=2, test_molecules=3, thermal_per_molecule=1, md_steps=4,
        test_build_trajectories=1, alternative_groups=1, alternatives_per_group=4, diatomic_points=6, isomers=3,
        isomer_max_steps=20, isomer_fmax=0.2, nonqm9_molecules=2, nonqm9_thermal=1, molecules_per_shard=3,
    ),
    "small": DatasetConfig(train_molecules=300, valid_molecules=30, test_molecules=50, test_build_trajectories=15,
                           alternative_groups=15, isomers=50),
    "default": DatasetConfig(),
}


# --------------------------------------------------------------------------------------------------------------
# splitting and per-molecule randomness
# --------------------------------------------------------------------------------------------------------------
def split_of(molecule_id: int, seed: int, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """The split (``train``/``valid``/``test``) of a QM9 id: a hash of (seed, id), so stable and order-free."""
    digest = hashlib.blake2b(f"{seed}:{molecule_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def molecule_rng(seed: int, category: str, molecule_id: int | str) -> np.random.Generator:
    """A generator seeded by (seed, category, molecule id) only, never by global state or worker order."""
    if isinstance(molecule_id, str):
        molecule_id = int.from_bytes(hashlib.blake2b(molecule_id.encode(), digest_size=6).digest(), "little")
    return np.random.default_rng([int(seed), _CODES[category], int(molecule_id)])


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


# --------------------------------------------------------------------------------------------------------------
# shards: units of work, each written atomically and skipped on a rerun
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Shard:
    """One unit of work: ``kind`` is ``qm9``, ``isomers``, ``nonqm9`` or ``special``."""

    name: str
    kind: str
    split: str
    items: list = field(default_factory=list)  # QM9 rows, or SMILES lines


def _label(potential, structures: Sequence[Atoms], category: str, molecule_id, stats: Counter) -> list[Atoms]:
    from molgym.potentials.base import PotentialError

    out = []
    for s in structures:
        try:
            e, f = potential.energies_and_forces([s])
        except PotentialError as err:
            stats[f"failed_{category}"] += 1
            log.info("skipped a %s structure of %s: %s", category, molecule_id, err)
            continue
        out.append(labelled_copy(s, float(e[0]), f[0], category=category, molecule_id=str(molecule_id)))
    return out


def _qm9_molecule(qm9, row: int, split: str, config: DatasetConfig, potential, stats: Counter) -> list[Atoms]:
    atoms = qm9.atoms(row)
    mid = int(qm9.ids[row])
    seed = config.seed
    base = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    base.info["smiles"] = atoms.info["smiles"]
    order = build_order(base, molecule_rng(seed, "order", mid))
    out = _label(potential, [base], "equilibrium", mid, stats)
    out += _label(potential, thermal_configurations(base, potential, molecule_rng(seed, "thermal", mid), config),
                  "thermal", mid, stats)
    rng = molecule_rng(seed, "build", mid)
    if split == "test":
        # every prefix of the build order, for per-step reward errors; the remaining test molecules get
        # random prefixes like the training data so the category's error is comparable
        rank = _test_rank(qm9, row)
        if rank < config.test_build_trajectories:
            traj = []
            for k in range(1, len(base) + 1):
                p = prefix(base, order, k)
                p.info["step"] = k
                p.info["trajectory"] = str(mid)
                traj.append(p)
            out += _label(potential, traj, "build", mid, stats)
        else:
            out += _label(potential, build_prefixes(base, order, rng, config.build_per_molecule), "build", mid, stats)
        if rank < config.alternative_groups:
            alts = alternative_placements(base, order, molecule_rng(seed, "alternatives", mid),
                                          config.alternatives_per_group)
            for s in alts:
                s.info["group"] = str(mid)
            out += _label(potential, alts, "alternatives", mid, stats)
    else:
        out += _label(potential, build_prefixes(base, order, rng, config.build_per_molecule), "build", mid, stats)
    out += _label(potential, misplaced_configurations(base, order, molecule_rng(seed, "misplaced", mid),
                                                      config.misplaced_per_molecule), "misplaced", mid, stats)
    out += _label(potential, close_contact_configurations(base, molecule_rng(seed, "close_contact", mid),
                                                          config.close_contact_per_molecule,
                                                          config.close_contact_range), "close_contact", mid, stats)
    for s in out:
        s.info["smiles"] = atoms.info["smiles"]
    return out


_TEST_RANKS: dict[int, int] = {}


def _test_rank(qm9, row: int) -> int:
    return _TEST_RANKS.get(int(row), 10**9)


def _relax(atoms: Atoms, potential, fmax: float, steps: int) -> tuple[Atoms, bool]:
    from ase.optimize import BFGS

    work = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    work.calc = potential.as_calculator()
    opt = BFGS(work, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    return Atoms(numbers=work.numbers, positions=work.positions.copy()), converged


def read_nonqm9_smiles(path: str | os.PathLike = NONQM9_SMILES_FILE) -> list[tuple[str, str]]:
    """(SMILES, name) pairs of the non-QM9 test molecules."""
    pairs = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        smiles, _, name = line.partition(" ")
        pairs.append((smiles, name.strip() or smiles))
    return pairs


def embed_smiles(smiles: str, seed: int) -> Atoms:
    """3D structure from SMILES: RDKit ETKDG (seeded) then MMFF94 relaxation."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) % (2**31)
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"RDKit could not embed {smiles!r}")
    AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    conf = mol.GetConformer()
    return Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=conf.GetPositions())


def _run_shard(shard: Shard, config: DatasetConfig) -> tuple[list[Atoms], Counter]:
    from molgym.potentials import load_potential

    potential = load_potential("xtb")
    stats: Counter = Counter()
    out: list[Atoms] = []
    if shard.kind == "qm9":
        from molgym.data.qm9 import load_qm9

        qm9 = load_qm9()
        for row in shard.items:
            out += _qm9_molecule(qm9, int(row), shard.split, config, potential, stats)
    elif shard.kind == "isomers":
        from molgym.data.qm9 import load_qm9

        qm9 = load_qm9()
        for row in shard.items:
            atoms = qm9.atoms(int(row))
            mid = int(qm9.ids[row])
            try:
                relaxed, converged = _relax(atoms, potential, config.isomer_fmax, config.isomer_max_steps)
            except Exception as err:  # SCF failure mid-relaxation
                stats["failed_isomer"] += 1
                log.info("isomer %s skipped: %s", mid, err)
                continue
            relaxed.info["relax_converged"] = converged
            relaxed.info["smiles"] = atoms.info["smiles"]
            out += _label(potential, [relaxed], "isomer", mid, stats)
    elif shard.kind == "nonqm9":
        for smiles, name in shard.items:
            mid = f"nonqm9:{name}"
            try:
                atoms = embed_smiles(smiles, seed=config.seed)
                relaxed, converged = _relax(atoms, potential, 0.05, 200)
            except Exception as err:
                stats["failed_nonqm9"] += 1
                log.info("non-QM9 molecule %s skipped: %s", name, err)
                continue
            relaxed.info["smiles"] = smiles
            relaxed.info["relax_converged"] = converged
            labelled = _label(potential, [relaxed], "equilibrium", mid, stats)
            thermal_cfg = replace(config, thermal_per_molecule=config.nonqm9_thermal)
            labelled += _label(potential, thermal_configurations(relaxed, potential,
                                                                 molecule_rng(config.seed, "nonqm9", mid),
                                                                 thermal_cfg), "thermal", mid, stats)
            for s in labelled:
                s.info["smiles"] = smiles
            out += labelled
    elif shard.kind == "special":
        atoms = [Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]) for z in ELEMENTS]
        out += _label(potential, atoms, "atoms", "special", stats)
        lo, hi = config.diatomic_range
        grid = np.linspace(lo, hi, config.diatomic_points)
        if shard.split == "test":  # a different, denser grid for the monotonicity check
            grid = np.concatenate([np.linspace(0.5, 1.0, 11), np.linspace(1.05, hi, max(2, config.diatomic_points // 2))])
        out += _label(potential, diatomic_configurations(grid), "diatomic", "special", stats)
    else:
        raise ValueError(f"unknown shard kind {shard.kind!r}")
    for s in out:
        s.info["split"] = shard.split
    stats["structures"] += len(out)
    return out, stats


def _worker_init() -> None:
    # one OpenMP thread and one xTB thread per worker process: the workers already use every core
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MOLGYM_XTB_WORKERS"] = "1"
    logging.basicConfig(level=logging.WARNING)


def _worker(args) -> tuple[str, dict]:
    shard, config, shard_dir, test_ranks = args
    _TEST_RANKS.clear()
    _TEST_RANKS.update(test_ranks)
    start = time.perf_counter()
    structures, stats = _run_shard(shard, config)
    path = Path(shard_dir) / f"{shard.name}.xyz"
    write_xyz(path, structures)
    meta = {"name": shard.name, "kind": shard.kind, "split": shard.split, "items": len(shard.items),
            "seconds": time.perf_counter() - start, "stats": dict(stats)}
    write_json(Path(shard_dir) / f"{shard.name}.json", meta)  # written last: marks the shard as finished
    return shard.name, meta


def plan_shards(config: DatasetConfig) -> tuple[list[Shard], dict]:
    """The shards of a dataset (deterministic for the config) and the test ranks of test molecules."""
    from molgym.data.qm9 import load_qm9

    qm9 = load_qm9()
    splits = np.array([split_of(int(i), config.seed, config.valid_fraction, config.test_fraction) for i in qm9.ids])
    rng = np.random.default_rng([config.seed, 1000])
    shards: list[Shard] = [Shard("special-train", "special", "train"), Shard("special-test", "special", "test")]
    test_ranks: dict[int, int] = {}
    wanted = {"train": config.train_molecules, "valid": config.valid_molecules, "test": config.test_molecules}
    # the isomers are C7H10O2 test-split molecules; they are kept out of the other test categories too
    formula_mask = _formula_mask(qm9, ISOMER_FORMULA)
    for split in SPLITS:
        pool = np.nonzero((splits == split) & ~formula_mask)[0] if split == "test" else np.nonzero(splits == split)[0]
        if wanted[split] > len(pool):
            raise ValueError(f"asked for {wanted[split]} {split} molecules but the {split} split has {len(pool)}")
        rows = np.sort(rng.choice(pool, size=wanted[split], replace=False))
        if split == "test":
            ranked = np.random.default_rng([config.seed, 1001]).permutation(rows)
            test_ranks = {int(r): k for k, r in enumerate(ranked)}
        for k in range(0, len(rows), config.molecules_per_shard):
            shards.append(Shard(f"qm9-{split}-{k // config.molecules_per_shard:04d}", "qm9", split,
                                [int(r) for r in rows[k: k + config.molecules_per_shard]]))
    pool = np.nonzero((splits == "test") & formula_mask)[0]
    n_iso = min(config.isomers, len(pool))
    iso_rows = np.sort(np.random.default_rng([config.seed, 1002]).choice(pool, size=n_iso, replace=False))
    for k in range(0, len(iso_rows), config.molecules_per_shard):
        shards.append(Shard(f"isomers-{k // config.molecules_per_shard:04d}", "isomers", "isomers",
                            [int(r) for r in iso_rows[k: k + config.molecules_per_shard]]))
    smiles = read_nonqm9_smiles()
    if config.nonqm9_molecules is not None:
        smiles = smiles[: config.nonqm9_molecules]
    per = max(1, config.molecules_per_shard // 5)
    for k in range(0, len(smiles), per):
        shards.append(Shard(f"nonqm9-{k // per:04d}", "nonqm9", "nonqm9", smiles[k: k + per]))
    return shards, test_ranks


def _formula_mask(qm9, formula: str) -> np.ndarray:
    from ase.formula import Formula

    target = Formula(formula).count()
    z_of = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
    n = qm9.sizes
    mask = n == sum(target.values())
    counts = {z: np.add.reduceat((qm9.numbers == z).astype(np.int64), qm9.offsets[:-1]) for z in z_of.values()}
    for sym, z in z_of.items():
        mask &= counts[z] == target.get(sym, 0)
    return mask


def build_dataset(out: str | os.PathLike, config: DatasetConfig | str = "default", workers: int | None = None,
                  progress: bool = True) -> dict:
    """Build (or finish building) a labelled dataset under ``out``; returns the manifest.

    Args:
        out: output directory; finished shards already there are kept and skipped.
        config: a :class:`DatasetConfig` or the name of a preset in :data:`SIZES`.
        workers: worker processes (default: every core).
        progress: show a tqdm progress bar over shards.
    """
    if isinstance(config, str):
        if config not in SIZES:
            raise ValueError(f"unknown dataset size {config!r}; allowed: {', '.join(SIZES)}")
        config = SIZES[config]
    config.validate()
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        if previous != json.loads(json.dumps(config.as_dict())):
            raise ValueError(f"{out} holds a dataset built with other settings ({settings_path}); use a new --out")
    else:
        write_json(settings_path, config.as_dict())

    from tqdm.auto import tqdm

    shards, test_ranks = plan_shards(config)
    todo = [s for s in shards if not (shard_dir / f"{s.name}.json").is_file()]
    start = time.perf_counter()
    jobs = [(s, config, str(shard_dir), test_ranks) for s in todo]
    bar = tqdm(total=len(shards), initial=len(shards) - len(todo), desc="dataset shards", unit="shard",
               disable=not progress)
    if jobs:
        # always in worker processes, even for one worker: tblite's OpenMP threads must be limited before tblite
        # is loaded (oversubscribed OpenMP threads slow xTB down by an order of magnitude on a busy machine)
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
            for _name, _meta in pool.imap_unordered(_worker, jobs):
                bar.update(1)
    bar.close()

    manifest = assemble(out, config, shards, workers=workers)
    manifest["wall_seconds_this_run"] = round(time.perf_counter() - start, 1)
    write_json(out / "manifest.json", manifest)
    return manifest


def assemble(out: str | os.PathLike, config: DatasetConfig, shards: list[Shard] | None = None,
             outputs: Sequence[str] = OUTPUT_FILES, workers: int | None = None) -> dict:
    """Concatenate finished shards into the output files named in ``outputs`` and write ``manifest.json``.

    ``build_dataset`` calls it for every output at the end; calling it for ``("train", "valid")`` while the test
    shards are still being labelled lets training start early (the final call rewrites identical files).
    """
    import ase.io

    from molgym.data.qm9 import QM9_CITATION, QM9_LICENSE
    from molgym.potentials import load_potential
    from molgym.reward import isolated_atom_energies

    out = Path(out)
    shard_dir = out / "shards"
    if shards is None:
        shards, _ = plan_shards(config)
    counts: dict[str, dict[str, int]] = {}
    failures: Counter = Counter()
    seconds = 0.0
    for name in outputs:
        structures: list[Atoms] = []
        for s in shards:
            if _output_of(s) != name:
                continue
            marker = shard_dir / f"{s.name}.json"
            if not marker.is_file():
                raise FileNotFoundError(f"shard {s.name} of {name}.xyz is not finished yet ({marker} missing)")
            meta = json.loads(marker.read_text())
            seconds += meta["seconds"]
            failures.update({k: v for k, v in meta["stats"].items() if k.startswith("failed")})
            path = shard_dir / f"{s.name}.xyz"
            if path.stat().st_size:
                structures += ase.io.read(path, index=":")
        write_xyz(out / f"{name}.xyz", structures)
        counts[name] = dict(sorted(Counter(a.info["category"] for a in structures).items()))
        counts[name]["total"] = len(structures)
        counts[name]["molecules"] = len({a.info["molecule_id"] for a in structures})
    xtb = load_potential("xtb")
    manifest = {
        "format": "molgym-potential-dataset",
        "version": DATASET_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"name": "QM9", "citation": QM9_CITATION, "license": QM9_LICENSE,
                   "non_qm9": f"molgym/data/{NONQM9_SMILES_FILE.name} (RDKit ETKDG + MMFF94, then GFN2-xTB BFGS)"},
        "reference_method": REFERENCE_METHOD,
        "energy_key": ENERGY_KEY,
        "forces_key": FORCES_KEY,
        "units": {"energy": "eV", "forces": "eV/Angstrom", "positions": "Angstrom"},
        "isolated_atom_energies": {str(z): e for z, e in isolated_atom_energies(xtb, ELEMENTS).items()},
        "settings": config.as_dict(),
        "split": "by molecule: split_of(qm9_id, seed) hash; isomers are test-split C7H10O2 molecules",
        "counts": counts,
        "failures": dict(failures),
        "labelling_cpu_seconds": round(seconds, 1),
        "workers": workers,
        "files": {name: f"{name}.xyz" for name in outputs},
        "complete": set(outputs) == set(OUTPUT_FILES),
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def _output_of(shard: Shard) -> str:
    if shard.kind == "special":
        return shard.split
    return {"qm9": shard.split, "isomers": "isomers", "nonqm9": "nonqm9"}[shard.kind]
