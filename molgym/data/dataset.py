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

The pieces: settings, presets and the split in :mod:`molgym.data.dataset_config`; the configurations of each
category in :mod:`molgym.data.configurations`; shards (planning, building and labelling one) in
:mod:`molgym.data.dataset_shards`; running them and writing the output files here.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ase import Atoms

from molgym.data.dataset_config import (
    DATASET_VERSION,
    ELEMENTS,
    NONQM9_SMILES_FILE,
    OUTPUT_FILES,
    REFERENCE_METHOD,
    SIZES,
    DatasetConfig,
)
from molgym.data.dataset_shards import Shard, _worker, _worker_init, plan_shards
from molgym.data.labels import ENERGY_KEY, FORCES_KEY
from molgym.io import write_json, write_xyz

# reached through this module by the tests (``molgym.data.dataset.build_order`` and so on)
from molgym.data.configurations import build_order, diatomic_configurations  # noqa: F401
from molgym.data.dataset_config import split_of  # noqa: F401
from molgym.data.dataset_shards import read_nonqm9_smiles  # noqa: F401


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
