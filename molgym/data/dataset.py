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

Training data can grow without touching the held-out files: ``extra_train_molecules`` adds train-split QM9
molecules in shards of their own (a rerun into the same directory labels only the new ones), and
``extra_train_xyz`` appends structures labelled elsewhere (e.g. the refinement loop's ``labelled.xyz``) to
``train.xyz``. ``valid.xyz``, ``test.xyz``, ``nonqm9.xyz`` and ``isomers.xyz`` stay byte-identical.

Every structure carries ``info["category"]`` (``equilibrium``, ``thermal``, ``build``, ``misplaced``,
``close_contact``, ``alternatives``, ``atoms``, ``diatomic``, ``isomer``; harvested structures keep theirs or get
``harvested``), ``info["molecule_id"]`` (a QM9 id, ``nonqm9:<name>``, ``special``, or for a harvested structure
without one ``harvested:<file stem>:<index>``), the label ``info["REF_energy"]`` (eV) and ``arrays["REF_forces"]``
(eV/Å).

The split is by molecule: a QM9 id's split is a hash of (seed, id), so no molecule is in two splits and the
C7H10O2 isomers (drawn from the test split) never reach training. Every random choice comes from a generator
seeded with (seed, category code, molecule id), so a dataset is reproducible structure by structure whatever
the number of workers or the order shards finish in.

The pieces: settings, presets and the split in :mod:`molgym.data.dataset_config`; the configurations of each
category in :mod:`molgym.data.configurations`; shards (planning, building and labelling one) in
:mod:`molgym.data.dataset_shards`; running them and writing the output files here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from molgym.data.dataset_config import (
    DATASET_VERSION,
    ELEMENTS,
    GROWABLE,
    NONQM9_SMILES_FILE,
    OUTPUT_FILES,
    REFERENCE_METHOD,
    SIZES,
    DatasetConfig,
    split_of,
)
from molgym.data.dataset_shards import Shard, _worker, _worker_init, plan_shards, shard_finished
from molgym.data.labels import ENERGY_KEY, FORCES_KEY, labelled_copy
from molgym.io import write_json, write_xyz

# reached through this module by the tests (``molgym.data.dataset.build_order`` and so on)
from molgym.data.configurations import build_order, diatomic_configurations  # noqa: F401
from molgym.data.dataset_shards import read_nonqm9_smiles  # noqa: F401


def build_dataset(out: str | os.PathLike, config: DatasetConfig | str = "default", workers: int | None = None,
                  progress: bool = True, extra_train_xyz: Sequence[str | os.PathLike] = ()) -> dict:
    """Build (or finish building) a labelled dataset under ``out``; returns the manifest.

    Args:
        out: output directory; finished shards already there are kept and skipped. A directory built with other
            settings is refused, except for ``extra_train_molecules``, which may change between runs.
        config: a :class:`DatasetConfig` or the name of a preset in :data:`SIZES`.
        workers: worker processes (default: every core).
        progress: show a tqdm progress bar over shards.
        extra_train_xyz: extended XYZ files of structures labelled elsewhere (``REF_energy`` / ``REF_forces``, only
            H, C, N, O, F), appended to ``train.xyz``; checked before any labelling starts.
    """
    if isinstance(config, str):
        if config not in SIZES:
            raise ValueError(f"unknown dataset size {config!r}; allowed: {', '.join(SIZES)}")
        config = SIZES[config]
    config.validate()
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    harvested = read_harvested(extra_train_xyz, config)
    shards, test_ranks = plan_shards(config)  # raises for more extra train molecules than the split holds
    out = Path(out)
    shard_dir = out / "shards"
    settings_path = out / "settings.json"
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        previous.pop(GROWABLE, None)
        if previous != json.loads(json.dumps(config.fixed_settings())):
            raise ValueError(f"{out} holds a dataset built with other settings ({settings_path}; only {GROWABLE} "
                             "may change between runs); use a new --out")
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_json(settings_path, config.as_dict())

    from tqdm.auto import tqdm

    todo = [s for s in shards if not shard_finished(shard_dir, s)]
    for s in todo:  # a stale marker (a last extra shard that now holds more molecules) must not outlive its xyz
        (shard_dir / f"{s.name}.json").unlink(missing_ok=True)
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

    manifest = assemble(out, config, shards, workers=workers, harvested=harvested)
    manifest["wall_seconds_this_run"] = round(time.perf_counter() - start, 1)
    write_json(out / "manifest.json", manifest)
    return manifest


def read_harvested(paths: Sequence[str | os.PathLike], config: DatasetConfig) -> tuple[list[Atoms], list[dict]]:
    """Read, check and tag structures labelled outside the dataset builder (``--extra-train-xyz``).

    Each structure must carry ``info["REF_energy"]`` (finite) and ``arrays["REF_forces"]`` (one finite row per
    atom) and hold only H, C, N, O, F; a ``molecule_id`` it has must not be a held-out molecule (a QM9 id outside
    the train split of ``config``'s seed, or ``nonqm9:...``). The first that fails raises ``ValueError`` naming its
    file and index.
    Returned copies keep ``info`` (``category`` defaults to ``harvested``, ``molecule_id`` to
    ``harvested:<file stem>:<index>``) and drop any other per-atom array or calculator. The records (path, sha256,
    counts) go to the manifest.
    """
    from molgym.io import read_structures

    structures: list[Atoms] = []
    records: list[dict] = []
    allowed = set(ELEMENTS)
    for path in paths:
        path = Path(path)
        frames = read_structures(path)
        tagged = []
        for i, atoms in enumerate(frames):
            where = f"{path} structure {i}"
            bad = sorted(set(atoms.get_chemical_symbols()) - {_symbol(z) for z in allowed})
            if bad:
                raise ValueError(f"{where} holds {', '.join(bad)}; a dataset allows only H, C, N, O, F")
            energy = atoms.info.get(ENERGY_KEY)
            if not isinstance(energy, (int, float, np.number)) or not np.isfinite(energy):
                raise ValueError(f"{where} has no finite info[{ENERGY_KEY!r}] (got {energy!r}): not labelled")
            forces = atoms.arrays.get(FORCES_KEY)
            if forces is None or np.shape(forces) != (len(atoms), 3) or not np.all(np.isfinite(forces)):
                raise ValueError(f"{where} has no finite arrays[{FORCES_KEY!r}] of shape ({len(atoms)}, 3)")
            _check_not_held_out(atoms.info.get("molecule_id"), config, where)
            tags = {"category": str(atoms.info.get("category", "harvested")),
                    "molecule_id": str(atoms.info.get("molecule_id", f"harvested:{path.stem}:{i}")),
                    "split": "train", "source_file": path.name}
            tagged.append(labelled_copy(atoms, float(energy), forces, **tags))
        structures += tagged
        records.append({"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                        "structures": len(tagged),
                        "categories": dict(sorted(Counter(a.info["category"] for a in tagged).items()))})
    return structures, records


def _check_not_held_out(molecule_id, config: DatasetConfig, where: str) -> None:
    """Refuse a harvested structure of a valid, test or non-QM9 molecule: it would leak into training."""
    if molecule_id is None:
        return
    text = str(molecule_id)
    if text.startswith("nonqm9:"):
        raise ValueError(f"{where} is of the held-out non-QM9 molecule {text!r}; it cannot go into train.xyz")
    if text.isdigit():
        split = split_of(int(text), config.seed, config.valid_fraction, config.test_fraction)
        if split != "train":
            raise ValueError(f"{where} is of QM9 molecule {text}, which is in the {split} split (seed "
                             f"{config.seed}); it cannot go into train.xyz")


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z]


