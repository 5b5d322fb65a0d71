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
- ``valid``: the benchmark's validity (one connected molecule that RDKit sanitises after bond perception).

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

__all__ = ["judge_molecules", "judge_run", "judge_checkpoint", "greedy_checkpoint_molecule", "summarise_judged"]

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
                        "relax_rmsd": m.get("relax_rmsd"), "relax_steps": m.get("relax_steps")})
    return records


def summarise_judged(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over judged molecules: fraction of the best-known return, relaxation drop and RMSD; validity."""

    def median(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {"molecules": len(records), "referee_fraction": median("referee_fraction"),
            "referee_return": median("referee_return"), "relax_drop": median("relax_drop"),
            "relax_rmsd": median("relax_rmsd"),
            "valid": statistics.fmean(r["valid"] for r in records) if records else None}


def _greedy_molecules(run_dir: Path) -> list[Atoms]:
    import ase.io

    path = run_dir / "molecules.xyz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {run_dir} a finished molgym train run?")
    return [m for m in ase.io.read(path, index=":") if m.info.get("mode") == "greedy"]


def judge_run(run_dir: str | Path, referee_spec: str = "xtb", referee=None) -> dict[str, Any]:
    """``{"records": [...], "summary": {...}}`` for a finished run's greedy molecules, cached in the run folder.

    On a fixed-bag task greedy episodes are identical, so only distinct greedy molecules are judged."""
    from molgym.io import write_json

    run_dir = Path(run_dir)
    source = run_dir / "molecules.xyz"
    stat = source.stat() if source.is_file() else None
    key = {"referee": referee_spec, "size": stat.st_size if stat else None,
           "mtime_ns": stat.st_mtime_ns if stat else None, "fmax": RELAX_FMAX, "steps": RELAX_STEPS}
    cache = run_dir / f"referee-{Path(str(referee_spec)).name}.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved
    molecules = _distinct(_greedy_molecules(run_dir))
    if referee is None:
        from molgym.potentials import load_potential

        referee = load_potential(referee_spec)
    records = judge_molecules(molecules, referee)
    result = {"key": key, "referee": referee.name, "records": records, "summary": summarise_judged(records)}
    write_json(cache, result)
    return result


def greedy_checkpoint_molecule(path: str | Path, formula: str, referee, seed: int = 0) -> Atoms:
    """The final canvas of one greedy episode of a policy file (SB3 ``.zip``) on ``MolGym/SingleBag-v0`` for
    ``formula``, in an environment under ``referee`` (the policy sees only the canvas and the bag, so no learned
    potential is needed)."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    import molgym  # noqa: F401  (registers the environments)
    from molgym.agents.common.training import greedy_episodes

    env = gym.make("MolGym/SingleBag-v0", formula=formula, potential=referee)
    model = PPO.load(str(path), device="cpu")
    return greedy_episodes(model.policy, env, 1, seed=seed)[0]["atoms"]


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
