"""Error of a potential against a reference: energies and forces, per category of structure.

Used by ``molgym potential evaluate`` and by the model card. The reference is another potential (e.g. GFN2-xTB)
or the labels stored in the structures themselves (``atoms.get_potential_energy()`` / ``get_forces()`` from an
extended XYZ file). Structures are grouped by ``atoms.info["category"]`` (``"all"`` when absent), and every
figure is reported per group and for all structures together.

Two energy errors are given: the plain MAE, and the MAE after fitting one energy offset per element
(least squares). The second is the fair comparison between methods with different atomic reference energies
(GFN1 vs GFN2, PM6 vs xTB); for a model trained on the reference, the two should nearly agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from molgym.potentials.base import Potential, PotentialError

STORED = "stored"


def stored_labels(structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Energies and forces stored with the structures; error naming the first structure that has none."""
    energies, forces = [], []
    for i, atoms in enumerate(structures):
        try:
            energies.append(float(atoms.get_potential_energy()))
        except Exception:
            if "energy" not in atoms.info:
                raise ValueError(
                    f"structure {i} has no stored energy; give a reference potential (e.g. --reference xtb)"
                ) from None
            energies.append(float(atoms.info["energy"]))
        try:
            forces.append(np.asarray(atoms.get_forces()))
        except Exception:
            forces.append(np.asarray(atoms.arrays["forces"]) if "forces" in atoms.arrays else None)
    return np.array(energies), forces


def predict(
    potential: Potential, structures: Sequence[Atoms], batch_size: int = 256, progress: bool = False
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Energies and forces of ``potential`` in batches; a structure whose SCF fails gets NaN (reported later)."""
    from tqdm.auto import tqdm

    energies = np.full(len(structures), np.nan)
    forces: list[np.ndarray | None] = [None] * len(structures)
    bar = tqdm(total=len(structures), desc=potential.name, unit="struct", disable=not progress, leave=False)
    for start in range(0, len(structures), batch_size):
        chunk = list(structures[start : start + batch_size])
        try:
            e, f = potential.energies_and_forces(chunk)
            energies[start : start + len(chunk)] = e
            forces[start : start + len(chunk)] = f
        except PotentialError:  # evaluate one by one to isolate the failing structures
            for k, atoms in enumerate(chunk):
                try:
                    e, f = potential.energies_and_forces([atoms])
                    energies[start + k], forces[start + k] = e[0], f[0]
                except PotentialError:
                    pass
        bar.update(len(chunk))
    bar.close()
    return energies, forces


def _fitted_offset_residuals(structures: Sequence[Atoms], diff: np.ndarray) -> np.ndarray:
    """Residuals of ``diff`` after a least-squares fit of one energy offset per element."""
    elements = sorted({int(z) for a in structures for z in a.numbers})
    counts = np.array([[np.count_nonzero(a.numbers == z) for z in elements] for a in structures], dtype=float)
    coef, *_ = np.linalg.lstsq(counts, diff, rcond=None)
    return diff - counts @ coef


def error_table(
    structures: Sequence[Atoms],
    predicted: tuple[np.ndarray, list[np.ndarray | None]],
    reference: tuple[np.ndarray, list[np.ndarray | None]],
) -> dict[str, dict[str, float]]:
    """Per-category error figures (energies in meV, forces in meV/Å). Failed structures are counted, not used."""
    e_pred, f_pred = predicted
    e_ref, f_ref = reference
    categories = np.array([str(a.info.get("category", "all")) for a in structures])
    groups = {"all": np.arange(len(structures))}
    for cat in sorted(set(categories) - {"all"}):
        groups[cat] = np.nonzero(categories == cat)[0]
    table: dict[str, dict[str, float]] = {}
    for cat, idx in groups.items():
        ok = idx[np.isfinite(e_pred[idx]) & np.isfinite(e_ref[idx])]
        row: dict[str, float] = {"structures": int(len(idx)), "failed": int(len(idx) - len(ok))}
        if len(ok):
            subset = [structures[i] for i in ok]
            diff = e_pred[ok] - e_ref[ok]
            n_atoms = np.array([len(a) for a in subset])
            row["energy_mae_meV"] = 1000 * float(np.mean(np.abs(diff)))
            row["energy_rmse_meV"] = 1000 * float(np.sqrt(np.mean(diff**2)))
            row["energy_mean_error_meV"] = 1000 * float(np.mean(diff))
            row["energy_mae_per_atom_meV"] = 1000 * float(np.mean(np.abs(diff) / n_atoms))
            row["energy_mae_fitted_offsets_meV"] = 1000 * float(np.mean(np.abs(_fitted_offset_residuals(subset, diff))))
            pairs = [(f_pred[i], f_ref[i]) for i in ok if f_pred[i] is not None and f_ref[i] is not None]
            if pairs:
                df = np.concatenate([(p - r).ravel() for p, r in pairs])
                row["force_mae_meV_per_A"] = 1000 * float(np.mean(np.abs(df)))
                row["force_rmse_meV_per_A"] = 1000 * float(np.sqrt(np.mean(df**2)))
        table[cat] = row
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    """A fixed-width text table of :func:`error_table`'s output."""
    columns = [
        ("structures", "n", "{:d}"),
        ("failed", "failed", "{:d}"),
        ("energy_mae_meV", "E MAE", "{:.1f}"),
        ("energy_mae_per_atom_meV", "E MAE/atom", "{:.2f}"),
        ("energy_mae_fitted_offsets_meV", "E MAE (offsets fitted)", "{:.1f}"),
        ("energy_rmse_meV", "E RMSE", "{:.1f}"),
        ("force_mae_meV_per_A", "F MAE", "{:.1f}"),
        ("force_rmse_meV_per_A", "F RMSE", "{:.1f}"),
    ]
    width = max(12, max(len(k) for k in table) + 2)
    head = f"{'category':<{width}}" + "".join(f"{label:>{max(10, len(label) + 2)}}" for _, label, _ in columns)
    lines = [head, "-" * len(head)]
    for cat, row in table.items():
        cells = []
        for key, label, fmt in columns:
            w = max(10, len(label) + 2)
            cells.append(f"{fmt.format(row[key]) if key in row else '-':>{w}}")
        lines.append(f"{cat:<{width}}" + "".join(cells))
    lines.append("energies in meV, forces in meV/Å")
    return "\n".join(lines)
