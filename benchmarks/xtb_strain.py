"""Strain of generated molecules under GFN2-xTB: the benchmark's relaxation metric on a whole file of molecules.

For each valid, plausible molecule of an extended-XYZ file (or a seeded sample of them), relax under GFN2-xTB
with :func:`molgym.metrics.physics.referee_relaxation` (the benchmark's own settings: BFGS to 0.05 eV/Å, at most
300 steps) and print the median and 90th percentile of the relaxation energy (kcal/mol) and heavy-atom RMSD (Å),
the fraction whose bond graph survives, and how many relaxations gave no score (and why). Per-molecule rows go to
``--out`` (JSON) when given, written once at the end (atomically).

    python benchmarks/xtb_strain.py runs/simgen/qm9-1000.xyz --workers 2 --out runs/simgen/qm9-1000-strain.json
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor


def _relax(args: tuple[int, object]) -> tuple[int, dict]:
    from molgym.metrics.physics import referee_relaxation
    from molgym.potentials import load_potential

    index, atoms = args
    return index, referee_relaxation(atoms, load_potential("xtb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("molecules", help="extended XYZ file of generated molecules")
    parser.add_argument("--sample", type=int, default=None, help="relax a seeded sample of this many valid ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes (one xTB thread each)")
    parser.add_argument("--out", default=None, help="JSON file for the per-molecule rows")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.molecules):
        parser.error(f"{args.molecules!r} does not exist")
    if args.workers < 1 or (args.sample is not None and args.sample < 1):
        parser.error("--workers and --sample must be at least 1")
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MOLGYM_XTB_WORKERS"] = "1"

    import ase.io
    import numpy as np

    from molgym.metrics.chemistry import perceive
    from molgym.metrics.physics import implausibility

    frames = ase.io.read(args.molecules, index=":")
    valid = [i for i, a in enumerate(frames) if implausibility(a) is None and perceive(a).valid]
    chosen = valid
    if args.sample is not None and args.sample < len(valid):
        chosen = sorted(np.random.default_rng(args.seed).choice(valid, size=args.sample, replace=False).tolist())
    start = time.perf_counter()
    jobs = [(i, frames[i]) for i in chosen]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = dict(pool.map(_relax, jobs, chunksize=4))
    else:
        results = dict(map(_relax, jobs))
    seconds = time.perf_counter() - start
    scored = [r for r in results.values() if "referee_relax_energy" in r]
    energy = np.array([r["referee_relax_energy"] for r in scored])
    rmsd = np.array([r["referee_relax_rmsd"] for r in scored])
    kept = np.array([r["referee_graph_kept"] for r in scored])
    failed = Counter(r["referee_relax_failed"].split(":")[0] for r in results.values() if "referee_relax_failed" in r)
    print(f"{args.molecules}: {len(frames)} molecules, {len(valid)} valid and plausible, {len(chosen)} relaxed in "
          f"{seconds:.0f} s ({args.workers} workers)")
    if scored:
        print(f"relaxation energy (kcal/mol): median {np.median(energy):.1f}, p90 {np.percentile(energy, 90):.1f}; "
              f"heavy-atom RMSD (Å): median {np.median(rmsd):.3f}, p90 {np.percentile(rmsd, 90):.3f}; "
              f"bond graph kept {kept.mean():.1%} (n = {len(scored)})")
    if failed:
        print("no score: " + ", ".join(f"{k} ({v})" for k, v in failed.items()))
    if args.out:
        from molgym.io import write_json

        write_json(args.out, {"file": args.molecules, "relaxed": len(chosen), "seconds": seconds,
                              "median_kcal_mol": float(np.median(energy)) if scored else None,
                              "p90_kcal_mol": float(np.percentile(energy, 90)) if scored else None,
                              "graph_kept": float(kept.mean()) if scored else None,
                              "molecules": {str(i): r for i, r in sorted(results.items())}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
