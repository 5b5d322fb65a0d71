"""Learning-curve study of the reward potential: which MACE configuration reaches the lowest error for the CPU
hours there are.

Short, time-boxed training runs (``molgym potential train --time-limit``), each changing one setting of the
shipped configuration (training-set size, channels, ``max_L``, correlation order, dtype, batch size, energy vs
force weight, per-category weights, ZBL pair repulsion), are evaluated on the dataset's validation set, a sample
of its training set and its test sets, per category. Each run's validation curve (energy MAE per atom against
wall seconds on one thread, read from mace-torch's log) is fitted with a power law ``err = a * t**-b`` over its
second half (every epoch when that has fewer than three), which predicts the error after a given number of CPU hours; the configuration with the lowest
prediction is the study's choice. ::

    molgym potential study --data runs/data-default --out runs/study --budget 9m --parallel 2

Every run trains with one torch thread (CPU seconds = wall seconds), ``--parallel`` runs at a time, each in its own
process. ``OUT/results/<variant>.json`` is written atomically when a variant is finished; rerunning the command
skips finished variants (an unfinished run continues from its checkpoint), then rewrites ``OUT/summary.json``,
``OUT/summary.md`` and ``OUT/learning_curves.png``.

What a short run can and cannot say: within a run the learning rate stays near its start (mace's plateau
scheduler rarely steps in minutes), so the fits extrapolate the early, fast part of training; they rank
configurations by how fast they learn, and their absolute predictions for many hours are optimistic. The summary
states this beside the table.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from molgym.potentials.mace_arch import ARCHITECTURES, MACEArchitecture
from molgym.training.mace_train import read_dataset_manifest

#: test categories whose errors the study reports (the env's states: molecules, hot molecules, partial builds,
#: atoms too close)
CATEGORIES = ("equilibrium", "thermal", "build", "close_contact")


@dataclass(frozen=True)
class StudyVariant:
    """One training configuration of the study: the shipped one (``base``) with some settings changed."""

    name: str
    changes: str = "shipped configuration"
    num_channels: int = 32
    max_L: int = 0
    correlation: int = 2
    #: train on this many of the dataset's training molecules (None: all)
    train_molecules: int | None = None
    dtype: str = "float32"
    batch_size: int = 16
    energy_weight: float = 40.0
    forces_weight: float = 10.0
    category_weights: tuple[tuple[str, float], ...] = ()
    pair_repulsion: bool = False
    lr: float = 0.01

    @classmethod
    def from_dict(cls, fields: dict) -> StudyVariant:
        """The variant ``dataclasses.asdict`` gave (after a JSON round trip: category weights come back as lists)."""
        fields = dict(fields)
        fields["category_weights"] = tuple((str(k), float(w)) for k, w in fields.get("category_weights", ()))
        return cls(**fields)

    def architecture(self) -> MACEArchitecture:
        return replace(ARCHITECTURES["cpu"], num_channels=self.num_channels, max_L=self.max_L,
                       correlation=self.correlation)

    def train_options(self) -> dict:
        """Keyword arguments of :func:`molgym.training.mace_train.train_mace` for this variant."""
        return dict(architecture=self.architecture(), dtype=self.dtype, batch_size=self.batch_size,
                    energy_weight=self.energy_weight, forces_weight=self.forces_weight,
                    category_weights=dict(self.category_weights) or None, pair_repulsion=self.pair_repulsion,
                    lr=self.lr)


_BASE = StudyVariant("base")
#: The default grid: one change at a time from the shipped configuration.
VARIANTS: tuple[StudyVariant, ...] = (
    _BASE,
    replace(_BASE, name="train500", changes="500 training molecules", train_molecules=500),
    replace(_BASE, name="train1000", changes="1000 training molecules", train_molecules=1000),
    replace(_BASE, name="channels64", changes="64 channels", num_channels=64),
    replace(_BASE, name="channels128", changes="128 channels", num_channels=128),
    replace(_BASE, name="L1", changes="max_L 1 (equivariant hidden features)", max_L=1),
    replace(_BASE, name="correlation3", changes="correlation order 3", correlation=3),
    replace(_BASE, name="float64", changes="float64", dtype="float64"),
    replace(_BASE, name="batch4", changes="batch size 4", batch_size=4),
    replace(_BASE, name="batch32", changes="batch size 32", batch_size=32),
    replace(_BASE, name="energy1000", changes="energy weight 1000 (forces 10)", energy_weight=1000.0),
    replace(_BASE, name="build_weighted", changes="loss weight 3 on build, 2 on misplaced and close-contact structures",
            category_weights=(("build", 3.0), ("misplaced", 2.0), ("close_contact", 2.0))),
    replace(_BASE, name="zbl", changes="ZBL pair repulsion", pair_repulsion=True),
)
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


# --------------------------------------------------------------------------------------------------------------
# data subsets
# --------------------------------------------------------------------------------------------------------------
def subset_dataset(data: str | os.PathLike, out: str | os.PathLike, molecules: int, seed: int = 0) -> Path:
    """A dataset directory whose train.xyz holds the structures of ``molecules`` of DATA's training molecules
    (drawn with ``seed``; structures of no QM9 molecule, isolated atoms and diatomics, are always kept); valid.xyz
    and manifest.json are DATA's. Written atomically; an existing subset is reused."""
    import ase.io

    from molgym.io import atomic_path, write_json

    data, out = Path(data), Path(out)
    if (out / "manifest.json").is_file():
        return out
    structures = ase.io.read(data / "train.xyz", index=":")
    ids = sorted({str(a.info["molecule_id"]) for a in structures if _is_qm9_molecule(a)})
    if not 1 <= molecules <= len(ids):
        raise ValueError(f"train_molecules must be in [1, {len(ids)}] for {data}, got {molecules}")
    keep = set(np.random.default_rng(seed).choice(ids, size=molecules, replace=False).tolist())
    chosen = [a for a in structures if not _is_qm9_molecule(a) or str(a.info["molecule_id"]) in keep]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "train.xyz") as tmp:
        ase.io.write(tmp, chosen, format="extxyz")
    with atomic_path(out / "valid.xyz") as tmp:
        tmp.write_bytes((data / "valid.xyz").read_bytes())
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["subset_of"] = {"data": str(data), "train_molecules": molecules, "seed": seed,
                             "train_structures": len(chosen)}
    write_json(out / "manifest.json", manifest)  # last: marks the subset finished
    return out