def assemble(out: str | os.PathLike, config: DatasetConfig, shards: list[Shard] | None = None,
             outputs: Sequence[str] = OUTPUT_FILES, workers: int | None = None,
             extra_train_xyz: Sequence[str | os.PathLike] = (),
             harvested: tuple[list[Atoms], list[dict]] | None = None) -> dict:
    """Concatenate finished shards into the output files named in ``outputs`` and write ``manifest.json``.

    ``build_dataset`` calls it for every output at the end; calling it for ``("train", "valid")`` while the test
    shards are still being labelled lets training start early (the final call rewrites identical files).
    ``train.xyz`` is the train shards in plan order (the extra train molecules' shards last), then the structures
    of ``extra_train_xyz`` (or of ``harvested``, what :func:`read_harvested` returned for them).
    """
    import ase.io

    from molgym.data.qm9 import QM9_CITATION, QM9_LICENSE
    from molgym.potentials import load_potential
    from molgym.reward import isolated_atom_energies

    out = Path(out)
    shard_dir = out / "shards"
    if harvested is None:
        harvested = read_harvested(extra_train_xyz, config)
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
            if not shard_finished(shard_dir, s):
                raise FileNotFoundError(f"shard {s.name} of {name}.xyz is not finished yet ({marker} missing or "
                                        f"written for another number of molecules)")
            meta = json.loads(marker.read_text())
            seconds += meta["seconds"]
            failures.update({k: v for k, v in meta["stats"].items() if k.startswith("failed")})
            path = shard_dir / f"{s.name}.xyz"
            if path.stat().st_size:
                structures += ase.io.read(path, index=":")
        if name == "train":
            structures += harvested[0]
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
        "extra_train_xyz": harvested[1],
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
