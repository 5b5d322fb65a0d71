"""Sampling cost of the energy-based diffusion sampler: seconds per molecule at a batch size and step count.

Workload: unconditional QM9-like molecules (sizes drawn from QM9's training split, hydrogens included) sampled
with the shipped model (or ``--model``) and EDM's Heun sampler; each Heun step costs two network evaluations
(energy + its gradient), the last one. One warm-up batch is run first and not timed (TorchScript compiles
e3nn's kernels on the first calls). Context: EDM reports 1.7 s per sample on a GTX 1080 Ti (1000 steps of its
EGNN).

    python benchmarks/diffusion_speed.py                      # batch 64, 20 steps (the sampler's), 2 timed batches
    python benchmarks/diffusion_speed.py --batch-size 128 --steps 40 --batches 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import time

EDM_SECONDS_PER_SAMPLE = 1.7  # GTX 1080 Ti, EDM paper (Hoogeboom et al. 2022)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="diffusion checkpoint ('default': shipped QM9 model)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="Heun steps (default 20, the sampler's default)")
    parser.add_argument("--batches", type=int, default=2, help="timed batches (after one warm-up batch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.batch_size, args.steps, args.batches, args.threads) < 1:
        parser.error("--batch-size, --steps, --batches and --threads must be at least 1")

    import torch

    torch.set_num_threads(args.threads)
    from molgym.agents.diffusion import DiffusionSampler

    gen = DiffusionSampler(model=args.model, steps=args.steps, batch_size=args.batch_size)
    gen.generate(None, args.batch_size, seed=args.seed + 1000)  # warm-up, not timed
    start = time.perf_counter()
    molecules = gen.generate(None, args.batch_size * args.batches, seed=args.seed)
    seconds = time.perf_counter() - start
    per_molecule = seconds / len(molecules)
    atoms = sum(len(m) for m in molecules) / len(molecules)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads {args.threads}")
    print(f"diffusion sampler: {len(molecules)} molecules (mean {atoms:.1f} atoms), batch {args.batch_size}, "
          f"{args.steps} Heun steps ({2 * args.steps - 1} network evaluations)")
    print(f"  {seconds:.1f} s total, {per_molecule:.3f} s per molecule, "
          f"{1000 * per_molecule / (2 * args.steps - 1):.2f} ms per molecule per network evaluation")
    print(f"  10,000 molecules would take {10_000 * per_molecule / 60:.0f} min at this rate")
    print(f"EDM for context: {EDM_SECONDS_PER_SAMPLE} s per sample on a GTX 1080 Ti (ratio EDM / this: "
          f"{EDM_SECONDS_PER_SAMPLE / per_molecule:.2f})")


if __name__ == "__main__":
    main()