def _is_qm9_molecule(atoms) -> bool:
    return "molecule_id" in atoms.info and atoms.info.get("category") not in ("atoms", "diatomic")


# --------------------------------------------------------------------------------------------------------------
# learning curves and fits
# --------------------------------------------------------------------------------------------------------------
#: one validation line of mace-torch (``--error_table PerAtomMAE``): before training (``Initial``) or after an epoch
_VALIDATION = re.compile(r"(Initial|Epoch (\d+)): .*MAE_E_per_atom=\s*([-\d.eE+]+) meV, MAE_F=\s*([-\d.eE+]+) meV")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) INFO: ")


def learning_curve(log_path: str | os.PathLike) -> list[dict]:
    """Validation errors after each epoch, from a mace-torch log (``--error_table PerAtomMAE``): ``seconds``
    since the first validation (before any training, so data loading is not counted), ``epoch``,
    ``energy_mae_per_atom_meV``, ``force_mae_meV_per_A``. The first line per epoch counts (mace repeats lines
    when it is run twice in a process)."""
    points: list[dict] = []
    t0 = None
    seen: set[int] = set()
    for line in Path(log_path).read_text().splitlines():
        stamp, match = _STAMP.match(line), _VALIDATION.search(line)
        if not stamp or not match or match.start() != stamp.end():
            continue
        seconds = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        if t0 is None:
            t0 = seconds
        if match.group(2) is None:
            continue
        epoch = int(match.group(2))
        if epoch in seen:
            continue
        seen.add(epoch)
        points.append({"seconds": seconds - t0, "epoch": epoch, "energy_mae_per_atom_meV": float(match.group(3)),
                       "force_mae_meV_per_A": float(match.group(4))})
    return points


