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
      "overall": {generator: {headline metric: mean over tasks of its per-task mean (median where the metric
                  is ranked by its median)}}
    }

Per-molecule metrics and the molecules themselves stay in ``jobs/`` and ``samples/``. The leaderboard pools the
molecules of all seeds of a (task, generator) pair; set metrics (uniqueness, novelty, diversity) are averaged
over seeds with a Student-t interval across seeds. Which metrics exist, how each is pooled and which are headline
metrics is read off :data:`molgym.metrics.registry.REGISTRY`.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Sequence

import molgym
from molgym.metrics.evaluate import pooled_counts
from molgym.metrics.registry import REGISTRY, headline_metrics
from molgym.metrics.stats import mean_interval, summarize

__all__ = ["SCHEMA_VERSION", "build_results", "machine_info", "cost_totals"]

SCHEMA_VERSION = 1


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
    out: dict = pooled_counts(records)
    for m in REGISTRY.values():
        if m.kind == "count":  # pooled_counts
            continue
        if m.kind == "set":
            values = [j["summary"].get(m.name, {}).get("mean") for j in jobs]
            values = [v for v in values if v is not None]
            if values:
                lo, hi = mean_interval(values) if len(values) > 1 else (None, None)
                if lo is not None and m.bounds is not None:
                    lo, hi = max(m.bounds[0], lo), min(m.bounds[1], hi)
                out[m.name] = {"mean": sum(values) / len(values), "ci95": [lo, hi], "n": len(values)}
            continue
        vals = [r.get(m.name) for r in records]
        if any(v is not None for v in vals):
            out[m.name] = summarize(vals, binary=(m.kind == "fraction"), bounds=m.bounds)
    out["cost"] = {**cost_totals(jobs), "molecules": len(records), "seeds": sorted(j["seed"] for j in jobs)}
    return out


def cost_totals(jobs: Sequence[dict]) -> dict:
    """Summed generation cost of ``jobs`` and its ratios to the useful molecules, as PMO accounts for it:
    ``cpu_seconds_per_valid`` and ``calls_per_valid`` per valid, connected, plausible molecule (wall seconds per
    valid, connected molecule kept as ``seconds_per_valid``). Job files written before CPU time was recorded
    have no CPU figures (``None``)."""
    costs = [j["cost"] for j in jobs]
    gen_s = sum(c["generate_seconds"] for c in costs)
    calls = sum(c["potential_calls"] for c in costs)
    valid = sum(c["valid_connected"] for c in costs)
    known = all("cpu_seconds" in c for c in costs)
    cpu = sum(c["cpu_seconds"] for c in costs) if known else None
    useful = sum(c["valid_plausible"] for c in costs) if known else None
    return {
        "generate_seconds": gen_s,
        "cpu_seconds": cpu,
        "potential_calls": calls,
        "valid_connected": valid,
        "valid_plausible": useful,
        "seconds_per_valid": gen_s / valid if valid else None,
        "cpu_seconds_per_valid": cpu / useful if useful else None,
        "calls_per_valid": calls / useful if useful else None,
    }


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
        for m in headline_metrics():
            vals = [r[m.name][m.aggregate] for r in rows if r.get(m.name, {}).get(m.aggregate) is not None]
            overall[g][m.name] = sum(vals) / len(vals) if vals else None
        pair_jobs = [j for t in leaderboard if g in leaderboard[t] for j in by_pair[(t, g)]]
        totals = cost_totals(pair_jobs)
        for key in ("calls_per_valid", "seconds_per_valid", "cpu_seconds_per_valid"):
            overall[g][key] = totals[key]
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
        "metrics": {m.name: m.description for m in REGISTRY.values()},
        "jobs_planned": len(context["specs"]),
        "jobs_finished": len(jobs),
        "complete": len(jobs) == len(context["specs"]),
        "jobs": [{k: j[k] for k in ("job_id", "generator", "task", "seed", "config_hash", "n_generated",
                                    "best_known_return", "summary", "cost")} for j in jobs],
        "leaderboard": leaderboard,
        "overall": overall,
    }
