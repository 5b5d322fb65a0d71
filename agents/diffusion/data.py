"""QM9 for the diffusion model: EDM's split, tensors of molecules, batches and the atom-count distribution.

The split follows EDM (Hoogeboom et al. 2022): a seeded permutation of QM9's molecules into 100,000 training,
17,748 validation and the remaining 13,083 test molecules (molgym's QM9 from qm9pack has 130,831 molecules,
the 133,885 minus the 3,054 that failed QM9's consistency check, as in EDM).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from molgym.agents.diffusion.model import ELEMENT_SCALE, ELEMENTS, center, fully_connected_edges

__all__ = ["SPLIT_SIZES", "qm9_split", "MoleculeSet", "Batch", "size_distribution", "encode_elements"]

#: (train, validation) sizes of EDM's QM9 split; the test set is the rest.
SPLIT_SIZES: tuple[int, int] = (100_000, 17_748)
_SPLIT_SEED = 42
_Z_TO_CHANNEL = {z: i for i, z in enumerate(ELEMENTS)}


def qm9_split(n_molecules: int, seed: int = _SPLIT_SEED) -> dict[str, np.ndarray]:
    """Row indices of the ``train``/``valid``/``test`` parts (seeded permutation, EDM's sizes)."""
    n_train, n_valid = SPLIT_SIZES
    if n_molecules <= n_train + n_valid:
        raise ValueError(f"QM9 has {n_molecules} molecules; EDM's split needs more than {n_train + n_valid}")
    perm = np.random.default_rng(seed).permutation(n_molecules)
    return {"train": np.sort(perm[:n_train]), "valid": np.sort(perm[n_train:n_train + n_valid]),
            "test": np.sort(perm[n_train + n_valid:])}


def encode_elements(numbers) -> torch.Tensor:
    """Scaled one-hot ``[N, 5]`` of atomic numbers over H, C, N, O, F; other elements raise ``ValueError``."""
    numbers = np.asarray(numbers, dtype=int)
    bad = sorted(set(numbers.tolist()) - set(ELEMENTS))
    if bad:
        raise ValueError(f"elements {bad} are not supported by the diffusion model (allowed: H, C, N, O, F)")
    idx = torch.as_tensor([_Z_TO_CHANNEL[z] for z in numbers.tolist()], dtype=torch.long)
    return torch.nn.functional.one_hot(idx, len(ELEMENTS)).float() * ELEMENT_SCALE


@dataclass
class Batch:
    """Molecules concatenated: centred positions ``x``, encodings ``h``, graph and per-node molecule index."""

    x: torch.Tensor
    h: torch.Tensor
    edge_index: torch.Tensor
    batch: torch.Tensor
    sizes: torch.Tensor

    @property
    def num_graphs(self) -> int:
        return len(self.sizes)

    def to(self, device) -> "Batch":
        """This batch on ``device``."""
        return Batch(*(t.to(device) for t in (self.x, self.h, self.edge_index, self.batch, self.sizes)))


class MoleculeSet:
    """A subset of QM9 rows as flat arrays, from which batches are cut; ``hydrogens=False`` keeps only the heavy
    atoms of each molecule (the heavy-atom model's data)."""

    def __init__(self, qm9, rows: np.ndarray, hydrogens: bool = True):
        self.rows = np.asarray(rows)
        self.qm9 = qm9
        self.hydrogens = bool(hydrogens)
        if self.hydrogens:
            self.sizes = qm9.sizes[self.rows]
        else:
            heavy = np.add.reduceat((qm9.numbers > 1).astype(np.int64), qm9.offsets[:-1])
            self.sizes = heavy[self.rows]

    @classmethod
    def from_split(cls, part: str, seed: int = _SPLIT_SEED, hydrogens: bool = True) -> "MoleculeSet":
        from molgym.data.qm9 import load_qm9

        qm9 = load_qm9()
        split = qm9_split(len(qm9), seed)
        if part not in split:
            raise ValueError(f"unknown split part {part!r}; allowed: {', '.join(split)}")
        return cls(qm9, split[part], hydrogens=hydrogens)

    def subset(self, count: int) -> "MoleculeSet":
        """The first ``count`` molecules of this set (same hydrogen setting)."""
        return MoleculeSet(self.qm9, self.rows[:count], hydrogens=self.hydrogens)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices) -> Batch:
        """Batch of the molecules at ``indices`` (positions into this set), positions centred per molecule."""
        picked = np.asarray(indices)
        rows = self.rows[picked]
        q = self.qm9
        numbers = np.concatenate([q.numbers[q.offsets[r]:q.offsets[r + 1]] for r in rows])
        positions = np.concatenate([q.positions[q.offsets[r]:q.offsets[r + 1]] for r in rows])
        if not self.hydrogens:
            keep = numbers > 1
            numbers, positions = numbers[keep], positions[keep]
        sizes = torch.as_tensor(self.sizes[picked], dtype=torch.long)
        edge_index, batch = fully_connected_edges(sizes)
        x = center(torch.as_tensor(positions, dtype=torch.float32), batch, len(sizes))
        return Batch(x=x, h=encode_elements(numbers), edge_index=edge_index, batch=batch, sizes=sizes)


def size_distribution(sizes: np.ndarray, max_atoms: int = 64) -> np.ndarray:
    """Probability of each number of atoms ``0..max(sizes)`` (the sampler draws molecule sizes from it)."""
    counts = np.bincount(np.asarray(sizes, dtype=int))
    if len(counts) > max_atoms + 1:
        raise ValueError(f"molecules with up to {len(counts) - 1} atoms; the limit is {max_atoms}")
    return counts / counts.sum()
