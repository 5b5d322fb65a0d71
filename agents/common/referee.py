"""Judge trained agents by a quantum-chemical referee (GFN2-xTB by default), not by the reward they were trained on.

An agent trained on a learned potential can find the potential's errors; its training return then says little.
For each greedy molecule of a finished ``molgym train`` run (``molecules.xyz``, ``mode == "greedy"``) or of a
policy file played greedily, :func:`judge_molecules` computes under the referee:

- ``referee_return``: the build return ``sum E(atom) - E(molecule)`` (eV; :mod:`molgym.reward`'s definition, with the
  referee's own isolated-atom energies) and ``referee_fraction``, its fraction of the formula's best-known return
  under the referee (``molgym/data/best_known.json``; ``None`` where none is known);
- ``relax_drop``: ``E(molecule) - E(relaxed)`` after BFGS relaxation under the referee (eV; ``fmax`` 0.05 eV/Å,
  at most 300 steps) and ``relax_rmsd``, the heavy-atom RMSD (Å) of that relaxation after superposition: how far
  the agent's geometry is from a local minimum (a strained molecule scores less than its relaxed self);
- ``graph_kept``: whether that relaxation kept the bond graph (molgym's distance rule, hydrogens included); when it
  did not, ``relax_drop`` includes a reaction's energy (a fragment leaving, a ring closing), not only strain;
- ``valid``: the benchmark's validity (one connected molecule that RDKit sanitises after bond perception), and
  ``posebusters``: whether the molecule passes PoseBusters' molecule checks (bond lengths, angles, clashes,
  flatness, sanitisation; ``None`` where RDKit cannot build it).

Results of a run are cached in ``<run>/referee-<name>.json`` (keyed by the size and time of ``molecules.xyz``), so
rerunning the report costs nothing.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = ["POLICIES", "judge_molecules", "judge_run", "judge_checkpoint", "greedy_checkpoint_molecule",
           "summarise_judged"]

#: Version of a judged record's fields, part of a cache's key: 2 added ``graph_kept`` and ``posebusters``, so caches
#: written before are judged again.
RECORD_VERSION = 2

#: Relaxation settings of the referee (those of ``molgym.best_known``'s xTB entries).
RELAX_FMAX = 0.05
RELAX_STEPS = 300


def judge_molecules(molecules: Sequence[Atoms], referee, fmax: float = RELAX_FMAX,
                    steps: int = RELAX_STEPS) -> list[dict[str, Any]]:
    """One record per molecule (see the module docstring), computed by the benchmark's own metrics
    (:func:`molgym.metrics.evaluate.molecule_records`, plausibility gate included) with the referee as the
    potential and each molecule's own formula's best-known return; a molecule the referee cannot score (fewer
    than two atoms, fused atoms, a failed SCF or relaxation) gets ``None`` there."""
    from molgym.chem import bag_from_numbers, format_formula
    from molgym.metrics.evaluate import molecule_records
    from molgym.metrics.physics import best_known_return

    records = []
    for atoms in molecules:
        atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        formula = format_formula(bag_from_numbers(atoms.numbers)) if len(atoms) else ""
        scorable = len(atoms) >= 2
        best = best_known_return(formula, referee) if scorable else None
        m = molecule_records([atoms], referee if scorable else None, formula=formula or None, best_known=best,
                             relax_fmax=fmax, relax_steps=steps)[0]
        records.append({"formula": formula, "n_atoms": len(atoms), "valid": bool(m["valid_connected"]),
                        "smiles": m["smiles"], "referee_return": m.get("return"),
                        "referee_fraction": m.get("fraction_best_known"), "relax_drop": m.get("relax_energy_drop"),
                        "relax_rmsd": m.get("relax_rmsd"), "relax_steps": m.get("relax_steps"),
                        "graph_kept": m.get("relax_graph_kept"), "posebusters": m.get("posebusters")})
    return records


def summarise_judged(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over judged molecules: fraction of the best-known return, relaxation drop and RMSD; the fractions
    that are valid, that pass PoseBusters and whose bond graph the relaxation kept (over those it applies to)."""

    def median(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return statistics.median(values) if values else None

    def fraction(key: str) -> float | None:
        values = [bool(r[key]) for r in records if r.get(key) is not None]
        return statistics.fmean(values) if values else None

    return {"molecules": len(records), "referee_fraction": median("referee_fraction"),
            "referee_return": median("referee_return"), "relax_drop": median("relax_drop"),
            "relax_rmsd": median("relax_rmsd"),
            "valid": fraction("valid"), "posebusters": fraction("posebusters"), "graph_kept": fraction("graph_kept")}


def _greedy_molecules(run_dir: Path) -> list[Atoms]:
    import ase.io

    path = run_dir / "molecules.xyz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {run_dir} a finished molgym train run?")
    return [m for m in ase.io.read(path, index=":") if m.info.get("mode") == "greedy"]


