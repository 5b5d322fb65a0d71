"""Score a set of generated structures: every molgym metric in one call.

:func:`evaluate` returns per-molecule records and a summary (mean, 95 % CI, n) per metric. The metrics
are computed in the modules that define them (:mod:`~molgym.metrics.bonds`,
:mod:`~molgym.metrics.chemistry`, :mod:`~molgym.metrics.physics`, :mod:`~molgym.metrics.shape`); each metric's
declaration (definition, kind, bounds, how it is ranked and shown) is in :data:`molgym.metrics.registry.REGISTRY`,
which the summaries here are read off. :func:`register_metric` adds one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from molgym.chem import bag_from_numbers, format_formula, parse_formula
from molgym.metrics import bonds, chemistry, physics, shape
from molgym.metrics.posebusters_checks import posebusters_checks
from molgym.metrics.registry import REGISTRY, register_metric
from molgym.metrics.stats import summarize, wilson_interval
from molgym.potentials.base import Potential, PotentialError

__all__ = ["register_metric", "evaluate", "molecule_records", "summarize_records", "pooled_counts"]


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
    """One dict of per-molecule metrics for each structure (see :data:`~molgym.metrics.registry.REGISTRY`).

    ``bags`` (one per structure) or ``formula`` gives the expected composition; ``potential`` enables the energy
    metrics (``relax_steps=0`` skips relaxation); ``referee`` with ``referee_sample > 0`` scores a seeded sample
    of that many molecules with the referee's atomisation energy, and with ``referee_best_known`` (the formula's
    best-known return under the referee) the fraction of it that each reaches; it also relaxes a seeded sample of
    that many valid, plausible molecules under the referee (``referee_relax_steps`` BFGS steps at most, 0: no
    relaxation). ``posebusters`` runs PoseBusters' molecule checks on every molecule.
    """
    records = []
    mols = []
    for i, atoms in enumerate(structures):
        expected = bags[i] if bags is not None else (parse_formula(formula) if formula else None)
        rec, mol = _chemistry_record(i, atoms, expected, target)
        records.append(rec)
        mols.append(mol)
    if posebusters:
        for rec, checks in zip(records, posebusters_checks(mols)):
            rec["posebusters"] = bool(checks) and all(checks.values())
            if checks is not None:
                rec["posebusters_checks"] = checks
    # an empty canvas has no energy to score, and an implausible (fused) structure no meaningful one
    nonempty = [i for i, a in enumerate(structures) if len(a) and records[i]["plausible"]]
    if potential is not None and nonempty:
        _add_energy_metrics(records, structures, nonempty, potential, best_known, relax_fmax, relax_steps)
    if referee is not None and referee_sample > 0 and nonempty:
        _add_referee_metrics(records, structures, nonempty, referee, referee_sample, referee_best_known,
                             referee_relax_steps, seed)
    return records


def _chemistry_record(i: int, atoms: Atoms, expected: dict | None, target: np.ndarray | None) -> tuple[dict, object]:
    """The potential-free metrics of one structure (composition, RDKit perception, EDM stability, registered
    metrics, plausibility, shape) and its RDKit molecule (``None`` if not perceived)."""
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
    for metric in REGISTRY.values():
        if metric.compute is not None:
            value = metric.compute(atoms)
            rec[metric.name] = None if value is None else (bool(value) if metric.kind == "fraction"
                                                           else _finite(value))
    problem = physics.implausibility(atoms)
    rec["plausible"] = problem is None
    if problem:
        rec["implausible_reason"] = problem
    if target is not None:
        rec["shape_distance"] = _finite(shape.shape_distance(atoms, target))  # None without heavy atoms
    return rec, perception.mol


def _add_energy_metrics(records: list[dict], structures: Sequence[Atoms], nonempty: list[int], potential: Potential,
                        best_known: float | None, relax_fmax: float, relax_steps: int) -> None:
    """Energy, return (and its fraction of ``best_known``) under ``potential`` for the plausible structures, and
    their relaxation energy drop, heavy-atom RMSD, steps and whether it kept the bond graph (``relax_steps`` > 0)."""
    energies, returns = physics.atomisation_energies(potential, [structures[i] for i in nonempty])
    for k, e, r in zip(nonempty, energies, returns):
        rec, atoms = records[k], structures[k]
        rec["energy"] = _finite(e)
        rec["return"] = _finite(r)
        rec["return_per_atom"] = _finite(r / len(atoms)) if len(atoms) else None
        if best_known and rec["matches_task"] and rec["return"] is not None:
            rec["fraction_best_known"] = rec["return"] / best_known
    if relax_steps <= 0:
        return
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
        rec["relax_graph_kept"] = physics.graph_kept(atoms, result.atoms)


def _add_referee_metrics(records: list[dict], structures: Sequence[Atoms], nonempty: list[int], referee: Potential,
                         sample: int, best_known: float | None, relax_steps: int, seed: int) -> None:
    """The referee's return (and fraction of its ``best_known``) on a seeded sample of ``sample`` plausible
    structures, and its relaxation of a seeded sample of as many valid ones (``relax_steps`` > 0)."""
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(nonempty, size=min(sample, len(nonempty)), replace=False))
    for i in chosen:
        try:
            _e, r = physics.atomisation_energies(referee, [structures[i]])
        except PotentialError:
            continue
        records[i]["referee_return_per_atom"] = _finite(r[0] / len(structures[i]))
        if best_known and records[i]["matches_task"] and _finite(r[0]) is not None:
            records[i]["referee_fraction_best_known"] = float(r[0]) / best_known
    valid = [i for i in nonempty if records[i]["valid"]]
    if relax_steps > 0 and valid:
        for i in sorted(rng.choice(valid, size=min(sample, len(valid)), replace=False)):
            records[i].update(physics.referee_relaxation(structures[i], referee, steps=relax_steps))


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def summarize_records(records: Sequence[dict]) -> dict[str, dict]:
    """Per-metric summaries (mean, ci95, n; median and p90 for values) of per-molecule records, the set and count
    metrics, and PoseBusters' pass rate per check (``"posebusters_checks"``: check -> summary, valid molecules)."""
    out: dict[str, dict] = {}
    for m in REGISTRY.values():
        if m.kind in ("set", "count"):
            continue
        values = [r.get(m.name) for r in records]
        if all(v is None for v in values):
            continue
        out[m.name] = summarize(values, binary=(m.kind == "fraction"), bounds=m.bounds)
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
