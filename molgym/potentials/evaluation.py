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

from molgym.data.labels import ENERGY_KEY, FORCES_KEY
from molgym.potentials.base import Potential
from molgym.potentials.batching import energies_and_forces_or_nan

STORED = "stored"


def stored_labels(structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Energies and forces stored with the structures; error naming the first structure that has none."""
    energies, forces = [], []
    for i, atoms in enumerate(structures):
        if ENERGY_KEY in atoms.info:  # molgym datasets (mace-torch's --energy_key/--forces_key convention)
            energies.append(float(atoms.info[ENERGY_KEY]))
            forces.append(np.asarray(atoms.arrays[FORCES_KEY]) if FORCES_KEY in atoms.arrays else None)
            continue
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
        # one call per chunk; one by one only if it fails, to isolate the failing structures
        e, f, _reasons = energies_and_forces_or_nan(potential, chunk)
        energies[start : start + len(chunk)] = e
        forces[start : start + len(chunk)] = f
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


# ----------------------------------------------------------------------------------------------------------------
# reward-level checks: build trajectories, alternative placements, diatomics, isomers
# ----------------------------------------------------------------------------------------------------------------
def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def build_reward_errors(
    structures: Sequence[Atoms],
    predicted_energies: np.ndarray,
    reference_energies: np.ndarray,
    predicted_atom_energies: dict[int, float],
    reference_atom_energies: dict[int, float],
) -> dict[str, float]:
    """Per-step reward errors along full build trajectories (``category == "build"`` with ``info["trajectory"]``).

    Step ``k`` of a trajectory places atom ``k`` on the prefix of ``k - 1`` atoms; its reward is
    :func:`molgym.reward.prefix_rewards` of the prefix energies and the isolated-atom energies, computed once
    with the predicted energies (and the potential's own atom energies) and once with the reference. Incomplete
    trajectories (a failed label) are left out. Figures in meV.
    """
    from molgym.reward import prefix_rewards

    trajectories: dict[str, dict[int, int]] = {}
    for i, atoms in enumerate(structures):
        if atoms.info.get("category") == "build" and "trajectory" in atoms.info:
            trajectories.setdefault(str(atoms.info["trajectory"]), {})[int(atoms.info["step"])] = i
    diffs, ref_all, incomplete = [], [], 0
    for steps in trajectories.values():
        n = max(steps)
        idx = [steps.get(k) for k in range(1, n + 1)]
        if None in idx or not all(np.isfinite(predicted_energies[i]) and np.isfinite(reference_energies[i])
                                  for i in idx):
            incomplete += 1
            continue
        full = structures[idx[-1]]
        numbers = [int(full.numbers[k]) for k in range(n)]
        # prefix k is the first k atoms of the final structure, so atom k's element is full.numbers[k-1]
        r_pred = prefix_rewards(predicted_energies[idx], [predicted_atom_energies[z] for z in numbers])
        r_ref = prefix_rewards(reference_energies[idx], [reference_atom_energies[z] for z in numbers])
        diffs.append(r_pred - r_ref)
        ref_all.append(r_ref)
    if not diffs:
        return {"trajectories": 0, "incomplete": incomplete}
    d = np.concatenate(diffs)
    total = np.array([x.sum() for x in diffs])
    return {
        "trajectories": len(diffs),
        "incomplete": incomplete,
        "steps": int(len(d)),
        "reward_mae_meV": 1000 * float(np.mean(np.abs(d))),
        "reward_rmse_meV": 1000 * float(np.sqrt(np.mean(d**2))),
        "reward_max_abs_error_meV": 1000 * float(np.max(np.abs(d))),
        "reference_reward_mean_abs_meV": 1000 * float(np.mean(np.abs(np.concatenate(ref_all)))),
        "episode_return_mae_meV": 1000 * float(np.mean(np.abs(total))),
    }


def alternatives_rank_test(
    structures: Sequence[Atoms], predicted_energies: np.ndarray, reference_energies: np.ndarray
) -> dict[str, float]:
    """Spearman rank correlation of rewards over alternative placements of one atom on one canvas.

    Structures with ``category == "alternatives"`` are grouped by ``info["group"]``; within a group the canvas
    and the atom are the same, so the reward ranking is the (reversed) energy ranking.
    """
    groups: dict[str, list[int]] = {}
    for i, atoms in enumerate(structures):
        if atoms.info.get("category") == "alternatives":
            groups.setdefault(str(atoms.info.get("group", "all")), []).append(i)
    rhos, top1 = [], []
    for idx in groups.values():
        idx = [i for i in idx if np.isfinite(predicted_energies[i]) and np.isfinite(reference_energies[i])]
        if len(idx) < 3:
            continue
        p, r = predicted_energies[idx], reference_energies[idx]
        rho = _spearman(p, r)
        if np.isfinite(rho):
            rhos.append(rho)
            top1.append(float(np.argmin(p) == np.argmin(r)))
    if not rhos:
        return {"groups": 0}
    return {
        "groups": len(rhos),
        "spearman_mean": float(np.mean(rhos)),
        "spearman_median": float(np.median(rhos)),
        "spearman_min": float(np.min(rhos)),
        "best_placement_agreement": float(np.mean(top1)),
    }


def diatomic_monotonicity(
    structures: Sequence[Atoms], predicted_energies: np.ndarray, low: float = 0.5, high: float = 1.0,
    reference_energies: np.ndarray | None = None,
) -> dict:
    """Whether the energy of every element pair rises monotonically as the distance shrinks from ``high`` to
    ``low`` Å (``category == "diatomic"``, distance in ``info["distance"]``).

    With ``reference_energies``, the window of each pair starts instead at the reference's lowest-energy distance
    when that is below ``high`` (H2, OH, HF have bond lengths under 1 Å, so their reference itself falls before it
    rises between 1.0 and 0.5 Å): this tests the repulsive wall only."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    for i, atoms in enumerate(structures):
        if atoms.info.get("category") != "diatomic" or not np.isfinite(predicted_energies[i]):
            continue
        r = float(atoms.info.get("distance", atoms.get_distance(0, 1)))
        if low - 1e-9 <= r <= high + 1e-9:
            name = str(atoms.info.get("pair", atoms.get_chemical_formula()))
            ref = float(reference_energies[i]) if reference_energies is not None else 0.0
            pairs.setdefault(name, []).append((r, float(predicted_energies[i]), ref))
    result: dict = {"pairs": {}, "monotonic_pairs": 0, "total_pairs": 0}
    for name, points in sorted(pairs.items()):
        points.sort()  # by distance, ascending: energies must decrease
        if reference_energies is not None and points:
            r_min = points[int(np.argmin([p[2] for p in points]))][0]
            points = [p for p in points if p[0] <= r_min + 1e-9]
        e = np.array([p[1] for p in points])
        ok = bool(len(e) >= 2 and np.all(np.diff(e) < 0))
        result["pairs"][name] = {"points": len(e), "monotonic": ok,
                                 "rise_eV": float(e[0] - e[-1]) if len(e) else float("nan")}
        result["total_pairs"] += 1
        result["monotonic_pairs"] += int(ok)
    return result


def isomer_ranking(
    structures: Sequence[Atoms], predicted_energies: np.ndarray, reference_energies: np.ndarray
) -> dict[str, float]:
    """Spearman correlation of the energies of isomers (``category == "isomer"``), and the MAE of energies
    relative to each method's mean (meV)."""
    idx = [i for i, a in enumerate(structures) if a.info.get("category") == "isomer"
           and np.isfinite(predicted_energies[i]) and np.isfinite(reference_energies[i])]
    if len(idx) < 3:
        return {"isomers": len(idx)}
    p, r = predicted_energies[idx], reference_energies[idx]
    rel = (p - p.mean()) - (r - r.mean())
    return {
        "isomers": len(idx),
        "spearman": _spearman(p, r),
        "relative_energy_mae_meV": 1000 * float(np.mean(np.abs(rel))),
        "reference_energy_spread_meV": 1000 * float(r.max() - r.min()),
    }


def evaluate_structures(
    potential: Potential,
    structures: Sequence[Atoms],
    reference: tuple[np.ndarray, list[np.ndarray | None]],
    reference_atom_energies: dict[int, float] | None = None,
    progress: bool = False,
) -> dict:
    """Every figure for one set of structures: the per-category error table plus, where the set has them, the
    build-trajectory reward errors, the alternative-placement rank test, diatomic monotonicity and isomer
    ranking."""
    from molgym.reward import isolated_atom_energies

    predicted = predict(potential, structures, progress=progress)
    result: dict = {"structures": len(structures), "errors": error_table(structures, predicted, reference)}
    cats = {a.info.get("category") for a in structures}
    e_pred, e_ref = predicted[0], reference[0]
    if "build" in cats and any("trajectory" in a.info for a in structures):
        elements = sorted({int(z) for a in structures for z in a.numbers})
        if reference_atom_energies is None:
            from molgym.potentials import load_potential

            reference_atom_energies = isolated_atom_energies(load_potential("xtb"), elements)
        result["build_rewards"] = build_reward_errors(
            structures, e_pred, e_ref, isolated_atom_energies(potential, elements),
            {int(k): float(v) for k, v in reference_atom_energies.items()})
    if "alternatives" in cats:
        result["alternatives"] = alternatives_rank_test(structures, e_pred, e_ref)
    if "diatomic" in cats:
        result["diatomics"] = diatomic_monotonicity(structures, e_pred)
        reference_check = diatomic_monotonicity(structures, e_ref)
        result["diatomics_reference"] = {
            "monotonic_pairs": reference_check["monotonic_pairs"], "total_pairs": reference_check["total_pairs"],
            "not_monotonic": [k for k, v in reference_check["pairs"].items() if not v["monotonic"]]}
        result["diatomics_repulsive_wall"] = diatomic_monotonicity(structures, e_pred, reference_energies=e_ref)
    if "isomer" in cats:
        result["isomers"] = isomer_ranking(structures, e_pred, e_ref)
    return result


def format_checks(result: dict) -> str:
    """One line per reward-level check of :func:`evaluate_structures`'s result."""
    lines = []
    if "build_rewards" in result and result["build_rewards"].get("trajectories"):
        b = result["build_rewards"]
        lines.append(f"build trajectories: {b['trajectories']} ({b['steps']} steps), reward MAE "
                     f"{b['reward_mae_meV']:.1f} meV, RMSE {b['reward_rmse_meV']:.1f} meV, max "
                     f"{b['reward_max_abs_error_meV']:.0f} meV (|reward| averages {b['reference_reward_mean_abs_meV']:.0f} meV)")
    if "alternatives" in result and result["alternatives"].get("groups"):
        a = result["alternatives"]
        lines.append(f"alternative placements: {a['groups']} groups, Spearman mean {a['spearman_mean']:.3f} "
                     f"(median {a['spearman_median']:.3f}, min {a['spearman_min']:.3f}), best placement agrees in "
                     f"{100 * a['best_placement_agreement']:.0f}%")
    if "diatomics" in result:
        d = result["diatomics"]
        bad = [k for k, v in d["pairs"].items() if not v["monotonic"]]
        lines.append(f"diatomics 1.0->0.5 A: {d['monotonic_pairs']}/{d['total_pairs']} pairs rise monotonically"
                     + (f" (not: {', '.join(bad)})" if bad else ""))
        if "diatomics_reference" in result:
            ref = result["diatomics_reference"]
            lines.append(f"  (GFN2-xTB itself: {ref['monotonic_pairs']}/{ref['total_pairs']}"
                         + (f", not: {', '.join(ref.get('not_monotonic', []))}" if ref.get("not_monotonic") else "")
                         + ")")
        if "diatomics_repulsive_wall" in result:
            w = result["diatomics_repulsive_wall"]
            bad = [k for k, v in w["pairs"].items() if not v["monotonic"]]
            lines.append(f"diatomics from the xTB minimum (<= 1.0 A) to 0.5 A: {w['monotonic_pairs']}/"
                         f"{w['total_pairs']} pairs rise monotonically" + (f" (not: {', '.join(bad)})" if bad else ""))
    if "isomers" in result and "spearman" in result["isomers"]:
        i = result["isomers"]
        lines.append(f"isomers: {i['isomers']}, Spearman {i['spearman']:.3f}, relative-energy MAE "
                     f"{i['relative_energy_mae_meV']:.1f} meV (spread {i['reference_energy_spread_meV']:.0f} meV)")
    return "\n".join(lines)


#: The test files of a molgym dataset directory that ``evaluate_dataset`` reads, in report order.
DATASET_TEST_FILES = ("test", "nonqm9", "isomers")


def evaluate_dataset(potential, data, device: str | None = None, progress: bool = False) -> dict:
    """Evaluate ``potential`` (a Potential or spec) on the test files of a dataset directory against the stored
    GFN2-xTB labels; one :func:`evaluate_structures` result per file, plus provenance."""
    import json
    import time
    from pathlib import Path

    import ase.io

    from molgym.potentials.registry import load_potential

    data = Path(data)
    manifest_path = data / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{data} is not a molgym dataset directory (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    files = {name: data / f"{name}.xyz" for name in DATASET_TEST_FILES if (data / f"{name}.xyz").is_file()}
    if not files:
        raise FileNotFoundError(f"dataset {data} has none of {', '.join(f + '.xyz' for f in DATASET_TEST_FILES)}")
    sets = {}
    for name, path in files.items():
        sets[name] = ase.io.read(path, index=":") if path.stat().st_size else []
    pot = load_potential(potential, device=device)
    for structures in sets.values():
        pot.check_species(structures)
    atom_energies = {int(z): float(e) for z, e in manifest["isolated_atom_energies"].items()}
    start = time.perf_counter()
    result: dict = {"potential": pot.name, "data": str(data), "reference": manifest.get("reference_method"),
                    "sets": {}}
    for name, structures in sets.items():
        if structures:
            result["sets"][name] = evaluate_structures(pot, structures, stored_labels(structures), atom_energies,
                                                       progress=progress)
    result["seconds"] = time.perf_counter() - start
    return result


def format_dataset_result(result: dict) -> str:
    """Text report of :func:`evaluate_dataset`: one error table and the checks per test file."""
    parts = [f"{result['potential']} vs {result['reference']} on {result['data']}"]
    for name, res in result["sets"].items():
        parts.append(f"\n== {name} ({res['structures']} structures)")
        parts.append(format_table(res["errors"]))
        checks = format_checks(res)
        if checks:
            parts.append(checks)
    return "\n".join(parts)
