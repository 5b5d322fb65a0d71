"""GFN2-xTB strain of a run's greedy molecule at its last checkpoints, not only at its final policy.

One PPO update can move a greedy molecule's relaxation drop by an electronvolt (C7H10O2: 2.6 eV at the
100,000-step evaluation, 1.3 eV one update later), so one molecule per seed is a noisy figure for a setting. For
each ``molgym train`` run given, this plays the greedy policy of each of its last ``--last`` checkpoints (the
``checkpoints/step_<N>.zip`` of its periodic evaluations) in the run's own environment, judges the molecule under
GFN2-xTB (:func:`molgym.agents.common.referee.judge_run` with ``policy="step:N"``: return over xTB's best-known,
validity, relaxation drop; cached in the run folder) together with the final greedy molecule, and prints one row
per run with the median over those molecules, then the median over runs.

    python benchmarks/strain_over_steps.py runs/side/mc-C7H10O2-s* runs/side/g0.99-C7H10O2-s0 --last 3

About one minute per molecule on one core (the relaxation).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished molgym train run folders (fixed-bag tasks)")
    parser.add_argument("--last", type=int, default=3, help="how many of the last checkpoints to judge (default 3)")
    parser.add_argument("--referee", default="xtb", help="the judging potential (default xtb)")
    parser.add_argument("--mean", type=int, default=0, metavar="K",
                        help="also judge the mean weights of each run's last K checkpoints (default 0: not)")
    args = parser.parse_args()
    if args.last < 1:
        parser.error(f"--last must be at least 1, got {args.last}")
    if args.mean < 0:
        parser.error(f"--mean must be 0 (off) or a positive number of checkpoints, got {args.mean}")
    missing = [str(r) for r in args.runs if not (r / "summary.json").is_file()]
    if missing:
        parser.error("not finished molgym train runs (no summary.json): " + ", ".join(missing))

    from molgym.agents.common.referee import judge_run
    from molgym.agents.common.training import checkpoint_steps

    per_run, per_run_mean = [], []
    mean_head = f" mean of last {args.mean}: return / best-known, valid, drop (eV) |" if args.mean else ""
    print("| run | policies judged | valid | return / best-known (median) | relaxation drop per policy (eV) "
          "| median drop (eV) |" + mean_head)
    print("|---|---|---|---|---|---|" + ("---|" if args.mean else ""))
    for run in args.runs:
        steps = checkpoint_steps(run)
        final_step = max(steps) if steps else None
        # the last checkpoint is the final policy's own (written at the end), judged as "final"
        earlier = [s for s in steps if s != final_step][-(args.last - 1):] if args.last > 1 else []
        policies = [f"step:{s}" for s in earlier] + ["final"]
        judged = [judge_run(run, args.referee, policy=p)["summary"] for p in policies]
        drops = [j["relax_drop"] for j in judged if j["relax_drop"] is not None]
        fractions = [j["referee_fraction"] for j in judged if j["referee_fraction"] is not None]
        median_drop = statistics.median(drops) if drops else None
        per_run.append(median_drop)
        labels = [p.removeprefix("step:") for p in policies]
        mean_cell = ""
        if args.mean:
            m = judge_run(run, args.referee, policy=f"mean:{args.mean}")["summary"]
            per_run_mean.append(m["relax_drop"])
            mean_cell = (" " + ("n/a" if m["referee_fraction"] is None else f"{m['referee_fraction']:.3f}")
                         + f", {'valid' if m['valid'] else 'not valid'}, "
                         + ("n/a" if m["relax_drop"] is None else f"{m['relax_drop']:.2f}") + " |")
        print(f"| {run} | {', '.join(labels)} | {sum(bool(j['valid']) for j in judged)} of {len(judged)} | "
              + (f"{statistics.median(fractions):.3f}" if fractions else "n/a") + " | "
              + ", ".join("n/a" if j["relax_drop"] is None else f"{j['relax_drop']:.2f}" for j in judged) + " | "
              + ("n/a" if median_drop is None else f"{median_drop:.2f}") + " |" + mean_cell)
    scored = [d for d in per_run if d is not None]
    if scored:
        print(f"\nmedian over {len(scored)} runs of each run's median relaxation drop: "
              f"{statistics.median(scored):.2f} eV")
    scored_mean = [d for d in per_run_mean if d is not None]
    if scored_mean:
        print(f"median over {len(scored_mean)} runs of the relaxation drop of their last {args.mean} checkpoints' "
              f"mean weights: {statistics.median(scored_mean):.2f} eV")


if __name__ == "__main__":
    main()
