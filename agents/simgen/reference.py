"""SiMGen's reference set: a small shipped file of QM9 molecules, and their descriptors under a chosen MACE model.

The shipped file (``reference_qm9.xyz`` next to this module, extended XYZ with ``qm9_id`` and ``smiles``) holds
molecules drawn from QM9 with a fixed seed by :func:`build_reference_file`. SiMGen works on heavy-atom skeletons
(hydrogens are added at the end), so the reference descriptors are computed on the molecules *without* their
hydrogens, twice:

- **blind**: every heavy atom given the same element (carbon), so the descriptor describes geometry only; the
  kernel score during generation compares these;
- **typed**: with the true elements; element assignment compares these, element by element.

Descriptors depend on the model, so they are computed at run time and cached: on disk (``.npz`` under
``$MOLGYM_CACHE_DIR/simgen``) keyed by the sha256 of the model file and of the reference file, and in memory per
potential object (for models that live only in memory, such as the tests' untrained MACE).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from weakref import WeakKeyDictionary

import numpy as np
from ase import Atoms

from molgym.io import atomic_path

__all__ = [
    "REFERENCE_FILE",
    "ReferenceDescriptors",
    "load_reference_molecules",
    "skeleton",
    "reference_descriptors",
    "build_reference_file",
]

REFERENCE_FILE = Path(__file__).with_name("reference_qm9.xyz")
#: Element every heavy atom gets in the element-blind descriptors.
BLIND_ELEMENT = 6
_CACHE_VERSION = 2
_MEMORY: WeakKeyDictionary = WeakKeyDictionary()


@dataclass(frozen=True)
class ReferenceDescriptors:
    """Standardised reference descriptors of one model.

    Attributes:
        blind: ``(n_ref_atoms, n_features)`` element-blind descriptors, standardised with ``blind_mean/std``.
        typed: same atoms with their true elements, standardised with ``typed_mean/std``.
        numbers: atomic number of each reference atom.
        blind_scale, typed_scale: median distance from a reference atom to its nearest other reference atom
            (root mean square over features, standardised units): the natural unit of the kernel widths.
    """

    blind: np.ndarray
    blind_mean: np.ndarray
    blind_std: np.ndarray
    typed: np.ndarray
    typed_mean: np.ndarray
    typed_std: np.ndarray
    numbers: np.ndarray
    blind_scale: np.ndarray
    typed_scale: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.blind.shape[1])


def load_reference_molecules(path: str | Path | None = None) -> list[Atoms]:
    """The reference molecules (with hydrogens), from ``path`` or the shipped file."""
    import ase.io

    path = Path(path) if path is not None else REFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"SiMGen reference file {str(path)!r} does not exist")
    frames = ase.io.read(path, index=":")
    if not frames:
        raise ValueError(f"SiMGen reference file {str(path)!r} holds no molecules")
    return frames


def skeleton(atoms: Atoms, blind: bool = False) -> Atoms:
    """The heavy atoms of ``atoms`` (all turned into carbon when ``blind``)."""
    keep = atoms.numbers > 1
    numbers = np.full(int(keep.sum()), BLIND_ELEMENT) if blind else atoms.numbers[keep]
    return Atoms(numbers=numbers, positions=atoms.positions[keep])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-6 * max(float(std.max()), 1e-12), std, 1.0)
    return (x - mean) / std, mean, std


def _compute(potential, molecules: list[Atoms]) -> ReferenceDescriptors:
    skeletons = [skeleton(m) for m in molecules if (m.numbers > 1).any()]
    allowed = set(potential.species)
    skeletons = [s for s in skeletons if set(s.numbers.tolist()) <= allowed]
    if not skeletons:
        raise ValueError(f"no reference molecule has only elements that {potential.name} covers")
    blind_in = [skeleton(s, blind=True) for s in skeletons]
    blind = np.concatenate(potential.descriptors(blind_in), axis=0)
    typed = np.concatenate(potential.descriptors(skeletons), axis=0)
    numbers = np.concatenate([s.numbers for s in skeletons]).astype(np.int64)
    b, bm, bs = _standardise(blind)
    t, tm, ts = _standardise(typed)
    return ReferenceDescriptors(b, bm, bs, t, tm, ts, numbers, _nn_scale(b), _nn_scale(t))


def _nn_scale(z: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Median over atoms of the RMS-per-feature distance to the nearest other atom."""
    nearest = np.empty(len(z))
    sq = (z**2).sum(axis=1)
    for start in range(0, len(z), chunk):
        block = z[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, :] - 2 * block @ z.T
        d2[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        nearest[start:start + chunk] = np.maximum(d2.min(axis=1), 0.0)
    return np.array(max(float(np.sqrt(np.median(nearest) / z.shape[1])), 1e-6))


def reference_descriptors(potential, reference_path: str | Path | None = None,
                          cache: bool = True) -> ReferenceDescriptors:
    """Reference descriptors of ``potential`` (a :class:`~molgym.potentials.mace.MACEPotential`), cached.

    Models loaded from a file are cached on disk by the file's sha256; others only in memory.
    """
    if BLIND_ELEMENT not in potential.species:
        raise ValueError(f"SiMGen needs a model that covers carbon; {potential.name} covers {sorted(potential.species)}")
    ref_path = Path(reference_path) if reference_path is not None else REFERENCE_FILE
    inner = getattr(potential, "inner", potential)
    key = str(ref_path.resolve())
    memo = _MEMORY.setdefault(inner, {}) if cache else {}
    if key in memo:
        return memo[key]
    disk: Path | None = None
    model_path = getattr(inner, "path", None)
    if cache and model_path and Path(model_path).is_file():
        from molgym.data.qm9 import cache_dir

        tag = f"{_sha256(Path(model_path))[:16]}_{_sha256(ref_path)[:12]}_{str(inner.dtype).split('.')[-1]}"
        disk = cache_dir() / "simgen" / f"reference_v{_CACHE_VERSION}_{tag}.npz"
        if disk.is_file():
            try:
                with np.load(disk, allow_pickle=False) as f:
                    result = ReferenceDescriptors(**{k: f[k] for k in ReferenceDescriptors.__dataclass_fields__})
                memo[key] = result
                return result
            except (OSError, ValueError, KeyError):
                pass  # damaged cache: recompute below
    result = _compute(inner, load_reference_molecules(ref_path))
    if disk is not None:
        disk.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(disk) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: getattr(result, k) for k in ReferenceDescriptors.__dataclass_fields__})
    memo[key] = result
    return result


def build_reference_file(path: str | Path = REFERENCE_FILE, n: int = 200, seed: int = 0,
                         min_heavy: int = 6) -> Path:
    """Write ``n`` QM9 molecules with at least ``min_heavy`` heavy atoms, drawn with ``seed`` (how the shipped
    file was made: ``python -m molgym.agents.simgen.reference``)."""
    from molgym.data.qm9 import load_qm9
    from molgym.io import write_xyz

    qm9 = load_qm9()
    rows = np.nonzero(qm9.heavy_atom_counts() >= min_heavy)[0]
    chosen = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    molecules = [qm9.atoms(int(r)) for r in chosen]
    write_xyz(path, molecules)
    return Path(path)


if __name__ == "__main__":
    print(build_reference_file())
