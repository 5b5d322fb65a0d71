"""QM9 from the ``qm9pack`` package: 130,831 small organic molecules (H, C, N, O, F; up to 9 heavy atoms).

qm9pack ships QM9 as CSV files (B3LYP/6-31G(2df,p) geometries, SMILES). Parsing them takes ~20 s, so the first
load writes a compact ``.npz`` cache (atomically) under ``$MOLGYM_CACHE_DIR`` (default ``~/.cache/molgym``);
later loads take well under a second. qm9pack's own ``get_data`` is not used: it needs ``pkg_resources``,
which current setuptools no longer provides.

Cite QM9 as: R. Ramakrishnan, P. O. Dral, M. Rupp, O. A. von Lilienfeld, "Quantum chemistry structures and
properties of 134 kilo molecules", Scientific Data 1, 140022 (2014), doi:10.1038/sdata.2014.22. Licence:
CC BY 4.0 (the QM9 data set), qm9pack: MIT.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from ase import Atoms

from molgym.io import atomic_path

QM9_CITATION = (
    "R. Ramakrishnan, P. O. Dral, M. Rupp, O. A. von Lilienfeld, Quantum chemistry structures and properties "
    "of 134 kilo molecules, Scientific Data 1, 140022 (2014), doi:10.1038/sdata.2014.22"
)
QM9_LICENSE = "CC BY 4.0"
_CACHE_VERSION = 1
_SYMBOL_TO_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def cache_dir() -> Path:
    """Where molgym caches derived data (``$MOLGYM_CACHE_DIR`` or ``~/.cache/molgym``)."""
    return Path(os.environ.get("MOLGYM_CACHE_DIR", Path.home() / ".cache" / "molgym"))


@dataclass(frozen=True)
class QM9:
    """QM9 as flat arrays: molecule ``i`` has atoms ``offsets[i]:offsets[i+1]``."""

    ids: np.ndarray  # QM9 index (1..133885), int32
    smiles: np.ndarray  # SMILES of the relaxed geometry, str
    numbers: np.ndarray  # atomic numbers of all atoms, int8
    positions: np.ndarray  # positions in Å of all atoms, float64 (n_atoms_total, 3)
    offsets: np.ndarray  # int64 (n_molecules + 1,)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def sizes(self) -> np.ndarray:
        """Number of atoms of each molecule."""
        return np.diff(self.offsets)

    def heavy_atom_counts(self) -> np.ndarray:
        """Number of non-hydrogen atoms of each molecule."""
        heavy = (self.numbers > 1).astype(np.int64)
        return np.add.reduceat(heavy, self.offsets[:-1])

    def atoms(self, i: int) -> Atoms:
        """Molecule ``i`` (0-based row, not the QM9 id) as ``ase.Atoms`` with ``qm9_id`` and ``smiles`` in info."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        atoms = Atoms(numbers=self.numbers[lo:hi].astype(int), positions=self.positions[lo:hi].copy())
        atoms.info["qm9_id"] = int(self.ids[i])
        atoms.info["smiles"] = str(self.smiles[i])
        return atoms

    def sample(self, n: int, seed: int, min_atoms: int = 1, max_atoms: int | None = None) -> list[Atoms]:
        """``n`` distinct molecules drawn uniformly (seeded) among those with ``min_atoms..max_atoms`` atoms."""
        sizes = self.sizes
        ok = np.nonzero((sizes >= min_atoms) & (sizes <= (max_atoms or sizes.max())))[0]
        if n > len(ok):
            raise ValueError(f"asked for {n} QM9 molecules but only {len(ok)} have {min_atoms}..{max_atoms} atoms")
        rows = np.random.default_rng(seed).choice(ok, size=n, replace=False)
        return [self.atoms(int(i)) for i in rows]


def qm9pack_data_dir() -> Path:
    """The folder of qm9pack's CSV files, found without importing qm9pack (its ``__init__`` needs
    ``pkg_resources``)."""
    import importlib.util

    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("QM9 comes from the qm9pack package: `pip install qm9pack`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (folder / "qm9_part1.csv").is_file():
        raise FileNotFoundError(f"qm9pack is installed but its data files are missing from {folder}")
    return folder


def _parse_csvs() -> QM9:
    import pandas as pd

    data = qm9pack_data_dir()
    frames = [
        pd.read_csv(data / f"qm9_part{k}.csv", usecols=["Index", "SMILES", "Elements", "XYZ_Ang"]) for k in (1, 2, 3)
    ]
    df = pd.concat(frames, ignore_index=True).sort_values("Index", kind="stable")
    numbers, positions, offsets = [], [], [0]
    for elements, xyz in zip(df["Elements"].to_numpy(), df["XYZ_Ang"].to_numpy()):
        symbols = elements.strip("[]").replace("'", "").replace(" ", "").split(",")
        coords = np.array(xyz.replace("[", "").replace("]", "").split(","), dtype=np.float64).reshape(-1, 3)
        if len(coords) != len(symbols):
            raise ValueError(f"qm9pack row with {len(symbols)} elements but {len(coords)} positions")
        numbers.extend(_SYMBOL_TO_Z[s] for s in symbols)
        positions.append(coords)
        offsets.append(offsets[-1] + len(symbols))
    return QM9(
        ids=df["Index"].to_numpy(dtype=np.int32),
        smiles=df["SMILES"].to_numpy(dtype=str),
        numbers=np.array(numbers, dtype=np.int8),
        positions=np.concatenate(positions),
        offsets=np.array(offsets, dtype=np.int64),
    )


@lru_cache(maxsize=1)
def load_qm9() -> QM9:
    """All of QM9 (cached in memory and on disk after the first call)."""
    path = cache_dir() / f"qm9_v{_CACHE_VERSION}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return QM9(**{k: f[k] for k in ("ids", "smiles", "numbers", "positions", "offsets")})
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    qm9 = _parse_csvs()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, ids=qm9.ids, smiles=qm9.smiles, numbers=qm9.numbers, positions=qm9.positions,
                     offsets=qm9.offsets)
    return qm9


def read_data_spec(spec: str | os.PathLike, seed: int = 0) -> list[Atoms]:
    """Structures named by a data spec: ``"qm9:N"`` for N QM9 molecules drawn with ``seed``, or a structure file
    (all frames, :func:`molgym.io.read_structures`)."""
    text = str(spec)
    if text.startswith("qm9:"):
        count = text[4:]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"malformed data spec {text!r}: expected 'qm9:N' with N a positive integer")
        return load_qm9().sample(int(count), seed=seed)
    from molgym.io import read_structures

    if not Path(text).expanduser().is_file():
        raise FileNotFoundError(f"structure file {text!r} does not exist (or use 'qm9:N' for N QM9 molecules)")
    return read_structures(text)