def fit_power_law(seconds, errors, tail: float = 0.5) -> dict | None:
    """Least-squares fit of ``log err = log a - b log t`` over the points in the last ``tail`` of the run's
    time, or over every point after the start when fewer than three are there; None with fewer than three
    points in all. ``b`` is how fast the error falls with CPU time."""
    t, e = np.asarray(seconds, float), np.asarray(errors, float)
    valid = (t > 0) & (e > 0)
    ok = valid & (t >= (1.0 - tail) * (t.max() if len(t) else 0.0))
    if ok.sum() < 3:
        ok = valid
    if ok.sum() < 3:
        return None
    slope, intercept = np.polyfit(np.log(t[ok]), np.log(e[ok]), 1)
    return {"a": float(math.exp(intercept)), "b": float(-slope), "points": int(ok.sum())}


def predict(fit: dict | None, seconds: float) -> float | None:
    """The fitted error after ``seconds`` of training (None without a fit)."""
    if fit is None:
        return None
    return fit["a"] * seconds ** (-fit["b"])


# --------------------------------------------------------------------------------------------------------------
# one variant (child process)
# --------------------------------------------------------------------------------------------------------------
def evaluate_run(model: str | os.PathLike, data: str | os.PathLike, train_data: str | os.PathLike,
                 train_sample: int = 500, seed: int = 0) -> dict:
    """Errors of a trained model per category on DATA's valid.xyz, a sample of the training set it saw
    (``train_data``, for the generalisation gap) and DATA's test files (build-reward errors included)."""
    import ase.io

    from molgym.potentials import load_potential
    from molgym.potentials.evaluation import error_table, evaluate_dataset, predict as predict_energies, stored_labels

    pot = load_potential(model, device="cpu")
    result = {"test": evaluate_dataset(pot, data)["sets"]}
    valid = ase.io.read(Path(data) / "valid.xyz", index=":")
    result["valid"] = error_table(valid, predict_energies(pot, valid), stored_labels(valid))
    train = ase.io.read(Path(train_data) / "train.xyz", index=":")
    pick = np.random.default_rng(seed).choice(len(train), size=min(train_sample, len(train)), replace=False)
    train = [train[i] for i in sorted(pick)]
    result["train_sample"] = error_table(train, predict_energies(pot, train), stored_labels(train))
    return result


def run_variant(variant: StudyVariant, data: str | os.PathLike, out: str | os.PathLike, budget: float,
                threads: int = 1) -> dict:
    """Train ``variant`` for ``budget`` seconds (plus the epoch it is in), evaluate it, and write
    ``OUT/results/<name>.json``; returns that record."""
    from molgym.io import write_json
    from molgym.training.mace_train import train_mace

    data, out = Path(data), Path(out)
    train_data = _variant_data(variant, data, out)
    run_dir = out / "runs" / variant.name
    start = time.time()
    model = train_mace(train_data, run_dir, epochs=100_000, seed=0, threads=threads, time_limit=budget,
                       **variant.train_options())
    train_seconds = time.time() - start
    settings = json.loads((run_dir / "train_settings.json").read_text())
    curve = learning_curve(next((run_dir / "logs").glob("*_run-0.log")))
    n_train = json.loads((train_data / "manifest.json").read_text()).get("subset_of", {}).get("train_structures")
    if n_train is None:
        n_train = json.loads((data / "manifest.json").read_text())["counts"]["train"]["total"]
    epochs_done = len(curve)
    batches = n_train // variant.batch_size  # mace drops the last incomplete batch
    trained_seconds = curve[-1]["seconds"] if curve else float("nan")
    record = {
        "variant": asdict(variant), "budget_seconds": budget, "threads": threads,
        "train_structures": n_train, "epochs": epochs_done,
        "structures_trained": epochs_done * batches * variant.batch_size,
        "structures_per_second": epochs_done * batches * variant.batch_size / trained_seconds if curve else None,
        "call_seconds": round(train_seconds, 1), "curve": curve, "mace_runs": settings["runs"],
        "parameters": _parameter_count(model),
    }
    eval_start = time.time()
    record["evaluation"] = evaluate_run(model, data, train_data)
    record["evaluation_seconds"] = round(time.time() - eval_start, 1)
    write_json(out / "results" / f"{variant.name}.json", record)
    return record


