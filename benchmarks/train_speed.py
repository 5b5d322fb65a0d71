"""PPO training speed under three reward settings, side by side: MACE only, MACE + GFN2-xTB correction, per-step xTB.

What the exact-return correction costs where it matters, in training: each setting trains the covariant agent
with ``molgym train``'s code path (``molgym.agents.common.training.train``: SB3 PPO, the batched SB3 vec env, the
periodic evaluation turned off) for ``--steps`` environment steps from the same seed, and the settings take turns
(``--rounds`` times, A B C A B C ...) so that a busy machine slows them alike. Printed: environment steps per
second of each round, the median per setting, and the ratios.

    python benchmarks/train_speed.py                         # C7H8N2O2, 2048 steps, 2 rounds, 1 torch thread
    python benchmarks/train_speed.py --formula CH4O --steps 1024 --rounds 3

Early in training, episodes end sooner (invalid placements, the reward floor), so the correction (one xTB call per
episode) weighs more than it does for a trained agent that completes its molecules.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

SETTINGS = {
    "MACE only": {"potential": "default", "reference": None},
    "MACE + xTB correction": {"potential": "default", "reference": "xtb"},
    "per-step xTB": {"potential": "xtb", "reference": None},
}


def train_once(formula: str, steps: int, seed: int, potential: str, reference: str | None, out: str) -> float:
    """Environment steps per second of one short training run (model set-up and final episodes excluded)."""
    from molgym.agents.common.training import TrainConfig, train

    cfg = TrainConfig(out=out, agent="covariant", formula=formula, potential=potential, reference=reference,
                      steps=steps, n_envs=4, seed=seed, eval_every=0, checkpoint_every=0, final_molecules=0,
                      eval_episodes=1, threads=1)
    summary = train(cfg, progress=False, log=lambda *_: None)
    return float(summary["env_steps_per_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formula", default="C7H8N2O2")
    parser.add_argument("--steps", type=int, default=2048, help="environment steps per run (default 2048)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting, interleaved (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    print(f"covariant agent, {args.formula}, {args.steps} steps per run, 4 envs, 1 torch thread, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    speeds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k, (name, setting) in enumerate(SETTINGS.items()):
                start = time.perf_counter()
                speed = train_once(args.formula, args.steps, args.seed, out=os.path.join(tmp, f"r{r}-{k}"),
                                   **setting)
                speeds[name].append(speed)
                print(f"round {r + 1}, {name}: {speed:.1f} env steps/s ({time.perf_counter() - start:.0f} s in all)",
                      flush=True)
    median = {name: statistics.median(v) for name, v in speeds.items()}
    print("\nmedian env steps/s: " + ", ".join(f"{name} {v:.1f}" for name, v in median.items()))
    base, corrected, xtb = (median[n] for n in SETTINGS)
    print(f"MACE + xTB correction / MACE only = {corrected / base:.2f}")
    print(f"MACE + xTB correction / per-step xTB = {corrected / xtb:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
