"""Run a suite: every (generator x task x seed) job, locally in processes or on Ray, resumably.

Layout of an output directory::

    OUT/settings.json                the settings the results were made with (molgym.benchmark.settings)
    OUT/results.json                 the results (schema below), rewritten atomically after every job
    OUT/jobs/<job>.json              one job: its spec, per-molecule metrics, summary, cost (atomic write)
    OUT/samples/<job>.extxyz         the job's molecules (extended XYZ, per-molecule metrics in info)

A job is *finished* when its ``jobs/<job>.json`` exists and carries the same configuration hash; rerunning
the same command skips finished jobs, so a run killed midway resumes where it stopped. Because every file is
written to a temporary name and renamed, a killed job leaves no partial file behind. A job that raises is listed
in ``results.json["failed_jobs"]`` with its error while the other jobs go on; rerunning retries it. A rerun
with other settings (``--n``, seeds, tasks, potential, a recorded generator's options) is refused before any job
instead of replacing finished results, unless ``overwrite`` starts afresh; adding generators resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from molgym.benchmark.tasks import Suite, Task, get_suite, get_task, task_from_dict

__all__ = ["plan_jobs", "run_job", "run_job_safe", "run_suite", "job_id", "load_job", "check_task_elements"]

JOB_SCHEMA = 1
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MOLGYM_XTB_WORKERS")


def job_id(generator: str, task: str, seed: int) -> str:
    """File-safe identifier of one job."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{generator}__{task}__seed{seed}")
    return safe