def _variant_data(variant: StudyVariant, data: Path, out: Path) -> Path:
    if variant.train_molecules is None:
        return data
    return subset_dataset(data, out / "data" / f"train{variant.train_molecules}", variant.train_molecules)


def _parameter_count(model: Path) -> int:
    import torch

    module = torch.load(model, map_location="cpu", weights_only=False)
    return int(sum(p.numel() for p in module.parameters()))


# --------------------------------------------------------------------------------------------------------------
# the study (parent process)
# --------------------------------------------------------------------------------------------------------------
def run_study(data: str | os.PathLike, out: str | os.PathLike, variants: list[StudyVariant], budget: float,
              parallel: int = 1, cpu_hours: float = 10.0, progress=print) -> dict:
    """Run every unfinished variant (``parallel`` child processes at a time, one torch thread each), then
    summarise all finished ones; returns the summary (also in OUT/summary.json, .md and learning_curves.png)."""
    data, out = Path(data), Path(out)
    read_dataset_manifest(data)  # a clear error when DATA is no dataset, before anything is trained
    if not budget > 0:
        raise ValueError(f"budget must be > 0 seconds, got {budget}")
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    if not cpu_hours > 0:
        raise ValueError(f"cpu_hours must be > 0, got {cpu_hours}")
    todo = [v for v in variants if not (out / "results" / f"{v.name}.json").is_file()]
    for v in todo:  # subsets before any child starts, so children never race to write them
        _variant_data(v, data, out)
    progress(f"study: {len(variants) - len(todo)} of {len(variants)} variants finished; running "
             f"{', '.join(v.name for v in todo) or 'none'} ({budget:.0f} s each, {parallel} at a time)")
    running: list[tuple[StudyVariant, subprocess.Popen, float]] = []
    failed = []
    while todo or running:
        while todo and len(running) < parallel:
            v = todo.pop(0)
            (out / "runs" / v.name).mkdir(parents=True, exist_ok=True)
            log = open(out / "runs" / v.name / "study_child.log", "a")
            cmd = [sys.executable, "-m", "molgym.training.study", "--variant", json.dumps(asdict(v)),
                   "--data", str(data), "--out", str(out), "--budget", str(budget)]
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            running.append((v, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time()))
            progress(f"  started {v.name}: {v.changes}")
        time.sleep(2.0)
        for item in list(running):
            v, proc, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode == 0:
                progress(f"  finished {v.name} in {time.time() - started:.0f} s")
            else:
                failed.append(v.name)
                progress(f"  FAILED {v.name} (exit {proc.returncode}); see {out / 'runs' / v.name / 'study_child.log'}")
    summary = summarise(out, variants, cpu_hours)
    summary["failed"] = failed
    return summary


