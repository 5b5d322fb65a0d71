"""Environment steps per second: batched MACE vector env vs single envs vs xTB vs a MolGym-style PM6 loop.

Workload: environments building C7H8N2O2 (19 atoms) with random *valid* placements
(:func:`molgym.envs.random_valid_action`), full episodes from an empty canvas, all seeded. Every env is built with
``min_reward=None`` (no reward floor): random placements score below the default floor within about 6 steps, and
the workload is whole 19-atom episodes. Only the time spent
inside ``step`` is timed (drawing the random actions is not), after ``--warmup`` untimed episodes (one-off costs
such as the first full garbage collection stay out of the figures). Side by side in one run:

  (a) one ``MolGymVectorEnv`` of N envs with the default MACE model: ONE batched ``potential.energies`` call per
      step for all N envs (``--rounds`` episodes each: it is fast, and a longer measurement averages out noise);
  (b) N single envs with the same MACE potential, stepped one after another (one call per step each);
  (c) single envs with GFN2-xTB (tblite), one after another;
  (d) a MolGym-style loop: PM6 via SCINE Sparrow, E(canvas) and E(canvas + atom) both computed every step (two
      calculations), one env after another;
  (e) (a) with the exact-return correction (``reference="xtb"``): the same MACE vector env, plus one GFN2-xTB
      evaluation of each final canvas, those of all envs ending in a step in one call (their 19-atom canvases are
      what per-step xTB evaluates at its last step; ``--rounds`` episodes each, as in (a)).

(c) and (d) run on the first ``--serial-envs`` envs only: one-after-another loops have the same steps/s however
many envs they go through, and xTB/PM6 would otherwise take many minutes. When the default MACE model is not
installed, (a) and (b) use an *untrained* MACE of the 'small' preset (the architecture the default model is
trained with, so the cost is the same; its energies are meaningless) and say so.

    python benchmarks/env_speed.py                 # N = 64
    python benchmarks/env_speed.py --n-envs 16 --serial-envs 4 --skip-pm6
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np

FORMULA = "C7H8N2O2"
#: env arguments of every measurement: no reward floor, so that random episodes run to the full 19 atoms
ENV_KWARGS = {"formula": FORMULA, "min_reward": None}


class TimedPotential:
    """Wraps a potential and accumulates the wall time spent in its energy calls.

    The wrapper offers whatever the inner potential offers: with a committee (the shipped default has one) the
    environments evaluate ``committee_energies`` and report each step's uncertainty, as they do with the
    potential itself. (a) and (b) both run through a wrapper, so both take the same path.
    """

    def __init__(self, inner):
        from molgym.potentials.base import Potential

        def timed(method):
            def call(self, structures):
                start = time.perf_counter()
                try:
                    return method(structures)
                finally:
                    self.seconds += time.perf_counter() - start
                    self.calls += 1

            return call

        class _Timed(Potential):
            name = inner.name
            species = inner.species
            capabilities = inner.capabilities
            energies = timed(inner.energies)
            if inner.supports("committee"):
                committee_energies = timed(inner.committee_energies)

            def __init__(self):
                self.seconds = 0.0
                self.calls = 0

            def __getattr__(self, attribute):  # the committee's size and scale, when it has them
                return getattr(inner, attribute)

            def energies_and_forces(self, structures):
                return inner.energies_and_forces(structures)

        self.potential = _Timed()


def mace_potential(device: str | None, dtype: str | None, fallback_arch: str = "small", accelerate: bool | None = None):
    """The default MACE model, or an untrained 'small' MACE when it is not installed (printed)."""
    from molgym.potentials import ModelNotAvailableError, load_potential

    try:
        pot = load_potential("default", device=device, dtype=dtype, accelerate=accelerate)
        return pot, "MACE default model"
    except ModelNotAvailableError as err:
        from molgym.potentials.mace import MACEPotential
        from molgym.potentials.mace_arch import build_untrained_mace

        print(f"NOTE: the default MACE model is not installed ({str(err).splitlines()[0][:90]}...).")
        print(f"      (a) and (b) use an UNTRAINED MACE of the {fallback_arch!r} preset instead: the cost of that")
        print("      architecture, meaningless energies.")
        model = build_untrained_mace(fallback_arch,
                                     atomic_energies=np.array([-13.6, -1029.0, -1484.0, -2041.0, -2712.0]))
        return (MACEPotential(model, device=device, dtype=dtype, name=f"MACE(untrained {fallback_arch})",
                              accelerate=accelerate),
                f"untrained MACE {fallback_arch!r}")


def _warmup_then_timed(warmup: int, timed: int):
    """``(index, timing_starts)`` for ``warmup`` untimed rounds, then ``timed`` timed ones; the warm-up rounds
    take the indices (seeds) after the timed ones, so the timed workload does not depend on ``warmup``."""
    for k in range(warmup + timed):
        yield (timed + k if k < warmup else k - warmup), k == warmup


def run_vector(
    potential, n_envs: int, seed: int, rounds: int = 1, warmup: int = 1, reference=None
) -> tuple[int, float, float, int, float]:
    """(a) (and with ``reference``, (e)): steps, step seconds, seconds inside the potential, potential calls and
    seconds inside the reference (``rounds`` full episodes, after ``warmup`` untimed ones)."""
    from molgym.envs import random_valid_action
    from molgym.envs.single_bag import SingleBagEnv
    from molgym.envs.vector import MolGymVectorEnv

    timed = TimedPotential(potential).potential
    timed_ref = None if reference is None else TimedPotential(reference).potential
    venv = MolGymVectorEnv(num_envs=n_envs, env_class=SingleBagEnv, potential=timed, reference=timed_ref,
                           autoreset_mode="same_step", **ENV_KWARGS)
    steps, elapsed = 0, 0.0
    for r, timing_starts in _warmup_then_timed(warmup, rounds):
        if timing_starts:
            steps, elapsed = 0, 0.0
            timed.seconds, timed.calls = 0.0, 0
            if timed_ref is not None:
                timed_ref.seconds = 0.0
        venv.reset(seed=seed + r * n_envs)
        rngs = [np.random.default_rng(seed + 1000 + r * n_envs + i) for i in range(n_envs)]
        finished = np.zeros(n_envs, dtype=bool)
        while not finished.all():
            actions = np.stack([random_valid_action(env, rngs[i]) for i, env in enumerate(venv.envs)])
            start = time.perf_counter()
            _, _, terminated, truncated, _ = venv.step(actions)
            elapsed += time.perf_counter() - start
            steps += n_envs  # every sub-env step is a placement (same-step autoreset: no idle reset steps)
            finished |= terminated | truncated
    return steps, elapsed, timed.seconds, timed.calls, 0.0 if timed_ref is None else timed_ref.seconds


def run_serial(make_env, n_envs: int, seed: int, warmup: int = 1) -> tuple[int, float, int]:
    """Full episodes of ``n_envs`` envs, one env after another (after ``warmup`` untimed ones): steps, step
    seconds, invalid endings."""
    from molgym.envs import random_valid_action

    steps, elapsed, invalid = 0, 0.0, 0
    for i, timing_starts in _warmup_then_timed(warmup, n_envs):
        if timing_starts:
            steps, elapsed, invalid = 0, 0.0, 0
        env = make_env()
        env.reset(seed=seed + i)
        rng = np.random.default_rng(seed + 1000 + i)
        while True:
            action = random_valid_action(env, rng)
            start = time.perf_counter()
            _, _, terminated, truncated, info = env.step(action)
            elapsed += time.perf_counter() - start
            steps += 1
            if terminated or truncated:
                invalid += int(info["invalid"])
                break
    return steps, elapsed, invalid


def molgym_style_env_class():
    """A SingleBagEnv that, like the original MolGym, recomputes E(canvas) every step (two calculations)."""
    from ase import Atoms

    from molgym.envs import SingleBagEnv

    class TwoCalculationEnv(SingleBagEnv):
        def step(self, action):
            if len(self._numbers) >= 1 and not self._done:
                canvas = Atoms(numbers=self._numbers, positions=self._positions)
                self._energy = float(self.potential.energies([canvas])[0])
            return super().step(action)

    return TwoCalculationEnv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-envs", type=int, default=64, help="envs in (a) and (b) (default 64)")
    parser.add_argument("--serial-envs", type=int, default=8, help="envs run one after another in (c), (d)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="MACE device (default: GPU if present, else CPU)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default 0 = torch's own, one per core, as in "
                             "potential_speed.py). On a busy machine use 1: more threads than free cores were measured "
                             "5-20x slower for every method, as OpenMP threads fight the other jobs")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                        help="MACE evaluation dtype for (a) and (b) (default float32, the usual choice for speed)")
    parser.add_argument("--fallback-arch", default="small",
                        help="MACE preset (molgym.potentials.mace_arch) used untrained when the default model is "
                             "not installed (default 'small')")
    parser.add_argument("--rounds", type=int, default=3,
                        help="full episodes per env timed in (a) (it is fast; more rounds average out noise)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed full episodes before each measurement ((a): rounds of all envs; (b)-(d): "
                             "single episodes). Default 1: the first pass pays one-off costs, among them a full "
                             "garbage collection over the ~400,000 objects torch and the model bring, measured at "
                             "0.2 s")
    parser.add_argument("--no-accelerate", action="store_true",
                        help="keep the model's e3nn modules as e3nn built them (no molgym.potentials.mace_cpu swaps)")
    parser.add_argument("--skip-xtb", action="store_true")
    parser.add_argument("--skip-pm6", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")

    import torch

    import molgym  # noqa: F401
    from molgym.envs import SingleBagEnv

    if args.threads:
        torch.set_num_threads(args.threads)
    potential, label = mace_potential(args.device, args.dtype, args.fallback_arch,
                                      accelerate=False if args.no_accelerate else None)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"MACE device {potential.device}, dtype {str(potential.dtype).replace('torch.', '')}")
    print(f"molgym's CPU modules swapped in: {', '.join(potential.accelerated) or 'none'}")
    print(f"workload: {FORMULA}, random valid placements, full episodes, seed {args.seed}\n")

    from ase import Atoms

    potential.energies([Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]])] * 4)  # warm-up (lazy set-up, allocator)
    results: dict[str, float] = {}

    steps, elapsed, in_potential, calls, _ = run_vector(potential, args.n_envs, args.seed, args.rounds, args.warmup)
    results["a"] = steps / elapsed
    fraction = in_potential / elapsed
    print(f"(a) vector env, {args.n_envs} envs, {label}: {steps} steps in {elapsed:.2f} s = {results['a']:.1f} steps/s "
          f"({calls} batched potential calls; {100 * fraction:.0f}% of step time inside the potential)", flush=True)

    single_potential = TimedPotential(potential).potential  # the same path as (a): see TimedPotential
    steps, elapsed, invalid = run_serial(lambda: SingleBagEnv(potential=single_potential, **ENV_KWARGS), args.n_envs,
                                         args.seed, args.warmup)
    results["b"] = steps / elapsed
    print(f"(b) {args.n_envs} single envs, {label}: {steps} steps in {elapsed:.2f} s = {results['b']:.1f} steps/s",
          flush=True)

    if not args.skip_xtb:
        steps, elapsed, invalid = run_serial(lambda: SingleBagEnv(potential="xtb", **ENV_KWARGS),
                                             args.serial_envs, args.seed, args.warmup)
        results["c"] = steps / elapsed
        print(f"(c) {args.serial_envs} single envs, GFN2-xTB: {steps} steps in {elapsed:.2f} s = "
              f"{results['c']:.2f} steps/s ({invalid} episodes ended by an SCF failure)", flush=True)

    if not args.skip_pm6:
        try:
            cls = molgym_style_env_class()
            steps, elapsed, invalid = run_serial(lambda: cls(potential="pm6", **ENV_KWARGS), args.serial_envs,
                                                 args.seed, args.warmup)
            results["d"] = steps / elapsed
            print(f"(d) MolGym-style loop, PM6 (Sparrow), 2 calculations/step, {args.serial_envs} envs one after "
                  f"another: {steps} steps in {elapsed:.2f} s = {results['d']:.2f} steps/s "
                  f"({invalid} episodes ended by an SCF failure)", flush=True)
        except ImportError as err:
            print(f"(d) skipped: {err}")

    if not args.skip_xtb:
        from molgym.potentials import load_potential

        steps, elapsed, _, _, in_reference = run_vector(potential, args.n_envs, args.seed, args.rounds, args.warmup,
                                                        reference=load_potential("xtb"))
        results["e"] = steps / elapsed
        print(f"(e) vector env, {args.n_envs} envs, {label} + GFN2-xTB correction at each episode's end: {steps} "
              f"steps in {elapsed:.2f} s = {results['e']:.1f} steps/s ({100 * in_reference / elapsed:.0f}% of step "
              "time inside GFN2-xTB)", flush=True)

    print("\nratios (goal):")
    if "d" in results:
        print(f"  a/d = {results['a'] / results['d']:.1f}  (>= 20)")
    print(f"  a/b = {results['a'] / results['b']:.1f}  (>= 5)")
    if "c" in results:
        print(f"  a/c = {results['a'] / results['c']:.1f}  (>= 1)")
        print(f"  e/c = {results['e'] / results['c']:.1f}  (>= 5: exact xTB returns, faster than per-step xTB)")
        print(f"  e/a = {results['e'] / results['a']:.2f}  (the correction's share of MACE's speed)")
    print(f"  fraction of (a)'s step time inside the potential = {100 * fraction:.0f}%  (>= 70%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
