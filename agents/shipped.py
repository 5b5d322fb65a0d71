"""Trained agent checkpoints that ship with molgym, so the benchmark can roll out an agent without training first.

The checkpoints live in ``agents/checkpoints/`` (installed as package data of ``molgym.agents``), one SB3 ``.zip``
per formula task, listed in ``checkpoints/index.json`` with how each was made: agent, formula, potential (and the
sha256 of the MACE model its rewards came from), steps, seed, the ``molgym train`` command, the measured greedy
fraction of the best-known return and validity, and the file's sha256. A checkpoint is checked against that
sha256 before SB3 unpickles it.

The benchmark's ``rl_policy`` generator uses them with ``checkpoint="shipped"``
(``molgym bench --option rl_policy.checkpoint=shipped``).

Stochastic-bag checkpoints (one policy for every bag drawn from a template formula, ``MolGym/StochasticBag-v0``)
are listed apart, under ``"stochastic"`` in the index, keyed by template (:func:`shipped_stochastic_checkpoint`);
their entries also carry the bags held out of training and the policy's figures on them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

__all__ = ["CHECKPOINT_DIR", "LEARNING_CURVES", "shipped_checkpoints", "shipped_checkpoint",
           "shipped_stochastic_checkpoints", "shipped_stochastic_checkpoint", "ship_checkpoint"]

#: Where the shipped checkpoints and their index live.
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
#: The learning curves of the shipped checkpoints' training runs (periodic greedy evaluation, every seed), made by
#: ``molgym train-report`` on the runs they were chosen from: title -> PNG. The C3H5NO3, C4H7N and C7H8N2O2
#: checkpoints come from the learning-rate 1e-3 runs, the other five from the 3e-4 runs (whose figure also shows the
#: 3e-4 runs of those three, since replaced; docs/agents.md, "Learning under exact returns").
LEARNING_CURVES = {
    "learning curves of the shipped C3H5NO3, C4H7N and C7H8N2O2 checkpoints' runs (learning rate 1e-3; periodic "
    "greedy evaluation during training, median over seeds, band min-max)": CHECKPOINT_DIR / "learning-curves-lr1e-3.png",
    "learning curves of the shipped CH4O, CH3NO, C2H2O2, C3H8O and C7H10O2 checkpoints' runs (learning rate 3e-4; "
    "its C3H5NO3, C4H7N and C7H8N2O2 panels are runs since replaced)": CHECKPOINT_DIR / "learning-curves-lr3e-4.png",
}


@lru_cache(maxsize=1)
def _index() -> dict:
    index = CHECKPOINT_DIR / "index.json"
    return json.loads(index.read_text()) if index.is_file() else {}


def shipped_checkpoints() -> dict[str, dict]:
    """The index of shipped checkpoints: formula (Hill order) -> its entry (``file``, ``sha256``, provenance)."""
    return {entry["formula"]: entry for entry in _index().get("checkpoints", [])}


def shipped_stochastic_checkpoints() -> dict[str, dict]:
    """The shipped stochastic-bag checkpoints: template formula (Hill order) -> its entry (``file``, ``sha256``,
    ``env_kwargs`` with the bags held out of training, ``held_out`` with the policy's figures on them)."""
    return {entry["template"]: entry for entry in _index().get("stochastic", [])}


def _checked_file(entry: dict) -> Path:
    from molgym.potentials.registry import check_sha256

    path = CHECKPOINT_DIR / entry["file"]
    if not path.is_file():
        raise ValueError(f"shipped checkpoint {path} is missing from this installation")
    return check_sha256(path, entry["sha256"], "shipped checkpoint", "its index")


def shipped_checkpoint(formula: str) -> Path:
    """Path of the shipped checkpoint for ``formula``, after checking its sha256.

    Raises:
        ValueError: no checkpoint ships for ``formula`` (the message lists those that do), or the file does not
            match the sha256 in the index.
    """
    from molgym.chem import format_formula, parse_formula

    key = format_formula(parse_formula(formula))
    entries = shipped_checkpoints()
    if key not in entries:
        available = ", ".join(sorted(entries)) or "none"
        raise ValueError(
            f"no shipped agent checkpoint for {key}; shipped for: {available}. Train one with "
            f"`molgym train --formula {key} --out DIR` and pass checkpoint=DIR/model.zip"
        )
    return _checked_file(entries[key])


def shipped_stochastic_checkpoint(template: str) -> Path:
    """Path of the shipped stochastic-bag checkpoint for bags drawn from ``template``, after checking its sha256.
    Play it in ``MolGym/StochasticBag-v0`` made with its entry's ``env_kwargs`` (the observation space depends on
    the template and size range)."""
    from molgym.chem import format_formula, parse_formula

    key = format_formula(parse_formula(template))
    entries = shipped_stochastic_checkpoints()
    if key not in entries:
        available = ", ".join(sorted(entries)) or "none"
        raise ValueError(f"no shipped stochastic-bag checkpoint for template {key}; shipped for: {available}")
    return _checked_file(entries[key])


#: ``molgym train`` flag of each PPO setting in a run's config.json
_PPO_FLAGS = {"learning_rate": "--lr", "lr_schedule": "--lr-schedule", "n_steps": "--n-steps",
              "batch_size": "--batch-size", "epochs": "--epochs", "gamma": "--gamma", "gae_lambda": "--gae-lambda",
              "clip_range": "--clip-range", "ent_coef": "--ent-coef", "vf_coef": "--vf-coef",
              "max_grad_norm": "--max-grad-norm"}


def _ppo_flags(cfg: dict) -> dict[str, object]:
    """The PPO flags that reproduce a run: the learning rate always (its default has changed before), the others
    where they differ from today's defaults."""
    from molgym.agents.common.train_config import TrainConfig

    defaults = TrainConfig(out="-")
    return {flag: cfg[key] for key, flag in _PPO_FLAGS.items()
            if key in cfg and (key == "learning_rate" or cfg[key] != getattr(defaults, key))}


_STOCHASTIC_ENV = "MolGym/StochasticBag-v0"


def _rank_key(run) -> tuple[float, ...]:
    """How seeds are ranked for shipping: a formula run by its final greedy fraction of the best-known return; a
    stochastic-bag run by the validity of its greedy, then its sampled, molecules on the bags held out of training
    (a random bag has no best-known return), then its final greedy validity on training bags."""
    def value(summary: dict | None, key: str) -> float:
        v = (summary or {}).get(key)
        return -float("inf") if v is None else float(v)

    if run.config["env_id"] == _STOCHASTIC_ENV:
        held = run.summary.get("held_out") or {}
        return (value(held.get("greedy"), "validity"), value(held.get("sampled"), "validity"),
                value(run.summary.get("final_greedy"), "validity"))
    return (value(run.summary.get("final_greedy"), "mean_fraction_of_optimum"),)


def ship_checkpoint(run_dirs: list[str | Path], checkpoint_dir: str | Path = CHECKPOINT_DIR,
                    note: str | None = None) -> dict:
    """Ship the median seed of finished ``molgym train`` runs of one task: copy its ``model.zip`` to
    ``covariant-<FORMULA>.zip`` (or ``internal-...``; ``covariant-stochastic-<TEMPLATE>.zip`` for a
    ``MolGym/StochasticBag-v0`` run) in ``checkpoint_dir`` and replace that task's entry of ``index.json`` with its
    provenance (settings, reward rules, final greedy summary, for a stochastic-bag run the held-out bags' summaries,
    the command, sha256, and ``note``: how the runs came about, when their seeds alone do not say it). Both writes
    are atomic. Returns the new entry.

    The runs must be seeds of one setting (same agent, task, potential, reference and budget); the median seed is
    chosen (the lower middle of an even number; ranked as :func:`_rank_key` says), so a shipped checkpoint is
    typical of its setting, not its luckiest seed.
    """
    import shutil

    from molgym.agents.common.run_report import load_run
    from molgym.io import atomic_path, write_json
    from molgym.potentials.registry import sha256_of

    runs = [load_run(p) for p in run_dirs]
    if not runs:
        raise ValueError("ship_checkpoint needs at least one finished run")
    if len({r.setting for r in runs}) != 1:
        raise ValueError("the runs are not seeds of one setting: " + ", ".join(str(r.path) for r in runs))
    first = runs[0]
    agent, env_id = first.config["agent"], first.config["env_id"]
    stochastic = env_id == _STOCHASTIC_ENV
    if stochastic:
        from molgym.chem import format_formula, parse_formula

        template = (first.config.get("env_kwargs") or {}).get("template")
        key_name, key = "template", template and format_formula(parse_formula(template))  # Hill order, as looked up
        name = f"{agent}-stochastic-{key}.zip"
    else:
        key_name, key = "formula", first.config.get("formula")
        name = f"{agent}-{key}.zip"
    if not key or env_id not in ("MolGym/SingleBag-v0", _STOCHASTIC_ENV):
        raise ValueError(f"only single-bag formula runs and stochastic-bag runs with a template ship, got "
                         f"{first.task}")

    ranked = sorted(runs, key=_rank_key)
    chosen = ranked[(len(ranked) - 1) // 2]
    checkpoint_dir = Path(checkpoint_dir)
    with atomic_path(checkpoint_dir / name) as tmp:
        shutil.copyfile(chosen.path / "model.zip", tmp)
    cfg, summary = chosen.config, chosen.summary
    flags = {"--potential": cfg["potential"], "--reference": cfg.get("reference") or "none", "--agent": agent,
             "--steps": cfg["steps"], "--n-envs": cfg["n_envs"], "--eval-every": cfg["eval_every"],
             "--eval-episodes": cfg["eval_episodes"], "--checkpoint-every": cfg["checkpoint_every"],
             "--final-molecules": cfg["final_molecules"], "--seed": cfg["seed"], **_ppo_flags(cfg)}
    task_flags = (f"--env {env_id} --formula none --env-kwargs '{json.dumps(cfg.get('env_kwargs', {}))}'"
                  if stochastic else f"--formula {key}")
    entry = {
        key_name: key, "file": name, "sha256": sha256_of(checkpoint_dir / name), "agent": agent,
        "algorithm": "PPO", "env_id": env_id, "env_kwargs": cfg.get("env_kwargs", {}),
        "potential": cfg["potential"], "reference": cfg.get("reference"),
        "steps": summary["steps"], "seed": cfg["seed"], "n_envs": cfg["n_envs"],
        "reward_rules": summary.get("reward_rules"), "seeds_trained": len(runs),
        "chosen": ("median seed by greedy, then sampled, validity on the held-out bags" if stochastic else
                   "median seed by final greedy fraction of the best-known return (under the reference, if any)"),
        "final_greedy": summary.get("final_greedy"),
        **({"held_out": summary.get("held_out"),
            "seeds_held_out_greedy_validity": {str(r.config["seed"]): _rank_key(r)[0] for r in runs}}
           if stochastic else
           {"seeds_final_greedy_fraction": {str(r.config["seed"]): _rank_key(r)[0] for r in runs}}),
        "wall_s": summary.get("wall_s"),
        **({"note": note} if note else {}),
        "command": f"molgym train {task_flags} " + " ".join(f"{k} {v}" for k, v in flags.items())
        + (f" --model-kwargs '{json.dumps(cfg['model_kwargs'])}'" if cfg.get("model_kwargs") else "") + " --out DIR",
    }
    # the model file the run's rewards came from, as the run recorded it when it started (runs from before
    # 2026-12-03 did not record it: None, as a later default would otherwise be named)
    entry["potential_sha256"] = summary.get("potential_sha256")
    index_path = checkpoint_dir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {
        "format": 1, "description": "Trained agent checkpoints shipped with molgym (see molgym/agents/shipped.py)",
        "checkpoints": []}
    section = "stochastic" if stochastic else "checkpoints"
    index[section] = [e for e in index.get(section, []) if e[key_name] != key] + [entry]
    write_json(index_path, index)
    _index.cache_clear()
    return entry