#: Which policy of a run :func:`judge_run` judges: the final one, that of its best periodic evaluation, (as
#: ``"step:N"``) its checkpoint of step N, or (as ``"mean:K"``) the mean weights of its last K checkpoints
#: (:func:`~molgym.agents.common.training.average_checkpoints`).
POLICIES = ("final", "best", "step:N", "mean:K")


def _policy_source(run_dir: Path, policy: str) -> tuple[Path, int | None]:
    """The file behind ``policy`` (see :data:`POLICIES`) of the run in ``run_dir`` and, for a policy file, its
    step (``None`` for the final molecules, ``molecules.xyz``)."""
    if policy == "final":
        return run_dir / "molecules.xyz", None
    if policy == "best":
        from molgym.agents.common.training import best_evaluated_checkpoint

        path, row = best_evaluated_checkpoint(run_dir)
        return path, int(row["step"])
    if policy.startswith("mean:") and policy.removeprefix("mean:").isdigit():
        from molgym.agents.common.training import average_checkpoints, checkpoint_steps

        path = average_checkpoints(run_dir, int(policy.removeprefix("mean:")))
        return path, max(checkpoint_steps(run_dir))
    step = policy.removeprefix("step:")
    if not policy.startswith("step:") or not step.isdigit():
        raise ValueError(f"policy must be one of final, best, step:N (N a checkpoint's step) or mean:K (the mean "
                         f"weights of the last K checkpoints), got {policy!r}")
    path = run_dir / "checkpoints" / f"step_{step}.zip"
    if not path.is_file():
        from molgym.agents.common.training import checkpoint_steps

        saved = checkpoint_steps(run_dir)
        raise FileNotFoundError(f"{run_dir} has no checkpoint of step {step}; it has steps "
                                f"{', '.join(map(str, saved)) or 'none'}")
    return path, int(step)