def summarise(out: str | os.PathLike, variants: list[StudyVariant], cpu_hours: float) -> dict:
    """Table rows, fits, predictions and the choice over the finished variants; writes summary.json/.md and the
    plot."""
    from molgym.io import write_json

    out = Path(out)
    records = [json.loads(path.read_text()) for path in (out / "results" / f"{v.name}.json" for v in variants)
               if path.is_file()]
    rows = [_row(record, cpu_hours) for record in records]
    _score(rows)
    ranked = sorted((r for r in rows if r["score"] is not None), key=lambda r: r["score"])
    long_run = shipped_training_curve()
    summary = {"cpu_hours": cpu_hours, "rows": rows, "choice": ranked[0]["variant"] if ranked else None,
               "ranking": [r["variant"] for r in ranked], "shipped_training": long_run}
    if long_run:
        curve = long_run["curve"]
        for key, column in (("fit_energy", "energy_mae_per_atom_meV"), ("fit_forces", "force_mae_meV_per_A")):
            long_run[key] = fit_power_law([p["seconds"] for p in curve], [p[column] for p in curve])
        long_run["predicted_valid_E_meV_per_atom"] = predict(long_run["fit_energy"], cpu_hours * 3600.0)
        long_run["predicted_valid_F_meV_per_A"] = predict(long_run["fit_forces"], cpu_hours * 3600.0)
    write_json(out / "summary.json", summary)
    from molgym.io import atomic_path

    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(format_summary(summary))
    if records:
        plot_learning_curves(out, records, cpu_hours, long_run)
    return summary


def _score(rows: list[dict]) -> None:
    """Each row's ``score``: the mean of its predicted validation energy and force errors, each divided by the
    ``base`` row's (the card asks for both to improve); energy alone when ``base`` has no fit or is missing.
    None without a prediction."""
    base = next((r for r in rows if r["variant"] == "base"), None)
    both = base is not None and base["predicted_valid_E_meV_per_atom"] and base["predicted_valid_F_meV_per_A"]
    for r in rows:
        e, f = r["predicted_valid_E_meV_per_atom"], r["predicted_valid_F_meV_per_A"]
        if e is None:
            r["score"] = None
        elif both and f is not None:
            r["score"] = 0.5 * (e / base["predicted_valid_E_meV_per_atom"] + f / base["predicted_valid_F_meV_per_A"])
        else:
            r["score"] = e


def shipped_training_curve() -> dict | None:
    """The shipped default's own validation curve (base configuration, its card's ``validation_by_epoch``), on a
    time axis of its recorded wall seconds spread evenly over its epochs: the one long run of the study's base
    configuration. For a default trained by the campaign, the run it was warm-started from (the campaign's
    sessions are resumed runs at another learning rate). None when the card has no curve."""
    from molgym.potentials.registry import MODELS_DIR

    card_path = MODELS_DIR / "default.json"
    if not card_path.is_file():
        return None
    training = json.loads(card_path.read_text()).get("training", {})
    if training.get("campaign"):  # a campaign's model: the long run is the one its campaign was warm-started from
        training = training.get("warm_start_training") or {}
    lines = training.get("validation_by_epoch") or []
    per_epoch = float(training.get("wall_seconds") or 0.0) / max(1, int(training.get("epochs_trained") or 0))
    curve = []
    for line in lines:
        match = _VALIDATION.search(line)
        if match and match.group(2) is not None and per_epoch > 0:
            epoch = int(match.group(2))
            curve.append({"seconds": (epoch + 1) * per_epoch, "epoch": epoch,
                          "energy_mae_per_atom_meV": float(match.group(3)), "force_mae_meV_per_A": float(match.group(4))})
    if not curve:
        return None
    return {"curve": curve, "seconds_per_epoch": per_epoch, "epochs": len(curve)}


