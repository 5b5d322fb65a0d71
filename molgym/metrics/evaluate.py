"""Score a set of generated structures: every molgym metric in one call.

:func:`evaluate` returns per-molecule records and a summary (mean, 95 % CI, n) per metric. The metric
definitions live in the modules that compute them (:mod:`~molgym.metrics.bonds`,
:mod:`~molgym.metrics.chemistry`, :mod:`~molgym.metrics.physics`, :mod:`~molgym.metrics.shape`);
:data:`METRICS` lists them with one-line descriptions for reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms

from molgym.chem import bag_from_numbers, format_formula, parse_formula
from molgym.metrics import bonds, chemistry, physics, shape
from molgym.metrics.posebusters_checks import posebusters_checks
from molgym.metrics.stats import summarize, wilson_interval
from molgym.potentials.base import Potential, PotentialError

__all__ = ["METRICS", "HIGHER_IS_BETTER", "EXTRA_METRICS", "register_metric", "evaluate", "molecule_records",
           "summarize_records", "pooled_counts"]

#: name -> (description, kind): kind "fraction" (0/1 per molecule), "value" (per molecule), "set" (a property of
#: a job's set of molecules, averaged over seeds in the leaderboards) or "count" (pooled over seeds).
METRICS: dict[str, tuple[str, str]] = {
    "matches_task": ("composition equals the task's bag (formula/shape/bag tasks)", "fraction"),
    "valid": ("RDKit sanitises the perceived molecule; every fragment neutral, no radicals", "fraction"),
    "connected": ("bond graph is one fragment", "fraction"),
    "valid_connected": ("valid and one fragment", "fraction"),
    "plausible": ("no fused atoms (closer than 0.6 x their covalent radii or 0.6 Å): only plausible molecules get "
                  "energy-based scores", "fraction"),
    "atom_stability": ("fraction of atoms whose EDM bond orders sum to their valence", "value"),
    "molecule_stable": ("every atom EDM-stable", "fraction"),
    "uniqueness": ("distinct SMILES / valid", "set"),
    "novelty": ("valid molecules whose SMILES is not in QM9", "set"),
    "diversity": ("mean pairwise Tanimoto distance (Morgan r=2) of distinct valid molecules", "set"),
    "distinct_valid": ("distinct valid molecules (canonical SMILES, heavy-atom graph, no stereo), pooled over "
                       "seeds", "count"),
    "posebusters": ("passes every PoseBusters molecule check (config 'mol', on molgym's perceived molecule with "
                    "explicit H); molecules that are not valid fail", "fraction"),
    "energy": ("total energy under the benchmark potential (eV)", "value"),
    "return": ("atomisation energy sum E(atom) - E(mol) under the potential (eV)", "value"),
    "return_per_atom": ("return / number of atoms (eV/atom)", "value"),
    "fraction_best_known": ("return / best-known return for the formula", "value"),
    "relax_energy_drop": ("E(generated) - E(relaxed) under the potential (eV)", "value"),
    "relax_rmsd": ("heavy-atom RMSD (Å) between generated and relaxed, after alignment", "value"),
    "referee_return_per_atom": ("GFN2-xTB atomisation energy per atom on a sample (eV/atom)", "value"),
    "referee_fraction_best_known": ("GFN2-xTB return / GFN2-xTB best-known return for the formula, on the referee "
                                    "sample (the score no potential error can inflate)", "value"),
    "referee_relax_energy": ("GFN2-xTB relaxation energy E(generated) - E(relaxed) (kcal/mol) of a seeded sample "
                             "of valid, plausible molecules (BFGS to 0.05 eV/Å); median and 90th percentile",
                             "value"),
    "referee_relax_rmsd": ("heavy-atom RMSD (Å) between generated and GFN2-xTB-relaxed, same sample", "value"),
    "referee_graph_kept": ("bond graph (distance rule, H included) unchanged by the GFN2-xTB relaxation, same "
                           "sample", "fraction"),
    "shape_distance": ("Chamfer distance (Å) of heavy atoms to the target cloud after alignment", "value"),
}
#: Range of per-molecule values whose confidence intervals are clipped to it.
BOUNDS: dict[str, tuple[float, float]] = {"atom_stability": (0.0, 1.0)}
#: Direction of each metric for rankings (True: higher is better).
HIGHER_IS_BETTER: dict[str, bool] = {
    "relax_energy_drop": False, "relax_rmsd": False, "shape_distance": False, "energy": False,
    "referee_relax_energy": False, "referee_relax_rmsd": False,
}


#: Metrics added by :func:`register_metric`: name -> function of one molecule.
EXTRA_METRICS: dict[str, Callable[[Atoms], float | bool | None]] = {}


def register_metric(name: str, description: str, compute: Callable[[Atoms], float | bool | None],
                    kind: str = "value", higher_is_better: bool = True) -> None:
    """Add a per-molecule metric: ``compute(atoms)`` gives a number (``kind="value"``) or a bool
    (``kind="fraction"``), or ``None`` when it does not apply. From then on :func:`molecule_records`, the
    summaries, ``results.json`` and the report's per-task tables carry it, with its description among the
    definitions. Register it at import of a module that every benchmark worker imports (or run with
    ``--workers 1``): worker processes start fresh."""
    if name in METRICS:
        raise ValueError(f"metric {name!r} already exists; choose another name")
    if kind not in ("value", "fraction"):
        raise ValueError(f"kind must be 'value' or 'fraction', got {kind!r}")
    if not callable(compute):
        raise ValueError(f"compute must be a function of one ase.Atoms, got {compute!r}")
    METRICS[name] = (description, kind)
    HIGHER_IS_BETTER[name] = bool(higher_is_better)
    EXTRA_METRICS[name] = compute


def molecule_records(
    structures: Sequence[Atoms],
    potential: Potential | None = None,
    *,
    bags: Sequence[dict] | None = None,
    formula: str | None = None,
    target: np.ndarray | None = None,
    best_known: float | None = None,
    relax_fmax: float = 0.05,
    relax_steps: int = 200,
    referee: Potential | None = None,
    referee_sample: int = 0,
    referee_best_known: float | None = None,
    referee_relax_steps: int = 300,
    posebusters: bool = True,
    seed: int = 0,
) -> list[dict]:
    """One dict of per-molecule metrics for each structure (see :data:`METRICS`).

    ``bags`` (one per structure) or ``formula`` gives the expected composition; ``potential`` enables the energy
    metrics (``relax_steps=0`` skips relaxation); ``referee`` with ``referee_sample > 0`` scores a seeded sample
    of that many molecules with the referee's atomisation energy, and with ``referee_best_known`` (the formula's
    best-known return under the referee) the fraction of it that each reaches; it also relaxes a seeded sample of
    that many valid, plausible molecules under the referee (``referee_relax_steps`` BFGS steps at most, 0: no
    relaxation). ``posebusters`` runs PoseBusters' molecule checks on every molecule.
    """
    records: list[dict] = []
    mols = []
    for i, atoms in enumerate(structures):
        expected = bags[i] if bags is not None else (parse_formula(formula) if formula else None)
        composition = bag_from_numbers(atoms.numbers) if len(atoms) else {}
        perception = chemistry.perceive(atoms)
        stable = bonds.atom_stability(atoms) if len(atoms) else np.zeros(0, bool)
        rec = {
            "index": i,
            "formula": format_formula(composition) if composition else "",
            "n_atoms": len(atoms),
            "matches_task": None if expected is None else composition == dict(expected),
            "valid": perception.valid,
            "connected": perception.connected,
            "valid_connected": perception.valid and perception.connected,
            "fragments": perception.fragments,
            "smiles": perception.smiles,
            "atom_stability": float(stable.mean()) if len(stable) else 0.0,
            "molecule_stable": bool(len(stable) and stable.all()),
        }
        mols.append(perception.mol)
        for name, compute in EXTRA_METRICS.items():
            value = compute(atoms)
            rec[name] = None if value is None else (bool(value) if METRICS[name][1] == "fraction" else _finite(value))
        problem = physics.implausibility(atoms)
        rec["plausible"] = problem is None
        if problem:
            rec["implausible_reason"] = problem
        if target is not None:
            rec["shape_distance"] = _finite(shape.shape_distance(atoms, target))  # None without heavy atoms
        records.append(rec)

    if posebusters:
        for rec, checks in zip(records, posebusters_checks(mols)):
            rec["posebusters"] = bool(checks) and all(checks.values())
            if checks is not None:
                rec["posebusters_checks"] = checks

    # an empty canvas has no energy to score, and an implausible (fused) structure no meaningful one
    nonempty = [i for i, a in enumerate(structures) if len(a) and records[i]["plausible"]]
    if potential is not None and nonempty:
        energies, returns = physics.atomisation_energies(potential, [structures[i] for i in nonempty])
        for k, e, r in zip(nonempty, energies, returns):
            rec, atoms = records[k], structures[k]
            rec["energy"] = _finite(e)
            rec["return"] = _finite(r)
            rec["return_per_atom"] = _finite(r / len(atoms)) if len(atoms) else None
            if best_known and rec["matches_task"] and rec["return"] is not None:
                rec["fraction_best_known"] = rec["return"] / best_known
        if relax_steps > 0:
            for rec, atoms in zip(records, structures):
                if rec.get("energy") is None:
                    continue
                try:
                    result = physics.relax(atoms, potential, fmax=relax_fmax, steps=relax_steps)
                except (PotentialError, ValueError, np.linalg.LinAlgError):
                    continue
                if physics.implausibility(result.atoms):  # the relaxation left the trusted domain: no score
                    rec["relax_left_domain"] = True
                    continue
                heavy = atoms.numbers > 1
                rec["relax_energy_drop"] = _finite(rec["energy"] - result.energy)
                rec["relax_rmsd"] = physics.kabsch_rmsd(atoms.positions[heavy], result.atoms.positions[heavy])
                rec["relax_steps"] = result.steps

    if referee is not None and referee_sample > 0 and nonempty:
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(nonempty, size=min(referee_sample, len(nonempty)), replace=False))
        for i in chosen:
            try:
                _e, r = physics.atomisation_energies(referee, [structures[i]])
            except PotentialError:
                continue
            records[i]["referee_return_per_atom"] = _finite(r[0] / len(structures[i]))
            if referee_best_known and records[i]["matches_task"] and _finite(r[0]) is not None:
                records[i]["referee_fraction_best_known"] = float(r[0]) / referee_best_known
        valid = [i for i in nonempty if records[i]["valid"]]
        if referee_relax_steps > 0 and valid:
            for i in sorted(rng.choice(valid, size=min(referee_sample, len(valid)), replace=False)):
                records[i].update(physics.referee_relaxation(structures[i], referee, steps=referee_relax_steps))
    return records


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def summarize_records(records: Sequence[dict]) -> dict[str, dict]:
    """Per-metric summaries (mean, ci95, n; median and p90 for values) of per-molecule records, the set and count
    metrics, and PoseBusters' pass rate per check (``"posebusters_checks"``: check -> summary, valid molecules)."""
    out: dict[str, dict] = {}
    for name, (_desc, kind) in METRICS.items():
        if kind in ("set", "count"):
            continue
        values = [r.get(name) for r in records]
        if all(v is None for v in values):
            continue
        out[name] = summarize(values, binary=(kind == "fraction"), bounds=BOUNDS.get(name))
    smiles = [r.get("smiles") for r in records]
    n_valid = sum(s is not None for s in smiles)
    for name, fn in (("uniqueness", chemistry.uniqueness), ("novelty", chemistry.novelty),
                     ("diversity", chemistry.diversity)):
        value = fn(smiles)
        out[name] = {"mean": value, "ci95": [None, None], "n": n_valid}
    if out["uniqueness"]["mean"] is not None:
        distinct = len({s for s in smiles if s is not None})
        out["uniqueness"]["ci95"] = list(wilson_interval(distinct, n_valid))
    out.update(pooled_counts(records))
    return out


def pooled_counts(records: Sequence[dict]) -> dict[str, dict]:
    """The count metrics and PoseBusters' per-check pass rates of ``records`` (one job's, or all seeds' pooled)."""
    smiles = [r.get("smiles") for r in records]
    distinct = {s for s in smiles if s is not None}
    out: dict[str, dict] = {"distinct_valid": {"mean": len(distinct), "ci95": [None, None],
                                               "n": sum(s is not None for s in smiles)}}
    checks = [r["posebusters_checks"] for r in records if r.get("posebusters_checks")]
    if checks:
        out["posebusters_checks"] = {name: summarize([c.get(name, False) for c in checks], binary=True)
                                     for name in checks[0]}
    return out


def evaluate(structures: Sequence[Atoms], potential: Potential | None = None, **options) -> dict:
    """``{"molecules": [...records...], "summary": {metric: {"mean", "ci95", "n"}}}`` for ``structures``.

    ``options`` are those of :func:`molecule_records`.
    """
    records = molecule_records(structures, potential, **options)
    return {"molecules": records, "summary": summarize_records(records)}
