"""SiMGen's step 3, element search: for every trajectory, a greedy search over the free atoms' heavy elements
that maximises the typed kernel log-density, minus penalties for over-valent atoms and (with ``piece_penalty``)
for separate pieces."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from ase import Atoms

from molgym.agents.simgen import hydrogens
from molgym.agents.simgen.settings import _Job


class ElementSearch:
    """Mixin of :class:`~molgym.agents.simgen.SiMGen`: element assignment of one batch of trajectories."""

    def _typed_scores(self, structures: list[Atoms]) -> list[np.ndarray]:
        """Per-atom typed kernel log-density of each structure (at ``assignment_width``)."""
        import torch

        model = self.descriptor_model()
        ref = self.reference()
        feats = model.descriptors(structures)
        self.descriptor_calls += len(structures)
        z = (np.concatenate(feats) - ref.typed_mean) / ref.typed_std
        numbers = np.concatenate([s.numbers for s in structures])
        out = np.empty(len(z))
        h = self.assignment_width * float(ref.typed_scale)
        zt = torch.as_tensor(z)
        for el in np.unique(numbers):
            rows = np.nonzero(numbers == el)[0]
            refs = torch.as_tensor(ref.typed[ref.numbers == el])
            if len(refs) == 0:
                out[rows] = -np.inf
                continue
            d2 = torch.cdist(zt[rows], refs).pow(2) / ref.n_features
            # "reference": sum over the element's reference atoms (its frequency acts as a prior);
            # "uniform": mean over them (every allowed element equally likely a priori)
            norm = len(ref.numbers) if self.element_prior == "reference" else len(refs)
            out[rows] = (torch.logsumexp(-d2 / (2 * h * h), dim=1) - math.log(norm)).numpy()
        ptr = np.cumsum([0] + [len(s) for s in structures])
        return [out[ptr[i]:ptr[i + 1]] for i in range(len(structures))]

    def _score(self, atoms: Atoms, per_atom: np.ndarray) -> float:
        """Total typed log-density, with a large penalty per atom bonded beyond its largest valence and, with
        ``piece_penalty``, a penalty per piece beyond one (bonds by the elements' connectivity cutoffs)."""
        from molgym.chem import valences

        bonds = hydrogens.heavy_bonds(atoms.numbers, atoms.positions)
        degree = np.zeros(len(atoms), dtype=int)
        for i, j, _ in bonds:
            degree[i] += 1
            degree[j] += 1
        over = sum(max(0, d - max(valences(int(z)))) for d, z in zip(degree, atoms.numbers))
        value = float(per_atom.sum()) - 100.0 * over
        if self.piece_penalty > 0 and len(atoms) > 1:
            value -= self.piece_penalty * (_count_pieces(len(atoms), bonds) - 1)
        return value

    def _assign_elements(self, positions: np.ndarray, jobs: list[_Job], rng: np.random.Generator,
                         report: Callable[[float], None] | None = None):
        """Greedy search over the free atoms' elements of every trajectory; returns (numbers, scores).

        Each round scores the current assignment and every single change (one atom to another allowed element;
        for a fixed multiset of elements, one swap of two atoms) in one batched descriptor call, then applies
        the improving changes: with free elements, the best change of each atom whose bonded neighbours are not
        changing in the same round; with a multiset, the best swap. At most ``assignment_rounds`` rounds.
        """
        T, n_free, _ = positions.shape
        current = []
        for job in jobs:
            if job.multiset is not None:
                current.append(rng.permutation(np.array(job.multiset, dtype=int)))
            else:
                current.append(np.full(n_free, 6 if 6 in job.elements else job.elements[0], dtype=int))
        scores = np.full(T, -np.inf)
        close = [np.linalg.norm(p[:, None] - p[None], axis=-1) < 1.8 for p in positions]
        active = list(range(T))
        for _round in range(self.assignment_rounds + 1):
            structs, meta = [], []  # meta: (trajectory, atoms changed, new elements)
            for t in active:
                job, base = jobs[t], current[t]
                structs.append(self._full(positions[t], base))
                meta.append((t, (), base))
                if _round == self.assignment_rounds:
                    continue  # last pass only scores the final assignment
                if job.multiset is not None:
                    for i in range(n_free):
                        for j in range(i + 1, n_free):
                            if base[i] != base[j]:
                                m = base.copy()
                                m[i], m[j] = m[j], m[i]
                                structs.append(self._full(positions[t], m))
                                meta.append((t, (i, j), m))
                else:
                    for i in range(n_free):
                        for z in job.elements:
                            if z != base[i]:
                                m = base.copy()
                                m[i] = z
                                structs.append(self._full(positions[t], m))
                                meta.append((t, (i,), m))
            if not structs:
                break
            per_atom = self._typed_scores(structs)
            if report is not None:
                report((_round + 1) / (self.assignment_rounds + 1))
            moves: dict[int, list[tuple[float, tuple, np.ndarray]]] = {}
            for (t, changed, m), atoms, pa in zip(meta, structs, per_atom):
                value = self._score(atoms, pa)
                if not changed:
                    scores[t] = value
                else:
                    moves.setdefault(t, []).append((value, changed, m))
            improved = []
            for t, options in moves.items():
                better = sorted((o for o in options if o[0] > scores[t] + 1e-9), key=lambda o: -o[0])
                if not better:
                    continue
                if jobs[t].multiset is not None:
                    current[t] = better[0][2]
                else:
                    new, taken = current[t].copy(), []
                    for _value, (i,), m in better:
                        if i in taken or any(close[t][i, k] for k in taken):
                            continue
                        new[i] = m[i]
                        taken.append(i)
                    current[t] = new
                improved.append(t)
            active = improved
            if not active:
                break
        return current, scores


def _count_pieces(n: int, bonds) -> int:
    """Connected pieces of ``n`` atoms joined by ``bonds`` (``(i, j, ...)`` tuples)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in bonds:
        parent[root(i)] = root(j)
    return len({root(i) for i in range(n)})
