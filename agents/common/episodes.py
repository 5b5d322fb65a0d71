"""Episodes of a trained policy and their summaries: the periodic and final evaluations of a training run.

Completion, validity (the benchmark's: one connected molecule that RDKit sanitises after bond perception),
stability and fraction of the optimum are defined in :mod:`molgym.agents.common.training`'s docstring.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from molgym.agents.common.train_config import TrainConfig

__all__ = ["greedy_episodes", "held_out_episodes", "summarise", "summarise_held_out", "is_valid", "is_stable"]

def greedy_episodes(
    policy, env, n: int, seed: int, deterministic: bool = True, options: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Run ``n`` episodes of ``policy`` on ``env`` (greedy, or sampled with ``deterministic=False``; ``options``
    go to every ``reset``); one record per episode with the final molecule."""
    records = []
    for i in range(n):
        obs, info = env.reset(seed=seed + i, options=options)
        best = info.get("best_known_return")
        done, ret, last = False, 0.0, {}
        while not done:
            batch = {k: np.asarray(v)[None] for k, v in obs.items()}
            action, _ = policy.predict(batch, deterministic=deterministic)
            obs, reward, terminated, truncated, last = env.step(action[0])
            ret += float(reward)
            done = terminated or truncated
        atoms = env.unwrapped.canvas
        complete = not last.get("invalid", False) and not env.unwrapped.bag
        valid = complete and is_valid(atoms)
        best = last.get("best_known_return", best)
        frac = ret / best if (best is not None and np.isfinite(best) and best != 0) else None
        stable = bool(complete and is_stable(atoms))
        atoms.info.update(episode_return=ret, complete=bool(complete), valid=bool(valid), stable=stable,
                          invalid_reason=last.get("invalid_reason", "") or "none",  # extxyz garbles empty strings
                          fraction_of_optimum=np.nan if frac is None else frac)
        records.append({"return": ret, "complete": bool(complete), "valid": bool(valid), "stable": stable,
                        "fraction_of_optimum": frac, "atoms": atoms, "best_known_return": best})
    return records


def held_out_episodes(policy, env, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Episodes on the bags the run never trained on (``MolGym/StochasticBag-v0``'s ``exclude``): per bag, one
    greedy episode and ``cfg.eval_episodes`` sampled ones; records as :func:`greedy_episodes` gives, with
    ``bag`` and ``greedy``. Empty for tasks without held-out bags."""
    records = []
    for k, formula in enumerate(sorted(getattr(env.unwrapped, "exclude", ()))):
        for greedy, n in ((True, 1), (False, cfg.eval_episodes)):
            seed = cfg.seed + 40_000 + 100 * k
            for r in greedy_episodes(policy, env, n, seed, deterministic=greedy, options={"bag": formula}):
                r["atoms"].info["bag"] = formula
                records.append({**r, "bag": formula, "greedy": greedy})
    return records


def summarise_held_out(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per held-out bag and over all of them: the greedy and sampled summaries (``None`` without held-out bags)."""
    if not records:
        return None
    by_bag: dict[str, Any] = {}
    for bag in sorted({r["bag"] for r in records}):
        mine = [r for r in records if r["bag"] == bag]
        by_bag[bag] = {"greedy": summarise([r for r in mine if r["greedy"]]),
                       "sampled": summarise([r for r in mine if not r["greedy"]])}
    return {"bags": by_bag,
            "greedy": summarise([r for r in records if r["greedy"]]),
            "sampled": summarise([r for r in records if not r["greedy"]])}


def is_valid(atoms) -> bool:
    """One connected molecule that RDKit sanitises after bond perception: the benchmark's validity
    (:func:`molgym.metrics.chemistry.perceive`), so training summaries and benchmark reports agree."""
    from molgym.metrics.chemistry import perceive

    p = perceive(atoms)
    return bool(p.valid and p.connected)


def is_stable(atoms) -> bool:
    """Every atom's bond-order sum is an allowed valence (EDM-style stability, :mod:`molgym.metrics.bonds`)."""
    from molgym.metrics.bonds import is_stable

    return is_stable(atoms)


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    fracs = [r["fraction_of_optimum"] for r in records if r["fraction_of_optimum"] is not None]
    best = next((r["best_known_return"] for r in records if r["best_known_return"] is not None), None)
    return {
        "episodes": len(records),
        "mean_return": float(np.mean([r["return"] for r in records])) if records else math.nan,
        "best_return": float(np.max([r["return"] for r in records])) if records else math.nan,
        "completed": float(np.mean([r["complete"] for r in records])) if records else math.nan,
        "validity": float(np.mean([r["valid"] for r in records])) if records else math.nan,
        "stability": float(np.mean([r["stable"] for r in records])) if records else math.nan,
        "mean_fraction_of_optimum": float(np.mean(fracs)) if fracs else None,
        "best_known_return": best,
    }
