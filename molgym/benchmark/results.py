"""The results file of a benchmark run (``results.json``).

Schema (``schema_version`` 1)::

    {
      "schema_version": 1,
      "molgym_version": "...", "timestamp": "ISO-8601 UTC", "machine": {...},
      "suite": {name, version, description, tasks, n_samples, seeds, ...},
      "seeds": [...], "n_samples": N, "overrides": {tasks/seeds/n_samples that differ from the suite},
      "potential": {"spec": "xtb", "name": "GFN2-xTB", "selected_because": "..."},
      "executor": "local" | "ray",
      "generators": {name: {name, version, settings, potential_calls (summed over jobs)}},
      "tasks": {name: task description},
      "jobs_planned": N, "jobs_finished": M, "complete": bool,
      "jobs": [{job_id, generator, task, seed, summary: {metric: {mean, ci95, n}}, cost: {...}}],
      "leaderboard": {task: {generator: {metric: {mean, ci95, n}}, "cost": {...}}},
      "overall": {generator: {metric: mean over tasks}}
    }

Per-molecule metrics and the molecules themselves stay in ``jobs/`` and ``samples/``. The leaderboard pools the
molecules of all seeds of a (task, generator) pair; set metrics (uniqueness, novelty, diversity) are averaged
over seeds with a Student-t interval across seeds.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Sequence

import molgym
from molgym.metrics.evaluate import BOUNDS, METRICS
from molgym.metrics.stats import mean_interval, summarize

__all__ = ["SCHEMA_VERSION", "build_results", "machine_info", "HEADLINE_METRICS"]

SCHEMA_VERSION = 1
#: Metrics shown in the overall table, in order.
HEADLINE_METRICS = ("valid_connected", "plausible", "atom_stability", "molecule_stable", "uniqueness", "novelty",
                    "return_per_atom", "fraction_best_known", "referee_fraction_best_known", "relax_rmsd",
                    "shape_distance")


def machine_info() -> dict:
    """Where the benchmark ran (for reading timings)."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def _pooled(jobs: Sequence[dict]) -> dict:
    records = [r for j in jobs for r in j["molecules"]]
    out: dict = {}
    for name, (_d, kind) in METRICS.items():
        if kind == "set":
            values = [j["summary"].get(name, {}).get("mean") for j in jobs]
            values = [v for v in values if v is not None]
            if values:
                lo, hi = mean_interval(values) if len(values) > 1 else (None, None)
                if lo is not None:  # set metrics are fractions in [0, 1]
                    lo, hi = max(0.0, lo), min(1.0, hi)
                out[name] = {"mean": sum(values) / len(values), "ci95": [lo, hi], "n": len(values)}
            continue
        vals = [r.get(name) for r in records]
        if any(v is not None for v in vals):
            out[name] = summarize(vals, binary=(kind == "fraction"), bounds=BOUNDS.get(name))
    gen_s = sum(j["cost"]["generate_seconds"] for j in jobs)
    calls = sum(j["cost"]["potential_calls"] for j in jobs)
    valid = sum(j["cost"]["valid_connected"] for j in jobs)
    out["cost"] = {
        "generate_seconds": gen_s,
        "potential_calls": calls,
        "valid_connected": valid,
        "molecules": len(records),
        "seconds_per_valid": gen_s / valid if valid else None,
        "calls_per_valid": calls / valid if valid else None,
        "seeds": sorted(j["seed"] for j in jobs),
    }
    return out


def _overrides(context: dict) -> dict:
    """What this run changed with respect to its suite (``--tasks``, ``--seeds``, ``--n``); empty if nothing."""
    suite, specs = context["suite"], context["specs"]
    out: dict = {}
    tasks = [t.name for t in context["tasks"]]
    if tasks != list(suite.tasks):
        out["tasks"] = tasks
    seeds = sorted({s["seed"] for s in specs})
    if specs and seeds != sorted(suite.seeds):
        out["seeds"] = seeds
    ns = sorted({s["n"] for s in specs})
    if specs and ns != [suite.n_samples]:
        out["n_samples"] = ns[0]
    return out


def build_results(context: dict, jobs: Sequence[dict]) -> dict:
    """Assemble ``results.json`` from the run's context and its finished job results."""
    suite = context["suite"]
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for j in jobs:
        by_pair.setdefault((j["task"], j["generator"]), []).append(j)
    leaderboard: dict[str, dict] = {}
    for task in context["tasks"]:
        for g in context["generators"]:
            if (task.name, g) in by_pair:
                leaderboard.setdefault(task.name, {})[g] = _pooled(by_pair[(task.name, g)])
    overall: dict[str, dict] = {}
    for g in context["generators"]:
        rows = [leaderboard[t][g] for t in leaderboard if g in leaderboard[t]]
        overall[g] = {}
        for name in HEADLINE_METRICS:
            vals = [r[name]["mean"] for r in rows if name in r and r[name]["mean"] is not None]
            overall[g][name] = sum(vals) / len(vals) if vals else None
        calls = sum(r["cost"]["potential_calls"] for r in rows)
        valid = sum(r["cost"]["valid_connected"] for r in rows)
        secs = sum(r["cost"]["generate_seconds"] for r in rows)
        overall[g]["calls_per_valid"] = calls / valid if valid else None
        overall[g]["seconds_per_valid"] = secs / valid if valid else None
        overall[g]["tasks"] = len(rows)
    generators: dict[str, dict] = {}
    for j in jobs:
        meta = dict(j["generator_metadata"])
        entry = generators.setdefault(j["generator"], {**meta, "potential_calls": 0, "potential_batches": 0})
        entry["potential_calls"] += meta.get("potential_calls", 0)
        entry["potential_batches"] += meta.get("potential_batches", 0)
    potential = dict(context["potential"])
    names = {j["potential"]["name"] for j in jobs}
    if names:
        potential["name"] = sorted(names)[0] if len(names) == 1 else sorted(names)
    return {
        "schema_version": SCHEMA_VERSION,
        "molgym_version": molgym.__version__,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "suite": suite.to_dict(),
        "seeds": sorted({s["seed"] for s in context["specs"]}),
        "n_samples": sorted({s["n"] for s in context["specs"]})[0] if context["specs"] else suite.n_samples,
        "overrides": _overrides(context),
        "potential": potential,
        "executor": context["executor"],
        "generators": generators,
        "tasks": {t.name: t.to_dict() for t in context["tasks"]},
        "metrics": {k: v[0] for k, v in METRICS.items()},
        "jobs_planned": len(context["specs"]),
        "jobs_finished": len(jobs),
        "complete": len(jobs) == len(context["specs"]),
        "jobs": [{k: j[k] for k in ("job_id", "generator", "task", "seed", "config_hash", "n_generated",
                                    "best_known_return", "summary", "cost")} for j in jobs],
        "leaderboard": leaderboard,
        "overall": overall,
    }
