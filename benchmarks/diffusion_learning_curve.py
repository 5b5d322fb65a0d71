"""Sample quality of a diffusion training run along its steps: validity, stability and more per snapshot.

``molgym diffusion train --snapshot-every N`` keeps the EMA weights every N steps under ``RUN/snapshots/``; this
script samples ``-n`` molecules (QM9 sizes, seed 0) from each snapshot not yet measured and appends one row per
snapshot to ``RUN/validity_curve.csv`` (EDM's figures from :func:`molgym.agents.diffusion.evaluation.qm9_metrics`,
plus the heavy-atom figure ``skeleton_valid`` for heavy-atom models, and sampling seconds per molecule). Rerunning
measures only new snapshots, so it can run beside the training or after it.

    python benchmarks/diffusion_learning_curve.py runs/diffusion-heavy -n 200 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

FIELDS = ("step", "epoch", "train_seconds", "molecules", "atom_stability", "molecule_stability", "validity",
          "valid_and_unique", "connected", "skeleton_valid", "novelty", "sample_seconds_per_molecule")


def measured_steps(path: Path) -> set[int]:
    """Steps already in the curve file."""
    if not path.is_file():
        return set()
    with open(path, newline="") as fh:
        return {int(row["step"]) for row in csv.DictReader(fh)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training output directory (with snapshots/)")
    parser.add_argument("-n", "--num", type=int, default=200, help="molecules per snapshot")
    parser.add_argument("--steps", type=int, default=20, help="Heun steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--every", type=int, default=1, help="measure every k-th snapshot only")
    args = parser.parse_args(argv)
    snapshots = sorted((args.run / "snapshots").glob("model-*.pt"))
    if not snapshots:
        parser.error(f"no snapshots under {args.run / 'snapshots'}: train with --snapshot-every N")
    if args.num < 1:
        parser.error(f"-n must be at least 1, got {args.num}")

    from molgym.agents.diffusion import DiffusionSampler
    from molgym.agents.diffusion.checkpoint import load_checkpoint
    from molgym.agents.diffusion.evaluation import qm9_metrics

    curve = args.run / "validity_curve.csv"
    done = measured_steps(curve)
    for k, path in enumerate(snapshots):
        if k % args.every:
            continue
        state = load_checkpoint(path)
        step = int(state["step"])
        if step in done:
            continue
        sampler = DiffusionSampler(model=str(path), steps=args.steps, threads=args.threads)
        start = time.perf_counter()
        molecules = sampler.generate(None, args.num, seed=0)
        seconds = (time.perf_counter() - start) / args.num
        metrics = qm9_metrics(molecules)
        row = {"step": step, "epoch": round(float(state["epoch"]), 4), "train_seconds": round(float(state["seconds"])),
               "sample_seconds_per_molecule": round(seconds, 4),
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items() if k in FIELDS}}
        new = not curve.is_file()
        with open(curve, "a", newline="") as fh:  # one complete row per snapshot: an interrupted run loses none
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({f: row.get(f, "") for f in FIELDS})
        print(" ".join(f"{f}={row.get(f, '')}" for f in FIELDS), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