def _row(record: dict, cpu_hours: float) -> dict:
    curve = record["curve"]
    fit_e = fit_power_law([p["seconds"] for p in curve], [p["energy_mae_per_atom_meV"] for p in curve])
    fit_f = fit_power_law([p["seconds"] for p in curve], [p["force_mae_meV_per_A"] for p in curve])
    ev = record["evaluation"]
    test = ev["test"]["test"]
    errors = test["errors"]
    row = {
        "variant": record["variant"]["name"], "changes": record["variant"]["changes"],
        "parameters": record["parameters"], "train_structures": record["train_structures"],
        "epochs": record["epochs"], "structures_per_second": record["structures_per_second"],
        "trained_seconds": curve[-1]["seconds"] if curve else None,
        # the trained model's (mace keeps the checkpoint of the lowest validation loss, not always the last epoch)
        "valid_E_meV_per_atom": ev["valid"]["all"].get("energy_mae_per_atom_meV"),
        "valid_F_meV_per_A": ev["valid"]["all"].get("force_mae_meV_per_A"),
        "last_epoch_valid_E_meV_per_atom": curve[-1]["energy_mae_per_atom_meV"] if curve else None,
        # over the categories the validation set has (not the isolated atoms and diatomics only train has)
        "train_sample_E_meV_per_atom": _pooled(ev["train_sample"], [c for c in ev["valid"] if c != "all"]),
        "build_reward_mae_meV": test.get("build_rewards", {}).get("reward_mae_meV"),
        "nonqm9_equilibrium_E_meV": ev["test"].get("nonqm9", {}).get("errors", {}).get("equilibrium", {})
        .get("energy_mae_meV"),
        "fit_energy": fit_e, "fit_forces": fit_f,
        "predicted_valid_E_meV_per_atom": predict(fit_e, cpu_hours * 3600.0),
        "predicted_valid_F_meV_per_A": predict(fit_f, cpu_hours * 3600.0),
    }
    for cat in CATEGORIES:
        row[f"test_{cat}_E_meV"] = errors.get(cat, {}).get("energy_mae_meV")
        row[f"test_{cat}_F_meV_per_A"] = errors.get(cat, {}).get("force_mae_meV_per_A")
    return row


def _pooled(table: dict, categories: list[str], key: str = "energy_mae_per_atom_meV") -> float | None:
    """The structure-weighted mean of ``key`` over ``categories`` of an error table (None if none has it)."""
    pairs = [(table[c]["structures"] - table[c].get("failed", 0), table[c][key]) for c in categories
             if c in table and key in table[c]]
    total = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / total if total else None


