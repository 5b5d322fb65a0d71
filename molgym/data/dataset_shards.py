"""The dataset's units of work: which shards a dataset has, and how one shard is built and labelled (each
category of structure from its molecules, one worker process per shard, each shard written atomically).

:func:`molgym.data.dataset.build_dataset` runs the shards and assembles them into the output files."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase import Atoms

from molgym.data.configurations import (
    alternative_placements,
    build_order,
    build_prefixes,
    close_contact_configurations,
    diatomic_configurations,
    misplaced_configurations,
    prefix,
    thermal_configurations,
)
from molgym.data.dataset_config import (
    ELEMENTS,
    ISOMER_FORMULA,
    NONQM9_SMILES_FILE,
    SPLITS,
    DatasetConfig,
    molecule_rng,
    split_of,
)
from molgym.data.labels import labelled_copy
from molgym.io import write_json, write_xyz

log = logging.getLogger(__name__)


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
    train_rows = [r for s in shards if s.kind == "qm9" and s.split == "train" for r in s.items]
    shards += _extra_train_shards(config, np.nonzero(splits == "train")[0], train_rows)
    return shards, test_ranks


def _extra_train_shards(config: DatasetConfig, train_pool: np.ndarray, train_rows: Sequence[int]) -> list[Shard]:
    """Shards of ``config.extra_train_molecules`` more train molecules (``qm9-train-extra-NNNN``, last in the plan).

    They come from the train pool minus the rows already drawn for train, through their own random stream
    (``[seed, 1003]``), so the rows drawn for valid, test and isomers are the same with or without them. The pool
    is permuted once and the first N rows taken: growing N keeps every earlier extra row in the same shard, so a
    rerun reuses the finished shards (only a last, partly filled shard changes and is labelled again).
    """
    n = int(config.extra_train_molecules)
    if n == 0:
        return []
    remaining = np.setdiff1d(train_pool, np.asarray(train_rows, dtype=train_pool.dtype))
    if n > len(remaining):
        raise ValueError(f"extra_train_molecules={n} is more than the train split allows: "
                         f"{len(remaining)} train-split QM9 molecules are left after the {len(train_rows)} "
                         f"train molecules (maximum extra_train_molecules={len(remaining)})")
    rows = np.random.default_rng([config.seed, 1003]).permutation(remaining)[:n]
    m = config.molecules_per_shard
    return [Shard(f"qm9-train-extra-{k // m:04d}", "qm9", "train", sorted(int(r) for r in rows[k: k + m]))
            for k in range(0, n, m)]


def shard_finished(shard_dir: str | os.PathLike, shard: Shard) -> bool:
    """Whether ``shard``'s marker exists and was written for the same number of items (the last shard of the extra
    train molecules holds more of them when ``extra_train_molecules`` grows: then it is labelled again)."""
    import json

    marker = Path(shard_dir) / f"{shard.name}.json"
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("items") == len(shard.items)


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
