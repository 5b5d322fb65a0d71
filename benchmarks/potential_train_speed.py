"""Structures/s of `molgym potential train` and where its wall time goes, for several settings side by side.

Trains the shipped architecture (``cpu`` preset, float32) with mace-torch's trainer, through
:func:`molgym.training.mace_train.train_mace`, for a fixed number of epochs on a dataset directory, once per
variant and repeat, each run in a fresh child process (one at a time, so variants never compete for the cores;
interleaved, so slow phases of a shared machine hit every variant):

- ``before``: molgym's settings before the training-speed change (validation every epoch, ``--num_workers 0``,
  ``--pin_memory True``, mace's end-of-run plot, torch's default threads: one per core);
- ``before1``: the same with one torch thread (``--threads 1``, what docs/potential.md advised on a busy machine);
- ``after``: today's defaults of ``train_mace`` (torch threads: one per core idle at the start).

Each child patches timers around mace-torch's trainer functions (no change to what they compute) and reports the
split of wall time: reading the data and building the graphs (once per run), the training step (forward, loss,
backward, gradient clipping, optimizer and EMA update: ``take_step``), data loading (collating batches: the rest of
each training epoch), logging, validation, checkpoint writing, and the end-of-run work (error tables on the train
and valid sets, TorchScript compilation, plotting). ``structures/s`` counts the structures trained (mace drops the
last incomplete batch) over the wall time of the epoch loop; ``end-to-end`` over the whole call.

    .venv/bin/python benchmarks/potential_train_speed.py runs/data-speed --epochs 2 --repeats 2 \
        --max-train 480 --max-valid 24 --variants before,before1,after

Prints a table per variant (median over repeats) and the after/before ratios of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: mace arguments that restore the settings `molgym potential train` used before the speed change (later
#: arguments override earlier ones in mace's parser).
BEFORE_EXTRA = ["--eval_interval", "1", "--num_workers", "0", "--pin_memory", "True", "--plot", "True"]

VARIANTS = {
    # threads "torch": torch's own default (one per core), what train_mace used when no threads were given
    "before": {"extra": BEFORE_EXTRA, "env": {}, "threads": "torch"},
    "before1": {"extra": BEFORE_EXTRA, "env": {}, "threads": 1},
    "after": {"extra": [], "env": {}, "threads": None},
    # candidates that were measured and not made defaults (see docs/potential.md)
    "keep_freed_memory": {"extra": [], "env": {}, "threads": None, "keep_freed_memory": True},
    "after1": {"extra": [], "env": {}, "threads": 1},
    "workers1": {"extra": ["--num_workers", "1"], "env": {}, "threads": None},
    "eval5": {"extra": ["--eval_interval", "5"], "env": {}, "threads": None},
    "threads1_workers1": {"extra": ["--num_workers", "1"], "env": {}, "threads": 1},
}

PHASES = ("imports", "build_model", "load_data", "graph_building", "avg_neighbors", "forward_backward",
          "data_loading", "logging", "validation", "checkpoint", "final_error_tables", "final_jit_compile",
          "final_plot", "other")


def _subset_dataset(data: Path, out: Path, max_train: int | None, max_valid: int | None) -> Path:
    """A copy of ``data`` with at most ``max_train``/``max_valid`` structures (the first ones), or ``data``."""
    if max_train is None and max_valid is None:
        return data
    from ase.io import read, write

    out.mkdir(parents=True, exist_ok=True)
    for split, limit in (("train", max_train), ("valid", max_valid)):
        frames = read(data / f"{split}.xyz", index=":")
        write(out / f"{split}.xyz", frames[:limit] if limit else frames)
    (out / "manifest.json").write_text((data / "manifest.json").read_text())
    return out


def _child(spec: dict) -> dict:
    """Run one training with timers around mace's trainer; returns the measured split."""
    from collections import defaultdict

    started = time.perf_counter()
    import mace  # noqa: F401
    import mace.cli.run_train as run_train
    import mace.cli.visualise_train as visualise
    import mace.data
    import mace.tools.checkpoint as checkpoint
    import mace.tools.utils as utils
    import torch

    train_module = sys.modules["mace.tools.train"]  # `mace.tools.train` the attribute is the function
    timers: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)

    def timed(owner, name, key, classmethod_=False):
        original = getattr(owner, name)
        func = original.__func__ if classmethod_ else original

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                timers[key] += time.perf_counter() - start
                counts[key] += 1

        setattr(owner, name, classmethod(wrapper) if classmethod_ else wrapper)

    timed(train_module, "take_step", "forward_backward")
    timed(train_module, "train_one_epoch", "train_epochs")
    timed(train_module, "evaluate", "validation")
    timed(mace.tools, "train", "epoch_loop")  # run_train calls tools.train(...)
    timed(utils.MetricsLogger, "log", "logging")
    timed(checkpoint.CheckpointHandler, "save", "checkpoint")
    timed(run_train, "load_dataset_for_path", "load_data")
    timed(mace.data.AtomicData, "from_config", "graph_building", classmethod_=True)
    timed(run_train, "get_avg_num_neighbors", "avg_neighbors")
    timed(run_train, "create_error_table", "final_error_tables")
    timed(run_train.jit, "compile", "final_jit_compile")
    timed(visualise.TrainingPlotter, "plot", "final_plot")

    timed(run_train, "configure_model", "build_model")
    from molgym.training.mace_train import train_mace

    if spec.get("keep_freed_memory"):  # MACEPotential's glibc setting, measured for training too (no gain)
        from molgym.potentials.mace import keep_freed_memory

        keep_freed_memory()

    timers["imports"] = time.perf_counter() - started

    threads = torch.get_num_threads() if spec["threads"] == "torch" else spec["threads"]
    kwargs = dict(architecture="cpu", dtype="float32", epochs=spec["epochs"], seed=0, threads=threads,
                  extra=spec["extra"])
    train_mace(spec["data"], spec["out"], **kwargs)
    run = json.loads((Path(spec["out"]) / "train_settings.json").read_text())["runs"][-1]
    return {"timers": dict(timers), "counts": dict(counts), "torch_threads": run["torch_threads"],
            "threads_chosen_by": run.get("threads_chosen_by", "torch default")}