def _f(value, digits: int = 0) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def format_summary(summary: dict) -> str:
    """Markdown: one row per variant (measured at the end of its run, and predicted after ``cpu_hours``)."""
    hours = summary["cpu_hours"]
    lines = [
        "| variant | change | params | str/s (1 thread) | epochs | valid E meV/atom | train-sample E meV/atom (valid's categories) | "
        "test E eq / thermal / build / close (meV) | test F eq (meV/Å) | build reward MAE (meV) | non-QM9 eq E (meV) "
        f"| fit b (E) | predicted valid E after {hours:g} CPU-h (meV/atom) | predicted valid F (meV/Å) | score |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        cats = " / ".join(_f(r[f"test_{c}_E_meV"]) for c in CATEGORIES)
        b = r["fit_energy"]["b"] if r["fit_energy"] else None
        lines.append(
            f"| {r['variant']} | {r['changes']} | {r['parameters']:,} | {_f(r['structures_per_second'])} | "
            f"{r['epochs']} | {_f(r['valid_E_meV_per_atom'], 1)} | {_f(r['train_sample_E_meV_per_atom'], 1)} | "
            f"{cats} | {_f(r['test_equilibrium_F_meV_per_A'])} | {_f(r['build_reward_mae_meV'])} | "
            f"{_f(r['nonqm9_equilibrium_E_meV'])} | {_f(b, 2)} | {_f(r['predicted_valid_E_meV_per_atom'], 1)} | "
            f"{_f(r['predicted_valid_F_meV_per_A'])} | {_f(r['score'], 2)} |")
    long_run = summary.get("shipped_training")
    if long_run and long_run.get("fit_energy"):
        fe, ff = long_run["fit_energy"], long_run.get("fit_forces")
        last = long_run["curve"][-1]
        lines += ["", f"The shipped model's own training (base configuration, {long_run['epochs']} epochs, "
                  f"{long_run['seconds_per_epoch']:.0f} s per epoch on one thread): validation "
                  f"{last['energy_mae_per_atom_meV']:.1f} meV/atom, {last['force_mae_meV_per_A']:.0f} meV/Å at the end; "
                  f"fit b = {fe['b']:.2f} (energy), {ff['b'] if ff else float('nan'):.2f} (forces); predicted after "
                  f"{hours:g} CPU-hours: {_f(long_run['predicted_valid_E_meV_per_atom'], 1)} meV/atom, "
                  f"{_f(long_run['predicted_valid_F_meV_per_A'])} meV/Å."]
    if summary.get("choice"):
        lines += ["", f"Lowest score (mean of predicted validation energy and force errors relative to base's) after "
                  f"{hours:g} CPU-hours: **{summary['choice']}** (ranking: {', '.join(summary['ranking'])}); "
                  "variants with fewer than three epochs have no fit and are not ranked."]
    lines += ["", "Fits: `err = a * t**-b` over the second half of each run's validation curve (every epoch when the second half has fewer than three) (one thread, so "
              "CPU seconds = wall seconds). Short runs see the learning rate near its start value; the predictions "
              "rank how fast configurations learn and are optimistic in absolute terms."]
    return "\n".join(lines) + "\n"


def plot_learning_curves(out: Path, records: list[dict], cpu_hours: float, long_run: dict | None = None) -> Path:
    """Validation energy MAE per atom against CPU seconds, every variant, with its fitted power law extended to
    ``cpu_hours`` (log-log); ``long_run`` (the shipped model's training) in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from molgym.io import atomic_path

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, record in enumerate(records):
        curve = [p for p in record["curve"] if p["seconds"] > 0]
        if not curve:
            continue
        t = np.array([p["seconds"] for p in curve])
        e = np.array([p["energy_mae_per_atom_meV"] for p in curve])
        (line,) = ax.plot(t, e, marker="o", ms=3, lw=1, label=record["variant"]["name"], color=f"C{i % 10}",
                          ls="-" if i < 10 else "--")
        fit = fit_power_law(t, e)
        if fit:
            tt = np.geomspace(t.max() / 2, cpu_hours * 3600.0, 50)
            ax.plot(tt, [predict(fit, x) for x in tt], ":", color=line.get_color(), lw=1)
    if long_run:
        t = np.array([p["seconds"] for p in long_run["curve"]])
        e = np.array([p["energy_mae_per_atom_meV"] for p in long_run["curve"]])
        ax.plot(t, e, color="k", lw=1.2, label="shipped model's training (base)")
        if long_run.get("fit_energy"):
            tt = np.geomspace(t.max() / 2, cpu_hours * 3600.0, 50)
            ax.plot(tt, [predict(long_run["fit_energy"], x) for x in tt], ":", color="k", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training CPU seconds (one thread)")
    ax.set_ylabel("validation energy MAE (meV/atom)")
    ax.set_title("Reward potential learning curves (dotted: power-law fits)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path = out / "learning_curves.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def parse_variants(names: str | None) -> list[StudyVariant]:
    """Variants named in a comma-separated list (None or "all": every one), in the given order."""
    if names in (None, "", "all"):
        return list(VARIANTS)
    chosen = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in VARIANTS_BY_NAME:
            raise ValueError(f"unknown study variant {name!r}; allowed: {', '.join(VARIANTS_BY_NAME)}")
        chosen.append(VARIANTS_BY_NAME[name])
    return chosen


def _child_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="one variant of the potential study (started by the study)")
    parser.add_argument("--variant", required=True, help="the StudyVariant as JSON")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, required=True)
    args = parser.parse_args(argv)
    run_variant(StudyVariant.from_dict(json.loads(args.variant)), args.data, args.out, args.budget, threads=1)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
