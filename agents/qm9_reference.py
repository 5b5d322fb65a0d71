"""The QM9 reference generator: real molecules from QM9, the realism upper bound of the benchmark.

For a task with a bag, it draws (seeded, with replacement when there are too few) QM9 molecules with exactly
that composition; when QM9 has none (e.g. C7H8N2O2 has 11 heavy atoms, QM9 at most 9) it draws molecules with
the same heavy-atom count, or the nearest count QM9 has. ``atoms.info["qm9_match"]`` says which.
Unconditional tasks draw uniformly from all of QM9. It uses no potential.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from ase import Atoms

from molgym.generator import Generator, Progress

__all__ = ["QM9Reference"]


@lru_cache(maxsize=1)
def _composition_index() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(heavy counts, hill formulas, formula -> rows)`` for all of QM9."""
    from molgym.chem import format_formula
    from molgym.data.qm9 import load_qm9

    qm9 = load_qm9()
    starts = qm9.offsets[:-1]
    counts = {s: np.add.reduceat((qm9.numbers == z).astype(np.int64), starts)
              for s, z in (("C", 6), ("H", 1), ("N", 7), ("O", 8), ("F", 9))}
    formulas = np.array([
        format_formula({s: int(counts[s][i]) for s in counts}) for i in range(len(qm9))
    ])
    index: dict[str, list[int]] = {}
    for i, f in enumerate(formulas):
        index.setdefault(str(f), []).append(i)
    return qm9.heavy_atom_counts(), formulas, {k: np.array(v) for k, v in index.items()}


class QM9Reference(Generator):
    """Molecules drawn from QM9 matching the task's formula, or its size when no formula matches."""

    name = "qm9"
    version = "1"
    unconditional = True

    def __init__(self, potential=None, **settings):
        super().__init__(potential=potential, **settings)

    def generate(self, task, n: int, seed: int, progress: Progress | None = None) -> list[Atoms]:
        """``n`` QM9 molecules: for a formula task, ones of that formula (else of the nearest heavy-atom count);
        for an unconditional task or ``task=None``, uniformly drawn ones. Deterministic in ``seed``; ``progress``
        hears of all ``n`` at once (drawing is instant once QM9 is loaded)."""
        molecules = self._draw(task, n, seed)
        if progress is not None:
            progress(len(molecules))
        return molecules

    def _draw(self, task, n: int, seed: int) -> list[Atoms]:
        from molgym.chem import bag_size, format_formula
        from molgym.data.qm9 import load_qm9

        qm9 = load_qm9()
        rng = np.random.default_rng([seed, 104729])
        if task is None or task.kind == "unconditional":
            rows = rng.choice(len(qm9), size=n, replace=False)
            return [self._tag(qm9.atoms(int(r)), "unconditional") for r in rows]
        heavy, _formulas, index = _composition_index()
        out = []
        for bag in task.bags(n, seed):
            formula = format_formula(bag)
            rows, how = index.get(formula), "formula"
            if rows is None:
                n_heavy = bag_size(bag) - bag.get("H", 0)
                available = np.unique(heavy)
                nearest = int(available[np.abs(available - n_heavy).argmin()])
                rows, how = np.nonzero(heavy == nearest)[0], ("size" if nearest == n_heavy else "nearest-size")
            out.append(self._tag(qm9.atoms(int(rng.choice(rows))), how))
        return out

    @staticmethod
    def _tag(atoms: Atoms, how: str) -> Atoms:
        atoms.info["qm9_match"] = how
        return atoms