def _count(path: Path) -> int:
    from ase.io import iread

    return sum(1 for _ in iread(path))


def _split(result: dict, total: float, trained: int) -> dict:
    t = result["timers"]
    row = {
        "imports": t.get("imports", 0.0),
        "build_model": t.get("build_model", 0.0),
        "load_data": t.get("load_data", 0.0) - t.get("graph_building", 0.0),
        "graph_building": t.get("graph_building", 0.0),
        "avg_neighbors": t.get("avg_neighbors", 0.0),
        "forward_backward": t.get("forward_backward", 0.0),
        "data_loading": t.get("train_epochs", 0.0) - t.get("forward_backward", 0.0) - t.get("logging", 0.0),
        "logging": t.get("logging", 0.0),
        "validation": t.get("validation", 0.0),
        "checkpoint": t.get("checkpoint", 0.0),
        "final_error_tables": t.get("final_error_tables", 0.0),
        "final_jit_compile": t.get("final_jit_compile", 0.0),
        "final_plot": t.get("final_plot", 0.0),
    }
    row["other"] = total - sum(row.values())
    row["total"] = total
    row["epoch_loop"] = t.get("epoch_loop", 0.0)
    row["structures_per_s"] = trained / row["epoch_loop"] if row["epoch_loop"] else float("nan")
    row["structures_per_s_end_to_end"] = trained / total
    row["structures_per_s_fb_only"] = trained / row["forward_backward"] if row["forward_backward"] else float("nan")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="dataset directory from `molgym potential dataset`")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="before,before1,after",
                        help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every variant (default: each variant's own setting)")
    parser.add_argument("--max-train", type=int, default=None, help="use the first N training structures")
    parser.add_argument("--max-valid", type=int, default=None, help="use the first N validation structures")
    parser.add_argument("--batch-size", type=int, default=16, help="molgym's default (the rate depends on it)")
    parser.add_argument("--json", default=None, help="also write the measurements to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(_child(spec)), flush=True)
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; allowed: {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="molgym-train-speed-") as tmp:
        data = _subset_dataset(Path(args.data), Path(tmp) / "data", args.max_train, args.max_valid)
        n_train, n_valid = _count(data / "train.xyz"), _count(data / "valid.xyz")
        trained = (n_train // args.batch_size) * args.batch_size * args.epochs
        print(f"dataset {args.data}: {n_train} train, {n_valid} valid structures; {args.epochs} epochs, "
              f"batch {args.batch_size}: {trained} structures trained per run; cores: {os.cpu_count()}; "
              f"load average {os.getloadavg()[0]:.2f}")
        rows: dict[str, list[dict]] = {v: [] for v in variants}
        for repeat in range(args.repeats):
            for variant in variants:
                config = VARIANTS[variant]
                extra = list(config["extra"]) + ["--batch_size", str(args.batch_size)]
                spec = {"data": str(data), "out": str(Path(tmp) / f"{variant}-{repeat}"), "epochs": args.epochs,
                        "threads": args.threads if args.threads is not None else config["threads"],
                        "extra": extra,
                        "keep_freed_memory": config.get("keep_freed_memory", False)}
                env = {**os.environ, **config["env"]}
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, __file__, args.data, "--child", json.dumps(spec)],
                                      env=env, capture_output=True, text=True)
                total = time.perf_counter() - start
                lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
                    raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
                result = json.loads(lines[-1][len("RESULT "):])
                row = _split(result, total, trained)
                row["torch_threads"] = result["torch_threads"]
                row["threads_chosen_by"] = result["threads_chosen_by"]
                rows[variant].append(row)
                print(f"  repeat {repeat} {variant:>6}: {row['structures_per_s']:.1f} structures/s in the epoch "
                      f"loop, {row['total']:.1f} s end to end (torch threads {row['torch_threads']}: "
                      f"{row['threads_chosen_by']}, "
                      f"load average {os.getloadavg()[0]:.2f})", flush=True)

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[variant])

    print(f"\nmedian over {args.repeats} repeats; seconds per run ({args.epochs} epochs), share of end-to-end wall")
    header = f"{'phase':<22}" + "".join(f"{v:>20}" for v in variants)
    print(header)
    for key in PHASES + ("total", "epoch_loop"):
        cells = "".join(f"{median(v, key):>12.2f} s {100 * median(v, key) / median(v, 'total'):>4.0f}%"
                        for v in variants)
        print(f"{key:<22}{cells}")
    for key, label in (("structures_per_s", "structures/s (epoch loop)"),
                       ("structures_per_s_end_to_end", "structures/s (end to end)"),
                       ("structures_per_s_fb_only", "structures/s (take_step only)")):
        print(f"{label:<30}" + "".join(f"{median(v, key):>14.1f}" for v in variants))
    if "before" in rows and len(variants) > 1:
        print("\nratios to 'before', per repeat (same run):")
        for variant in variants:
            if variant == "before":
                continue
            for key in ("structures_per_s", "structures_per_s_end_to_end", "structures_per_s_fb_only"):
                ratios = [a[key] / b[key] for a, b in zip(rows[variant], rows["before"])]
                print(f"  {variant}/before {key:<30}" + ", ".join(f"{r:.2f}x" for r in ratios))
    if args.json:
        Path(args.json).write_text(json.dumps({"n_train": n_train, "n_valid": n_valid, "epochs": args.epochs,
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