def judge_run(run_dir: str | Path, referee_spec: str = "xtb", referee=None, policy: str = "final") -> dict[str, Any]:
    """``{"records": [...], "summary": {...}}`` for a finished run's greedy molecules, cached in the run folder.

    ``policy="final"``: the final greedy molecules of ``molecules.xyz``; on a fixed-bag task greedy episodes are
    identical, so only distinct ones are judged. ``policy="best"``: one greedy episode of the policy of the run's
    best periodic evaluation (:func:`~molgym.agents.common.training.best_evaluated_checkpoint`); ``"step:N"``: of
    its checkpoint of step N; ``"mean:K"``: of the mean weights of its last K checkpoints. These are played in the
    run's own environment with the final greedy episodes' seed, on fixed-bag runs only, and the result also holds
    ``step``, the step of the policy (for ``mean:K`` the last step averaged)."""
    from molgym.io import write_json

    run_dir = Path(run_dir)
    source, step = _policy_source(run_dir, policy)
    stat = source.stat() if source.is_file() else None
    key = {"referee": referee_spec, "source": source.name, "size": stat.st_size if stat else None,
           "mtime_ns": stat.st_mtime_ns if stat else None, "fmax": RELAX_FMAX, "steps": RELAX_STEPS,
           "records": RECORD_VERSION}
    prefix = "referee" if policy == "final" else f"referee-{policy.replace(':', '-')}"
    cache = run_dir / f"{prefix}-{Path(str(referee_spec)).name}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        saved_key = {"source": "molecules.xyz", **saved.get("key", {})}  # caches written before "source" was
        if saved_key == key:
            return saved
    molecules = _distinct(_greedy_molecules(run_dir)) if step is None else [_play_in_run_env(run_dir, source)]
    if referee is None:
        from molgym.potentials import load_potential

        referee = load_potential(referee_spec)
    records = judge_molecules(molecules, referee)
    result = {"key": key, "referee": referee.name, "records": records, "summary": summarise_judged(records),
              **({"step": step} if step is not None else {})}
    write_json(cache, result)
    return result


def _play_in_run_env(run_dir: Path, policy_file: Path) -> Atoms:
    """The final canvas of one greedy episode of ``policy_file`` in the environment of the fixed-bag run in
    ``run_dir`` (its config.json), seeded as the run's final greedy episodes were."""
    import molgym  # noqa: F401  (registers the environments)
    from molgym.agents.common.training import TrainConfig, _make_env

    cfg = TrainConfig(**json.loads((run_dir / "config.json").read_text()))
    if cfg.env_id != "MolGym/SingleBag-v0" or not cfg.formula:
        raise ValueError(f"a run's saved policies are judged on fixed-bag formula runs only; {run_dir} is a "
                         f"{cfg.env_id} run")
    env = _make_env(cfg)
    try:
        return _greedy_molecule(policy_file, env, seed=cfg.seed + 20_000)
    finally:
        env.close()


def _greedy_molecule(policy_file: str | Path, env, seed: int) -> Atoms:
    """The final canvas of one greedy episode of a policy file (SB3 ``.zip``) in ``env``."""
    from stable_baselines3 import PPO

    from molgym.agents.common.training import greedy_episodes

    model = PPO.load(str(policy_file), device="cpu")
    return greedy_episodes(model.policy, env, 1, seed=seed)[0]["atoms"]


def greedy_checkpoint_molecule(path: str | Path, formula: str, referee, seed: int = 0) -> Atoms:
    """The final canvas of one greedy episode of a policy file (SB3 ``.zip``) on ``MolGym/SingleBag-v0`` for
    ``formula``, in an environment under ``referee`` (the policy sees only the canvas and the bag, so no learned
    potential is needed)."""
    import gymnasium as gym

    import molgym  # noqa: F401  (registers the environments)

    env = gym.make("MolGym/SingleBag-v0", formula=formula, potential=referee)
    return _greedy_molecule(path, env, seed)


def judge_checkpoint(path: str | Path, formula: str, referee_spec: str = "xtb", seed: int = 0) -> dict[str, Any]:
    """Play a policy file (SB3 ``.zip``) greedily on ``MolGym/SingleBag-v0`` for ``formula`` and judge its
    molecule; ``{"records", "summary"}`` as :func:`judge_run` gives."""
    from molgym.potentials import load_potential

    referee = load_potential(referee_spec)
    records = judge_molecules([greedy_checkpoint_molecule(path, formula, referee, seed)], referee)
    return {"referee": referee.name, "records": records, "summary": summarise_judged(records)}


def _distinct(molecules: list[Atoms]) -> list[Atoms]:
    out: list[Atoms] = []
    for m in molecules:
        if not any(len(m) == len(o) and np.array_equal(m.numbers, o.numbers)
                   and np.allclose(m.positions, o.positions, atol=1e-6) for o in out):
            out.append(m)
    return out
