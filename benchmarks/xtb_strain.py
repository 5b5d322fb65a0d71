"""Strain of generated molecules under GFN2-xTB: the benchmark's relaxation metric on a whole file of molecules.

For each valid, plausible molecule of an extended-XYZ file (or a seeded sample of them), relax under GFN2-xTB
with :func:`molgym.metrics.physics.referee_relaxation` (the benchmark's own settings: BFGS to 0.05 eV/Å, at most
300 steps) and print the median and 90th percentile of the relaxation energy (kcal/mol) and heavy-atom RMSD (Å),
the fraction whose bond graph survives, and how many relaxations gave no score (and why). Per-molecule rows go to
``--out`` (JSON) when given, written once at the end (atomically).

``--split`` says where the strain sits: it also relaxes each molecule with its heavy atoms held fixed (only the
hydrogens move) and with its hydrogens held fixed (only the heavy atoms move), and prints the median energy each
releases. ``--mode greedy`` keeps only the frames ``molgym train`` marked ``mode=greedy`` (its final greedy
molecule).

    python benchmarks/xtb_strain.py runs/simgen/qm9-1000.xyz --workers 2 --out runs/simgen/qm9-1000-strain.json
    python benchmarks/xtb_strain.py runs/c7/cov-C7H8N2O2-s0/molecules.xyz --mode greedy --split
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor


def _relax(args: tuple[int, object, bool]) -> tuple[int, dict]:
    from molgym.metrics.physics import KCAL_PER_MOL, referee_relaxation, relax
    from molgym.potentials import load_potential

    index, atoms, split = args
    xtb = load_potential("xtb")
    row = referee_relaxation(atoms, xtb)
    if split and "referee_relax_energy" in row:
        heavy = [i for i, z in enumerate(atoms.numbers) if z > 1]
        hydrogens = [i for i, z in enumerate(atoms.numbers) if z == 1]
        for key, fixed in (("h_only_relax_energy", heavy), ("heavy_only_relax_energy", hydrogens)):
            result = relax(atoms, xtb, fmax=0.05, steps=300, fixed=fixed)
            row[key] = (result.start_energy - result.energy) / KCAL_PER_MOL
    return index, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("molecules", help="extended XYZ file of generated molecules")
    parser.add_argument("--sample", type=int, default=None, help="relax a seeded sample of this many valid ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes (one xTB thread each)")
    parser.add_argument("--out", default=None, help="JSON file for the per-molecule rows")
    parser.add_argument("--mode", default=None, help="only frames with this mode= tag (molgym train: greedy, sampled)")
    parser.add_argument("--split", action="store_true",
                        help="also relax with only the hydrogens, then only the heavy atoms, free to move")
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
    from molgym.metrics.physics import KCAL_PER_MOL, implausibility

    frames = ase.io.read(args.molecules, index=":")
    if args.mode is not None:
        modes = sorted({str(a.info.get("mode")) for a in frames})
        if args.mode not in modes:
            parser.error(f"--mode {args.mode!r}: the file's frames have mode {', '.join(modes)}")
    valid = [i for i, a in enumerate(frames) if implausibility(a) is None and perceive(a).valid
             and (args.mode is None or a.info.get("mode") == args.mode)]
    chosen = valid
    if args.sample is not None and args.sample < len(valid):
        chosen = sorted(np.random.default_rng(args.seed).choice(valid, size=args.sample, replace=False).tolist())
    start = time.perf_counter()
    jobs = [(i, frames[i], args.split) for i in chosen]
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
        if args.split:
            for key, what in (("h_only_relax_energy", "hydrogens only"), ("heavy_only_relax_energy", "heavy atoms only")):
                part = np.array([r[key] for r in scored])
                print(f"  {what} free to move: median {np.median(part):.1f} kcal/mol "
                      f"({np.median(part) * KCAL_PER_MOL:.2f} eV; all atoms: {np.median(energy) * KCAL_PER_MOL:.2f} eV)")
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
