"""The settings a ``molgym bench`` output directory was made with (``OUT/settings.json``).

A results directory is only worth resuming with the settings it was made with: a rerun with another ``--n``,
other seeds, tasks, potential or generator options would plan other jobs and rebuild ``results.json`` from them,
silently replacing finished results. So the runner writes the settings (atomically) before the first job and
compares every rerun with them:

- the same settings resume (finished jobs are skipped);
- adding generators resumes too (their jobs run; the finished ones stay), and ``settings.json`` then lists them;
- anything else (suite or its version, tasks, seeds, ``n_samples``, potential, metric settings, the options of a
  recorded generator, or leaving out a recorded generator) is refused with a :class:`SettingsMismatchError` that
  names each difference, unless ``overwrite=True`` (``molgym bench --overwrite``), which deletes the directory's
  results and starts fresh. Or choose another ``--out``.
- a directory without a finished job holds nothing to protect: any settings may start there.

Directories written before ``settings.json`` existed are compared through the specs stored in their finished
job files (``jobs/*.json``); there, recorded tasks and seeds need only be among the given ones, since a killed run
may not have reached them all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["SETTINGS_FILE", "SettingsMismatchError", "run_settings", "recorded_settings", "settings_differences",
           "prepare_output"]

SETTINGS_FILE = "settings.json"
SETTINGS_SCHEMA = 1
#: files and folders of a results directory that ``overwrite`` deletes (only molgym's own file types inside folders)
_OUTPUTS = {"jobs": "*.json", "samples": "*.extxyz"}
_TOP_FILES = ("results.json", "report.md", "report.html", SETTINGS_FILE)


class SettingsMismatchError(ValueError):
    """A rerun into a results directory made with other settings (the message names every difference)."""


def _plain(value):
    """``value`` as JSON would give it back (tuples become lists, unknown objects their ``str``)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_settings(suite, tasks: Sequence, seeds: Sequence[int], n_samples: int, potential: str,
                 generator_options: Mapping[str, Mapping]) -> dict:
    """The settings that decide a run's results, JSON-ready: suite (name, version), tasks (name -> definition),
    seeds, molecules per job, potential spec, metric settings and each generator's (merged) options."""
    return _plain({
        "schema": SETTINGS_SCHEMA,
        "suite": {"name": suite.name, "version": suite.version},
        "tasks": {t.name: t.to_dict() for t in tasks},
        "seeds": sorted(int(s) for s in seeds),
        "n_samples": int(n_samples),
        "potential": str(potential),
        "metrics": suite.metric_settings(),
        "generators": {g: dict(o) for g, o in generator_options.items()},
    })


def _settings_from_jobs(out: Path) -> dict | None:
    """The settings recorded in the finished job files of a directory without ``settings.json`` (or ``None``)."""
    specs = []
    for path in sorted((out / "jobs").glob("*.json")):
        try:
            spec = json.loads(path.read_text()).get("spec")
        except (OSError, ValueError):
            continue
        if isinstance(spec, dict):
            specs.append(spec)
    if not specs:
        return None
    first = specs[0]
    ns = sorted({int(s["n"]) for s in specs})
    return _plain({
        "schema": SETTINGS_SCHEMA,
        "suite": first["suite"],
        "tasks": {s["task"]["name"]: s["task"] for s in specs},
        "seeds": sorted({int(s["seed"]) for s in specs}),
        "n_samples": ns[0] if len(ns) == 1 else ns,
        "potential": first["potential"],
        "metrics": first["metrics"],
        "generators": {s["generator"]: s["generator_options"] for s in specs},
        "partial": True,
    })


def recorded_settings(out: str | os.PathLike) -> dict | None:
    """The settings ``out`` was made with: its ``settings.json``, else those of its finished jobs (directories
    written before ``settings.json`` existed), else ``None`` (nothing to protect)."""
    out = Path(out)
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError as err:
            raise SettingsMismatchError(
                f"{path} is not valid JSON ({err}); pass --overwrite to start {out} fresh or choose another --out"
            ) from None
    return _settings_from_jobs(out)


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def settings_differences(recorded: Mapping, given: Mapping) -> list[str]:
    """One line per setting in which ``given`` cannot resume ``recorded`` (empty: it can). Generators may be
    added; with ``recorded["partial"]`` (settings read from job files) recorded tasks and seeds need only be among
    the given ones."""
    partial = bool(recorded.get("partial"))
    diffs = []
    for key, label in (("suite", "suite (--suite)"), ("n_samples", "n_samples (--n)"),
                       ("potential", "potential (--potential)"), ("metrics", "metric settings of the suite")):
        if recorded.get(key) != given.get(key):
            diffs.append(f"{label}: {_short(recorded.get(key))} recorded, {_short(given.get(key))} given")
    rec_tasks, giv_tasks = recorded.get("tasks", {}), given.get("tasks", {})
    if set(rec_tasks) - set(giv_tasks) or (not partial and set(giv_tasks) - set(rec_tasks)):
        diffs.append(f"tasks (--tasks): {', '.join(rec_tasks)} recorded, {', '.join(giv_tasks)} given")
    diffs += [f"task {name!r}: its definition changed" for name in rec_tasks
              if name in giv_tasks and rec_tasks[name] != giv_tasks[name]]
    rec_seeds, giv_seeds = recorded.get("seeds", []), given.get("seeds", [])
    if set(rec_seeds) - set(giv_seeds) or (not partial and set(giv_seeds) - set(rec_seeds)):
        diffs.append(f"seeds (--seeds): {_short(rec_seeds)} recorded, {_short(giv_seeds)} given")
    rec_gens, giv_gens = recorded.get("generators", {}), given.get("generators", {})
    dropped = [g for g in rec_gens if g not in giv_gens]
    if dropped:
        diffs.append(f"generators (--generators): {', '.join(dropped)} recorded but not given (adding generators "
                     f"resumes; leaving recorded ones out would drop their results): pass --generators "
                     f"{','.join([*rec_gens, *(g for g in giv_gens if g not in rec_gens)])}")
    diffs += [f"options of {g} (--option {g}.KEY=VALUE): {_short(rec_gens[g])} recorded, {_short(giv_gens[g])} given"
              for g in rec_gens if g in giv_gens and rec_gens[g] != giv_gens[g]]
    return diffs


def _clear(out: Path) -> None:
    """Delete the results of a previous run in ``out`` (molgym's own files only)."""
    for folder, pattern in _OUTPUTS.items():
        for path in (out / folder).glob(pattern):
            path.unlink()
    for name in _TOP_FILES:
        (out / name).unlink(missing_ok=True)


def prepare_output(out: str | os.PathLike, settings: dict, overwrite: bool = False) -> None:
    """Make ``out`` ready for a run with ``settings``: refuse (before any job) when it holds results made with other
    settings, delete them first with ``overwrite``, and record ``settings`` in ``out/settings.json`` (atomically)."""
    from molgym.io import write_json

    out = Path(out)
    finished = out.is_dir() and any((out / "jobs").glob("*.json"))
    recorded = recorded_settings(out) if finished else None  # no finished job: nothing to protect
    if recorded is not None and overwrite:
        _clear(out)
    elif recorded is not None:
        diffs = settings_differences(recorded, settings)
        if diffs:
            raise SettingsMismatchError(
                f"{out} holds results made with other settings; " + "; ".join(diffs) + ". Rerun with the recorded "
                "settings to resume, pass --overwrite to delete those results and start fresh, or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SETTINGS_FILE, settings)
