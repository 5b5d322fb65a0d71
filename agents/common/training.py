"""Training runs of the actor-critic agents with Stable-Baselines3 PPO (what ``molgym train`` runs).

A run directory holds::

    config.json            the run's settings (a resumed run must match them)
    progress.csv           SB3's training log (+ TensorBoard events under tb/ when tensorboard is installed)
    eval.csv               periodic greedy evaluations: step, mean return, validity, fraction of the optimum,
                           completed episodes
    checkpoints/           step_<N>.zip and latest.zip (SB3 PPO archives, written atomically)
    model.zip              the final policy
    molecules.xyz          final molecules, greedy and sampled (extended XYZ; ``info``: mode, return, completion, validity,
                           fraction of the optimum, why an invalid episode ended)
    summary.json           return, validity and fraction of the optimum at the end, speed figures

Completion of an episode: it placed every atom of the bag without an invalid placement (the environment's rules).
Validity of a completed molecule: the benchmark's, one connected molecule that RDKit sanitises after bond
perception (:func:`molgym.metrics.chemistry.perceive`); a completed episode is not necessarily a valid molecule.
Stability of a completed molecule: every atom's perceived bond-order sum is an allowed valence
(:func:`molgym.metrics.bonds.is_stable`).
Fraction of the optimum: episode return / best-known return of the formula under the same potential (``None``
when the environment knows no best-known return for it).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TrainConfig", "AGENTS", "validate_config", "train", "greedy_episodes", "save_checkpoint"]

#: agent name -> policy class path
AGENTS: dict[str, str] = {
    "covariant": "molgym.agents.covariant:CovariantPolicy",
    "internal": "molgym.agents.internal:InternalPolicy",
}


@dataclass
class TrainConfig:
    """Settings of a training run (see ``molgym train --help`` for each)."""

    out: str
    agent: str = "covariant"
    env_id: str = "MolGym/SingleBag-v0"
    formula: str | None = "CH4O"
    potential: str = "default"
    #: potential whose build return every episode's return equals (``None``: the potential's own rewards);
    #: ``molgym train`` resolves its ``--reference auto`` default before it gets here (see ``resolve_reference``)
    reference: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 10_000
    n_envs: int = 4
    seed: int = 0
    device: str = "cpu"
    n_steps: int = 64
    batch_size: int = 64
    epochs: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 2_000
    eval_episodes: int = 4
    checkpoint_every: int = 5_000
    final_molecules: int = 8
    threads: int = 1

    def env_arguments(self) -> dict[str, Any]:
        kwargs = dict(self.env_kwargs)
        if self.formula is not None:
            kwargs["formula"] = self.formula
        kwargs["potential"] = self.potential
        if self.reference is not None:
            kwargs["reference"] = self.reference
        if self.device not in ("cpu", "auto"):
            kwargs.setdefault("device", self.device)
        return kwargs

    def matters_for_resume(self) -> dict[str, Any]:
        """The settings a resumed run must share with the original (everything but length and bookkeeping)."""
        d = asdict(self)
        for key in ("out", "steps", "device", "eval_every", "eval_episodes", "checkpoint_every", "final_molecules",
                    "threads"):
            d.pop(key)
        return d


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _quantum_potentials() -> tuple[str, ...]:
    """The named specs that are quantum-chemical methods (all but the shipped MACE model): their rewards are
    already reference rewards."""
    from molgym.potentials.registry import NAMED_SPECS

    return tuple(spec for spec in NAMED_SPECS if spec != "default")


def resolve_reference(reference: str | None, potential: str) -> str | None:
    """The reference a run uses: ``"auto"`` is GFN2-xTB for a learned (MACE) potential and none for a
    quantum-chemical one; ``"none"``/``None`` is none; anything else is a potential spec, kept as given."""
    if reference is None or str(reference).strip().lower() == "none":
        return None
    if str(reference).strip().lower() == "auto":
        return None if str(potential).strip().lower() in _quantum_potentials() else "xtb"
    return str(reference)


def validate_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the bad setting (cheap checks only; nothing is loaded)."""
    if cfg.agent not in AGENTS:
        raise ValueError(f"unknown agent {cfg.agent!r}; choose one of {', '.join(AGENTS)}")
    for name in ("steps", "n_envs", "n_steps", "batch_size", "epochs", "eval_episodes", "threads"):
        _positive_int(name, getattr(cfg, name))
    for name in ("eval_every", "checkpoint_every", "final_molecules"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer (0 turns it off), got {value!r}")
    if cfg.batch_size > cfg.n_steps * cfg.n_envs:
        raise ValueError(
            f"batch_size={cfg.batch_size} exceeds the rollout size n_steps x n_envs = {cfg.n_steps * cfg.n_envs}"
        )
    for name, lo, hi in (("gamma", 0.0, 1.0), ("gae_lambda", 0.0, 1.0)):
        value = getattr(cfg, name)
        if not lo <= value <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    for name in ("learning_rate", "clip_range", "max_grad_norm"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
    if cfg.ent_coef < 0 or cfg.vf_coef < 0:
        raise ValueError("ent_coef and vf_coef must be non-negative")
    import gymnasium as gym

    import molgym  # noqa: F401  (registers the MolGym/* ids)

    if "reference" in cfg.env_kwargs:
        raise ValueError("give the reference with --reference (TrainConfig.reference), not in --env-kwargs")
    if cfg.reference is not None:
        _check_reference_spec(cfg.reference)
    if cfg.env_id not in gym.registry:
        ids = sorted(k for k in gym.registry if k.startswith("MolGym/"))
        raise ValueError(f"unknown environment {cfg.env_id!r}; molgym's environments: {', '.join(ids)}")
    if cfg.formula is not None:
        from molgym.chem import parse_formula

        parse_formula(cfg.formula)
    device = str(cfg.device)
    if device not in ("cpu", "auto") and not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but torch sees no CUDA device; use --device cpu")


def _check_reference_spec(spec: str) -> None:
    """A reference must be a named potential or an existing MACE model file (checked before anything loads)."""
    from molgym.potentials.registry import NAMED_SPECS

    if str(spec).strip().lower() not in NAMED_SPECS and not Path(spec).expanduser().is_file():
        raise ValueError(
            f"unknown reference {spec!r}: expected 'auto', 'none', one of {', '.join(NAMED_SPECS)} or the path of "
            "a MACE model file"
        )


def _policy_class(agent: str):
    import importlib

    module, name = AGENTS[agent].split(":")
    return getattr(importlib.import_module(module), name)


def _make_env(cfg: TrainConfig):
    import gymnasium as gym

    return gym.make(cfg.env_id, **cfg.env_arguments())


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
        valid = complete and _is_valid(atoms)
        best = last.get("best_known_return", best)
        frac = ret / best if (best is not None and np.isfinite(best) and best != 0) else None
        stable = bool(complete and _is_stable(atoms))
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


def _summarise_held_out(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per held-out bag and over all of them: the greedy and sampled summaries (``None`` without held-out bags)."""
    if not records:
        return None
    by_bag: dict[str, Any] = {}
    for bag in sorted({r["bag"] for r in records}):
        mine = [r for r in records if r["bag"] == bag]
        by_bag[bag] = {"greedy": _summarise([r for r in mine if r["greedy"]]),
                       "sampled": _summarise([r for r in mine if not r["greedy"]])}
    return {"bags": by_bag,
            "greedy": _summarise([r for r in records if r["greedy"]]),
            "sampled": _summarise([r for r in records if not r["greedy"]])}


def _is_valid(atoms) -> bool:
    """One connected molecule that RDKit sanitises after bond perception: the benchmark's validity
    (:func:`molgym.metrics.chemistry.perceive`), so training summaries and benchmark reports agree."""
    from molgym.metrics.chemistry import perceive

    p = perceive(atoms)
    return bool(p.valid and p.connected)


def _is_stable(atoms) -> bool:
    """Every atom's bond-order sum is an allowed valence (EDM-style stability, :mod:`molgym.metrics.bonds`)."""
    from molgym.metrics.bonds import is_stable

    return is_stable(atoms)


def _reward_rules(env: Any) -> dict[str, Any]:
    """The environment's reward settings, so that a summary says which rules its returns were earned under (the
    ``min_reward`` floor arrived after the first learning runs)."""
    names = ("invalid_reward", "min_reward", "uncertainty_penalty", "uncertainty_threshold", "reference_name")
    return {name: getattr(env, name, None) for name in names}


def _summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
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


def _callbacks(cfg: TrainConfig, out: Path, eval_env, progress: bool):
    from stable_baselines3.common.callbacks import BaseCallback

    class Run(BaseCallback):
        """Progress bar, periodic greedy evaluation (eval.csv) and checkpoints (atomic)."""

        def __init__(self):
            super().__init__()
            self.bar = None
            self.next_eval = None
            self.next_ckpt = None
            self.train_returns: list[float] = []

        def _on_training_start(self) -> None:
            n = self.model.num_timesteps
            self.next_eval = (n // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
            self.next_ckpt = (n // cfg.checkpoint_every + 1) * cfg.checkpoint_every if cfg.checkpoint_every else None
            if progress:
                from tqdm import tqdm

                self.bar = tqdm(total=cfg.steps, initial=n, unit="step", dynamic_ncols=True, desc=cfg.agent, mininterval=1.0)

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode_return" in info:
                    self.train_returns.append(float(info["episode_return"]))
            n = self.model.num_timesteps
            if self.bar is not None:
                self.bar.update(n - self.bar.n)
                if self.train_returns:
                    self.bar.set_postfix(ret=f"{np.mean(self.train_returns[-50:]):.2f}")
            if self.next_eval is not None and n >= self.next_eval:
                self.evaluate(n)
                self.next_eval += cfg.eval_every
            if self.next_ckpt is not None and n >= self.next_ckpt:
                save_checkpoint(self.model, out, n)
                self.next_ckpt += cfg.checkpoint_every
            return True

        def evaluate(self, n: int) -> None:
            records = greedy_episodes(self.model.policy, eval_env, cfg.eval_episodes, seed=cfg.seed + 10_000)
            s = _summarise(records)
            for key in ("mean_return", "validity", "mean_fraction_of_optimum"):
                if s[key] is not None:
                    self.logger.record(f"eval/{key}", s[key])
            path = out / "eval.csv"
            new = not path.exists()
            with open(path, "a", newline="") as fh:
                w = csv.writer(fh)
                if new:
                    w.writerow(["step", "mean_return", "best_return", "validity", "mean_fraction_of_optimum",
                                "completed"])
                w.writerow([n, s["mean_return"], s["best_return"], s["validity"], s["mean_fraction_of_optimum"],
                            s["completed"]])

        def _on_training_end(self) -> None:
            if self.bar is not None:
                self.bar.close()

    return Run()


def save_checkpoint(model, out: Path, step: int) -> Path:
    """Write ``checkpoints/step_<step>.zip`` and ``checkpoints/latest.zip`` atomically."""
    from molgym.io import atomic_path

    ckpt_dir = out / "checkpoints"
    target = ckpt_dir / f"step_{step}.zip"
    with atomic_path(target) as tmp:
        model.save(str(tmp.with_suffix(".zip")))
        os.replace(tmp.with_suffix(".zip"), tmp)
    with atomic_path(ckpt_dir / "latest.zip") as tmp:
        shutil.copyfile(target, tmp)
    return target


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _read_progress(path: Path, resume_step: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a ``progress.csv`` that a run resuming at ``resume_step`` keeps: rows cut short (a run
    killed mid-write) and rows logged after that step (updates the resumed run redoes from its checkpoint) go."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as fh:
        table = list(csv.reader(fh))
    if not table:
        return [], []
    header, rows = table[0], [r for r in table[1:] if len(r) == len(table[0])]
    if "time/total_timesteps" in header:
        col = header.index("time/total_timesteps")

        def logged_by_then(row: list[str]) -> bool:
            try:
                return float(row[col]) <= resume_step
            except ValueError:
                return True

        rows = [r for r in rows if logged_by_then(r)]
    return header, rows


def _write_progress(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write ``progress.csv`` atomically, rows padded with empty cells to the header's width."""
    from molgym.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(r + [""] * (len(header) - len(r)) for r in rows)


def _progress_logger(out: Path, formats: list[str], resume_step: int | None = None):
    """The SB3 logger of a run: ``progress.csv`` (and TensorBoard events) under ``out``.

    A fresh run (``resume_step=None``) starts ``progress.csv`` anew. A resumed run continues it: SB3's own CSV
    writer opens the file in write mode and would drop the first session's rows, so the rows up to the resumed
    checkpoint are kept and the new ones appended under the same header; when a session logs a column the file
    lacks, the file is rewritten atomically with the wider header (earlier rows get empty cells).
    """
    from stable_baselines3.common.logger import (
        CSVOutputFormat,
        Logger,
        configure,
        filter_excluded_keys,
        make_output_format,
    )

    if resume_step is None:
        return configure(str(out), formats)
    path = out / "progress.csv"
    header, rows = _read_progress(path, resume_step)
    _write_progress(path, header, rows)

    class AppendingCSV(CSVOutputFormat):
        """SB3's CSV writer, appending to the existing file; new columns widen it atomically."""

        def __init__(self):  # not super().__init__: that truncates the file
            self.keys, self.separator, self.quotechar = list(header), ",", '"'
            self.file = open(path, "a")

        def write(self, key_values, key_excluded, step=0) -> None:
            shown = filter_excluded_keys(key_values, key_excluded, "csv")
            extra = [k for k in shown if k not in self.keys]
            if extra:
                self.file.close()
                _, kept = _read_progress(path, math.inf)
                _write_progress(path, self.keys + extra, kept)
                self.keys += extra
                self.file = open(path, "a")
            super().write(key_values, key_excluded, step)

    outputs = [AppendingCSV() if f == "csv" else make_output_format(f, str(out)) for f in formats]
    return Logger(folder=str(out), output_formats=outputs)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, log=print) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary (also written to ``summary.json``)."""
    validate_config(cfg)
    out = Path(cfg.out)
    latest = out / "checkpoints" / "latest.zip"
    config_path = out / "config.json"
    if resume:
        if not latest.exists() or not config_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint to resume in {out} (looked for {latest})")
        saved = TrainConfig(**json.loads(config_path.read_text()))
        if saved.matters_for_resume() != cfg.matters_for_resume():
            diff = {k: (v, cfg.matters_for_resume()[k]) for k, v in saved.matters_for_resume().items()
                    if cfg.matters_for_resume()[k] != v}
            raise ValueError(f"--resume: settings differ from the run in {out} (saved, given): {diff}")
    elif latest.exists() or (out / "model.zip").exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor

    from molgym.envs.sb3 import make_sb3_vec_env
    from molgym.io import write_json, write_xyz

    torch.set_num_threads(cfg.threads)
    env_kwargs = cfg.env_arguments()
    venv = VecMonitor(make_sb3_vec_env(cfg.env_id, n_envs=cfg.n_envs, seed=cfg.seed, **env_kwargs))  # loads potential
    eval_env = _make_env(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json(config_path, asdict(cfg))

    policy_class = _policy_class(cfg.agent)
    if resume:
        model = PPO.load(str(latest), env=venv, device=cfg.device)
        model.policy.generator.manual_seed(cfg.seed + model.num_timesteps)  # a fresh stream after resuming
        log(f"resuming {out} at step {model.num_timesteps}")
    else:
        model = PPO(
            policy_class, venv, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.epochs,
            learning_rate=cfg.learning_rate, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, clip_range=cfg.clip_range,
            ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
            device=cfg.device, policy_kwargs={"seed": cfg.seed, "model_kwargs": dict(cfg.model_kwargs)}, verbose=0,
        )
    formats = ["csv"] + (["tensorboard"] if _tensorboard_available() else [])
    model.set_logger(_progress_logger(out, formats, resume_step=model.num_timesteps if resume else None))
    if "tensorboard" in formats:
        log(f"TensorBoard logs in {out} (tensorboard --logdir {out})")

    start_step = model.num_timesteps
    remaining = cfg.steps - start_step
    callback = _callbacks(cfg, out, eval_env, progress)
    t0 = time.perf_counter()
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callback, reset_num_timesteps=False,
                    progress_bar=False)
    wall = time.perf_counter() - t0
    trained = model.num_timesteps - start_step
    save_checkpoint(model, out, model.num_timesteps)
    from molgym.io import atomic_path

    with atomic_path(out / "model.zip") as tmp:
        shutil.copyfile(out / "checkpoints" / "latest.zip", tmp)

    # final molecules: greedy episodes (identical on a fixed-bag task) and episodes sampled from the policy
    greedy = greedy_episodes(model.policy, eval_env, cfg.eval_episodes, seed=cfg.seed + 20_000)
    sampled = greedy_episodes(model.policy, eval_env, cfg.final_molecules, seed=cfg.seed + 30_000,
                              deterministic=False) if cfg.final_molecules else []
    for mode, records in (("greedy", greedy), ("sampled", sampled)):
        for r in records:
            r["atoms"].info["mode"] = mode
    held_out = held_out_episodes(model.policy, eval_env, cfg)
    for r in held_out:
        r["atoms"].info["mode"] = "held-out " + ("greedy" if r["greedy"] else "sampled")
    write_xyz(out / "molecules.xyz", [r["atoms"] for r in greedy + sampled + held_out])
    summary = {
        "agent": cfg.agent, "env_id": cfg.env_id, "formula": cfg.formula, "potential": cfg.potential,
        "reference": cfg.reference,
        "seed": cfg.seed, "n_envs": cfg.n_envs, "steps": int(model.num_timesteps), "trained_this_session": trained,
        "wall_s": wall,
        "env_steps_per_s": trained / wall if trained and wall > 0 else None,
        "s_per_10k_steps": wall / trained * 10_000 if trained else None,
        "train_episodes_this_session": len(callback.train_returns),
        "train_mean_return_last_50": float(np.mean(callback.train_returns[-50:])) if callback.train_returns else None,
        "final_greedy": _summarise(greedy),
        "final_sampled": _summarise(sampled) if sampled else None,
        "held_out": _summarise_held_out(held_out),
        "reward_rules": _reward_rules(eval_env.unwrapped),
        "tensorboard": "tensorboard" in formats,
    }
    write_json(out / "summary.json", summary)
    venv.close()
    eval_env.close()
    return summary