def _config_hash(spec: dict) -> str:
    keep = {k: v for k, v in spec.items() if k not in ("out", "job_id")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_jobs(
    suite: Suite,
    generators: Sequence[str],
    potential: str,
    out: str | os.PathLike,
    *,
    tasks: Sequence[Task] | None = None,
    seeds: Sequence[int] | None = None,
    n_samples: int | None = None,
    generator_options: dict | None = None,
    skip: Collection[tuple[str, str]] = (),
) -> list[dict]:
    """The job specs (plain dicts, picklable and JSON-ready) for a suite run, leaving out the
    ``(generator, task name)`` pairs in ``skip``."""
    tasks = list(tasks) if tasks is not None else suite.get_tasks()
    seeds = list(seeds) if seeds is not None else list(suite.seeds)
    options = {g: dict(suite.generator_options.get(g, {})) for g in generators}
    for g, extra in (generator_options or {}).items():
        options.setdefault(g, {}).update(extra)
    specs = []
    for g in generators:
        for task in tasks:
            if (g, task.name) in skip:
                continue
            for seed in seeds:
                spec = {
                    "schema": JOB_SCHEMA,
                    "generator": g,
                    "generator_options": options.get(g, {}),
                    "task": task.to_dict(),
                    "seed": int(seed),
                    "n": int(n_samples or suite.n_samples),
                    "potential": potential,
                    "metrics": suite.metric_settings(),
                    "suite": {"name": suite.name, "version": suite.version},
                }
                spec["config_hash"] = _config_hash(spec)
                spec["job_id"] = job_id(g, task.name, seed)
                spec["out"] = str(out)
                specs.append(spec)
    return specs


def load_job(out: str | os.PathLike, spec: dict) -> dict | None:
    """The finished result of ``spec`` under ``out``, or ``None`` if it has not finished (or changed)."""
    path = Path(out) / "jobs" / f"{spec['job_id']}.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if result.get("config_hash") != spec["config_hash"]:
        return None
    samples = Path(out) / "samples" / f"{spec['job_id']}.extxyz"
    return result if samples.is_file() or result.get("n_generated", 0) == 0 else None


def _clean_info(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "None"
    return str(value)


def run_job(spec: dict) -> dict:
    """Run one job (generate, score, write its files atomically) and return its result dict.

    Top-level and free of closures so that process pools and Ray can ship it.
    """
    from molgym.generator import get_generator
    from molgym.potentials.counting import CountingPotential
    from molgym.io import write_json, write_xyz
    from molgym.metrics.evaluate import molecule_records, summarize_records
    from molgym.metrics.physics import best_known_return
    from molgym.potentials import load_potential

    for var in _THREAD_VARS:
        os.environ.setdefault(var, "1")
    task = task_from_dict(spec["task"])
    out = Path(spec["out"])
    generator = get_generator(spec["generator"], potential=spec["potential"], **spec["generator_options"])

    start, cpu_start = time.perf_counter(), time.process_time()
    samples = generator.generate(task, spec["n"], spec["seed"])
    generate_seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start  # every thread of this process (torch, xTB workers)
    if len(samples) != spec["n"]:
        raise RuntimeError(f"generator {spec['generator']!r} returned {len(samples)} structures, asked for {spec['n']}")

    start = time.perf_counter()
    metric_potential = CountingPotential(load_potential(spec["potential"]))
    m = spec["metrics"]
    referee = None
    if m["referee_sample"] > 0:
        referee = metric_potential.inner if metric_potential.name == "GFN2-xTB" else load_potential("xtb")
    best = best_known_return(task.formula, metric_potential.inner) if task.kind == "formula" else None
    referee_best = best_known_return(task.formula, referee) if referee is not None and task.kind == "formula" else None
    bags = None if task.kind == "unconditional" else task.bags(spec["n"], spec["seed"])  # no bag to match
    records = molecule_records(
        samples, metric_potential, bags=bags, target=task.target_array, best_known=best,
        relax_fmax=m["relax_fmax"], relax_steps=m["relax_steps"], referee=referee,
        referee_sample=m["referee_sample"], referee_best_known=referee_best, seed=spec["seed"],
        referee_relax_steps=m["referee_relax_steps"], posebusters=m["posebusters"],
    )
    summary = summarize_records(records)
    metric_seconds = time.perf_counter() - start

    meta = generator.metadata()
    n_valid = sum(bool(r["valid_connected"]) for r in records)
    n_useful = sum(bool(r["valid_connected"] and r["plausible"]) for r in records)
    result = {
        "schema": JOB_SCHEMA,
        "job_id": spec["job_id"],
        "config_hash": spec["config_hash"],
        "generator": spec["generator"],
        "generator_metadata": meta,
        "task": task.name,
        "task_kind": task.kind,
        "seed": spec["seed"],
        "n_generated": len(samples),
        "potential": {"spec": spec["potential"], "name": metric_potential.name},
        "best_known_return": best,
        "referee_best_known_return": referee_best,
        "summary": summary,
        "cost": {
            "generate_seconds": generate_seconds,
            "cpu_seconds": cpu_seconds,
            "metric_seconds": metric_seconds,
            "potential_calls": meta["potential_calls"],
            "valid_connected": n_valid,
            "valid_plausible": n_useful,
            "seconds_per_valid": generate_seconds / n_valid if n_valid else None,
            "cpu_seconds_per_valid": cpu_seconds / n_useful if n_useful else None,
            "calls_per_valid": meta["potential_calls"] / n_useful if n_useful else None,
            "metric_potential_calls": metric_potential.calls,
        },
        "molecules": records,
        "spec": {k: v for k, v in spec.items() if k != "out"},
    }
    for atoms, rec in zip(samples, records):
        generator_info = {f"gen_{k}": _clean_info(v) for k, v in atoms.info.items()
                          if isinstance(v, (bool, int, float, str))}
        atoms.info = {**generator_info, **{k: _clean_info(v) for k, v in rec.items()}}
        atoms.info["job_id"] = spec["job_id"]
    write_xyz(out / "samples" / f"{spec['job_id']}.extxyz", samples)
    write_json(out / "jobs" / f"{spec['job_id']}.json", result)  # written last: marks the job finished
    return result


def run_job_safe(spec: dict) -> dict:
    """:func:`run_job`, but an exception becomes ``{"job_id", "error"}`` so one failing job does not stop a run.

    A failed job writes no job file, so rerunning the command retries it.
    """
    import traceback

    try:
        return run_job(spec)
    except Exception as err:  # reported in results.json["failed_jobs"] and by the CLI
        return {"job_id": spec["job_id"], "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=8)}


def _init_worker() -> None:
    for var in _THREAD_VARS:
        os.environ[var] = "1"


def _execute_local(specs: list[dict], workers: int, on_done: Callable[[dict], None]) -> None:
    if workers <= 1:
        for spec in specs:
            on_done(run_job_safe(spec))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker) as pool:
        futures = [pool.submit(run_job_safe, spec) for spec in specs]
        try:
            for fut in as_completed(futures):
                on_done(fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _execute_ray(specs: list[dict], workers: int, address: str | None, on_done: Callable[[dict], None]) -> None:
    try:
        import ray
    except ImportError as err:
        raise ImportError("--executor ray needs Ray: pip install 'molgym[ray]'") from err
    if not ray.is_initialized():
        from molgym.potentials.registry import WARNED_ENV

        env = {"env_vars": {var: "1" for var in _THREAD_VARS}}
        if os.environ.get(WARNED_ENV):  # warnings this run already printed are not repeated by every Ray worker
            env["env_vars"][WARNED_ENV] = os.environ[WARNED_ENV]
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, workers), runtime_env=env, log_to_driver=False, include_dashboard=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_job_safe)
    pending = [remote.remote(spec) for spec in specs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            on_done(ray.get(ref))


def check_task_elements(tasks: Sequence[Task], potential, spec: str) -> None:
    """Raise ``ValueError`` when a task needs an element ``potential`` (loaded from ``spec``) does not cover,
    naming each such task, its missing elements and the potential, so that a run fails before its first job
    rather than in every job of that task after the others have run."""
    from ase.data import chemical_symbols

    from molgym.chem import atomic_number

    covered = sorted(int(z) for z in potential.species)
    problems = [f"task {t.name!r} needs {', '.join(missing)}" for t in tasks
                if (missing := [e for e in t.elements() if atomic_number(e) not in covered])]
    if problems:
        names = [chemical_symbols[z] for z in covered]
        listed = ", ".join(names) if len(names) <= 20 else f"{len(names)} elements, {names[0]} to {names[-1]}"
        raise ValueError(f"potential {spec!r} ({potential.name}) does not cover every element of this run: "
                         f"{'; '.join(problems)}; it covers {listed}. Choose another --potential (xtb covers "
                         "them all) or leave those tasks out (--tasks)")


def run_suite(
    suite: str | Suite,
    generators: Sequence[str] | None = None,
    out: str | os.PathLike = "runs/bench",
    *,
    potential: str = "auto",
    executor: str = "local",
    workers: int = 2,
    address: str | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    n_samples: int | None = None,
    generator_options: dict | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Run (or resume) a suite and return the results dict also written to ``OUT/results.json``.

    Bad names (suite, task, generator, potential, executor), unknown generator options, options for a generator
    the run does not include, and tasks with elements the potential does not cover raise ``ValueError`` before
    any job starts. So does an ``out`` holding results made with other settings
    (:class:`molgym.benchmark.settings.SettingsMismatchError`, naming each difference), unless ``overwrite``
    deletes those results first; see :mod:`molgym.benchmark.settings` for what may change between reruns.
    """
    from molgym.generator import get_generator
    from molgym.potentials.registry import resolve_potential_spec
    from molgym.benchmark.results import build_results
    from molgym.benchmark.settings import prepare_output, run_settings
    from molgym.io import write_json

    suite = get_suite(suite)
    if executor not in ("local", "ray"):
        raise ValueError(f"unknown executor {executor!r}; allowed: local, ray")
    generators = list(generators or suite.generators)
    task_objs = [get_task(t) for t in tasks] if tasks else suite.get_tasks()
    spec, why = resolve_potential_spec(potential)
    from molgym.potentials import load_potential

    check_task_elements(task_objs, load_potential(spec), spec)  # also fails fast on a bad spec or missing file
    options = generator_options or {}
    strays = [g for g in options if g not in generators]
    if strays:
        raise ValueError(f"options given for {', '.join(repr(g) for g in strays)}, which this run does not include "
                         f"(generators: {', '.join(generators)})")
    skipped: list[dict] = []
    merged_options: dict[str, dict] = {}
    for g in generators:  # fails fast on unknown generators or bad options
        merged_options[g] = {**suite.generator_options.get(g, {}), **options.get(g, {})}
        generator = get_generator(g, potential=spec, **merged_options[g])
        for task in task_objs:
            reason = generator.unsupported(task)
            if reason:
                skipped.append({"generator": g, "task": task.name, "reason": reason})
    out = Path(out)
    prepare_output(out, run_settings(suite, task_objs, seeds if seeds is not None else suite.seeds,
                                     n_samples or suite.n_samples, spec, merged_options), overwrite=overwrite)
    specs = plan_jobs(suite, generators, spec, out, tasks=task_objs, seeds=seeds, n_samples=n_samples,
                      generator_options=options, skip={(s["generator"], s["task"]) for s in skipped})

    finished: dict[str, dict] = {}
    todo = []
    for s in specs:
        done = load_job(out, s)
        if done is None:
            todo.append(s)
        else:
            finished[s["job_id"]] = done
    context = {"suite": suite, "generators": generators, "tasks": task_objs, "specs": specs,
               "potential": {"spec": spec, "selected_because": why}, "executor": executor}

    failed: dict[str, dict] = {}

    def save() -> dict:
        results = build_results(context, [finished[s["job_id"]] for s in specs if s["job_id"] in finished])
        results["failed_jobs"] = [failed[k] for k in sorted(failed)]
        results["skipped_jobs"] = skipped
        write_json(out / "results.json", results)
        return results

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(specs), initial=len(finished), desc=f"bench {suite.name}", unit="job")

    def on_done(result: dict) -> None:
        if "error" in result:
            failed[result["job_id"]] = result
            if bar is not None:
                bar.write(f"job {result['job_id']} failed: {result['error']}")
        else:
            finished[result["job_id"]] = result
        save()
        if bar is not None:
            bar.set_postfix_str(result["job_id"][:40])
            bar.update(1)

    try:
        if todo:
            if executor == "ray":
                _execute_ray(todo, workers, address, on_done)
            else:
                _execute_local(todo, workers, on_done)
    finally:
        if bar is not None:
            bar.close()
    return save()
