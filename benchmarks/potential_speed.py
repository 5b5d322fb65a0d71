"""Time the potentials on the same QM9 molecules, side by side in one run.

    python benchmarks/potential_speed.py [--n 64] [--potential default|PATH] [--architecture cpu] [--repeats 5]
                                         [--threads N]

Rows: one batched MACE call for all N structures; N single MACE calls; the same two with the model's e3nn modules
as e3nn built them (``accelerate=False``: without molgym's CPU replacements, molgym.potentials.mace_cpu); N GFN2-xTB
calls; N PM6 calls (if the pm6 extra is installed). Each timing is the median of ``--repeats`` rounds, taken
after a warm-up round. Ratios are printed against the batched MACE call.

The rows are timed in two blocks, each interleaved round by round so that machine noise hits its rows alike:
the four MACE rows together, then the xTB and PM6 rows. They are not all interleaved because the libraries run
separate OpenMP thread pools: after an xTB call its threads keep spinning for a while, and a MACE call that
follows at once shares the cores with them (measured on the 2-core machine with 2 torch threads: the batched
call took 55 ms right after xTB calls, 20 ms in its own block).

``--threads`` sets torch's threads (default: torch's own choice, one per core). On an otherwise busy machine
use 1: more threads than free cores make every call wait on thread synchronisation.

When the shipped default model is not installed (or ``--architecture`` is given), the MACE rows use an
*untrained* model of the named architecture: its energies are meaningless, but its cost is that of the trained
model of the same architecture, which is all this script measures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import numpy as np


def _mace(args, accelerate: bool):
    from molgym.potentials import ModelNotAvailableError, load_potential
    from molgym.potentials.mace import MACEPotential
    from molgym.potentials.mace_arch import build_untrained_mace

    if args.architecture is None:
        try:
            pot = load_potential(args.potential, device=args.device, dtype=args.dtype, accelerate=accelerate)
            return pot, args.potential
        except ModelNotAvailableError as err:
            print(f"note: {err}\n      timing an untrained 'small' MACE instead")
            args.architecture = "small"
    model = build_untrained_mace(args.architecture)
    label = f"untrained MACE '{args.architecture}' ({args.dtype})"
    return MACEPotential(model, device=args.device, dtype=args.dtype, name=label, accelerate=accelerate), label


def _time_interleaved(rows: dict, repeats: int) -> dict[str, list[float]]:
    """Wall times of each row over ``repeats`` rounds, the rows interleaved in each round, after a warm-up."""
    for fn in rows.values():  # warm-up: first calls pay for allocation and lazy initialisation
        fn()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="number of structures (default 64)")
    parser.add_argument("--min-atoms", type=int, default=10)
    parser.add_argument("--max-atoms", type=int, default=20)
    parser.add_argument("--potential", default="default", help="MACE spec: 'default' or a model file")
    parser.add_argument("--architecture", default=None, help="time an untrained MACE of this preset instead")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pm6", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: torch's choice, one per core). On a busy machine use 1: more threads than "
        "free cores make every small call wait on thread synchronisation and inflate the single-call rows",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch

    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    from molgym.data.qm9 import load_qm9
    from molgym.potentials import load_potential

    structures = load_qm9().sample(args.n, seed=args.seed, min_atoms=args.min_atoms, max_atoms=args.max_atoms)
    mace, label = _mace(args, accelerate=True)
    plain, _ = _mace(args, accelerate=False)
    load_xtb = load_potential("xtb")
    mace_rows = {
        "MACE batched (1 call)": lambda: mace.energies(structures),
        f"MACE single ({args.n} calls)": lambda: [mace.energies([s]) for s in structures],
        "e3nn modules, batched": lambda: plain.energies(structures),
        f"e3nn modules, {args.n} single": lambda: [plain.energies([s]) for s in structures],
    }
    reference_rows = {f"GFN2-xTB ({args.n} calls)": lambda: [load_xtb.energies([s]) for s in structures]}
    if not args.skip_pm6:
        try:
            pm6 = load_potential("pm6")
            reference_rows[f"PM6 ({args.n} calls)"] = lambda: [pm6.energies([s]) for s in structures]
        except ImportError as err:
            print(f"note: PM6 row skipped ({err})")

    times: dict[str, list[float]] = {}
    for block in (mace_rows, reference_rows):
        times.update(_time_interleaved(block, args.repeats))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    base = median["MACE batched (1 call)"]
    atoms = sum(len(s) for s in structures)
    print(f"\n{args.n} QM9 molecules, {args.min_atoms}-{args.max_atoms} atoms ({atoms} atoms in all); MACE: {label}")
    swapped = ", ".join(mace.accelerated) or "none (not on the CPU, or no handled form)"
    print(f"molgym's CPU modules swapped in: {swapped}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'row':<28}{'seconds':>10}{'ms/structure':>14}{'x batched':>11}")
    for name, t in median.items():
        print(f"{name:<28}{t:>10.3f}{1000 * t / args.n:>14.2f}{t / base:>11.1f}")
    single = median[f"MACE single ({args.n} calls)"]
    plain_ratio = median[f"e3nn modules, {args.n} single"] / median["e3nn modules, batched"]
    print(f"\nbatched vs single MACE calls: {single / base:.1f}x (e3nn modules throughout: {plain_ratio:.1f}x)")
    result = {"n": args.n, "atoms": atoms, "mace": label, "device": args.device, "seconds": median,
              "accelerated": mace.accelerated,
              "ratio_to_batched": {k: v / base for k, v in median.items()}}
    if args.json:
        from molgym.io import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
