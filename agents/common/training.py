"""Training runs of the actor-critic agents with Stable-Baselines3 PPO (what ``molgym train`` runs).

A run directory holds::

    config.json            the run's settings (a resumed run must match them)
    progress.csv           SB3's training log (+ TensorBoard events under tb/ when tensorboard is installed)
    eval.csv               periodic greedy evaluations: step, mean return, validity, fraction of the optimum,
                           completed episodes
    checkpoints/           step_<N>.zip and latest.zip (SB3 PPO archives, written atomically)
    best.json, best-<N>.zip
                           the best periodic evaluation so far (its eval.csv row, and ``file``: the policy saved at
                           that step, N). Ranked by greedy validity, then mean return, as SB3's EvalCallback keeps
                           a best model: PPO can lose a good greedy policy in its last updates, so the final model
                           is not always the best one the run reached
    model.zip              the final policy (with ``--polish-steps``: the last checkpoint's policy, polished)
    molecules.xyz          final molecules, greedy and sampled (extended XYZ; ``info``: mode, return, completion, validity,
                           fraction of the optimum, why an invalid episode ended)
    summary.json           return, validity and fraction of the optimum at the end, speed figures
    imitation.json         with ``--imitate-relaxed``: the demonstration buffer and its counters
                           (:mod:`molgym.agents.common.imitation`), written with each checkpoint

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
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from molgym.agents.common.episodes import greedy_episodes, held_out_episodes, summarise, summarise_held_out
from molgym.agents.common.progress_log import progress_logger, tensorboard_available
from molgym.agents.common.train_config import (AGENTS, TrainConfig, learning_rate_schedule, policy_class,
                                               resolve_reference, validate_config)

__all__ = ["TrainConfig", "AGENTS", "validate_config", "resolve_reference", "train", "greedy_episodes",
           "save_checkpoint", "evaluation_rank", "read_evals", "checkpoint_steps", "average_checkpoints",
           "best_evaluation", "best_evaluated_checkpoint"]

#: The relaxed self-imitation buffer of a run that uses it, written with each checkpoint.
IMITATION_FILE = "imitation.json"

#: The columns of ``eval.csv`` (and the keys of ``best.json``, with ``step``).
EVAL_COLUMNS = ("step", "mean_return", "best_return", "validity", "mean_fraction_of_optimum", "completed")


def evaluation_rank(row: dict[str, Any]) -> tuple[float, float]:
    """How periodic evaluations are ranked for the best policy (``best.json``): greedy validity first, then mean
    return (a missing or NaN figure ranks lowest). A later evaluation replaces the best only when it ranks strictly
    higher."""
    def value(key: str) -> float:
        v = row.get(key)
        return -float("inf") if v is None or not np.isfinite(float(v)) else float(v)

    return value("validity"), value("mean_return")


def read_evals(out: str | Path) -> list[dict[str, Any]]:
    """The rows of the run's ``eval.csv`` (empty without one): ``step`` an int, the other columns floats or
    ``None`` where empty."""
    path = Path(out) / "eval.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = [{k: None if v in ("", "None", None) else float(v) for k, v in row.items()}
                for row in csv.DictReader(fh)]
    for row in rows:
        row["step"] = int(row["step"])
    return rows


def checkpoint_steps(out: str | Path) -> list[int]:
    """The steps of the run's saved checkpoints (``checkpoints/step_<N>.zip``), in order."""
    return sorted(int(p.stem.removeprefix("step_")) for p in (Path(out) / "checkpoints").glob("step_*.zip")
                  if p.stem.removeprefix("step_").isdigit())


def average_checkpoints(out: str | Path, last: int) -> Path:
    """``<out>/mean-<last>.zip``: the run's latest checkpoint with every floating-point weight of its policy replaced
    by the mean over the run's ``last`` latest checkpoints (``checkpoints/step_<N>.zip``, the final one included).

    Why: over a run's last checkpoints a C7 agent's greedy molecule keeps its bond graph while its geometry jitters
    from one PPO update to the next (docs/agents.md, "Averaged weights"); the mean of those weights sits nearer the
    middle of that jitter. Written atomically, and only when missing or older than the newest checkpoint averaged.

    Raises:
        ValueError: ``last`` is not a positive integer, or the run has fewer checkpoints than ``last``.
    """
    import torch
    from stable_baselines3 import PPO

    out = Path(out)
    if not isinstance(last, (int, np.integer)) or isinstance(last, bool) or last < 1:
        raise ValueError(f"the number of checkpoints to average must be a positive integer, got {last!r}")
    steps = checkpoint_steps(out)
    if len(steps) < last:
        raise ValueError(f"{out} has {len(steps)} checkpoints ({', '.join(map(str, steps)) or 'none'}); "
                         f"cannot average the last {last}")
    sources = [out / "checkpoints" / f"step_{s}.zip" for s in steps[-last:]]
    target = out / f"mean-{last}.zip"
    if target.is_file() and target.stat().st_mtime_ns >= max(p.stat().st_mtime_ns for p in sources):
        return target
    models = [PPO.load(str(p), device="cpu") for p in sources]
    states = [m.policy.state_dict() for m in models]
    mean = {k: (torch.stack([st[k].double() for st in states]).mean(0).to(v.dtype) if v.is_floating_point() else v)
            for k, v in states[-1].items()}
    models[-1].policy.load_state_dict(mean)
    _save_model(models[-1], target)
    return target


def best_evaluation(out: str | Path) -> dict[str, Any] | None:
    """The row of the best periodic evaluation of the run in ``out`` (``best.json``), or ``None`` before one."""
    path = Path(out) / "best.json"
    return json.loads(path.read_text()) if path.is_file() else None


def best_evaluated_checkpoint(out: str | Path) -> tuple[Path, dict[str, Any]]:
    """The policy file of the best periodic evaluation of a finished run, and that evaluation's row.

    Runs made since 2026-12-07 keep it (``best.json`` names it); for earlier runs the best row of ``eval.csv``
    among the steps that have a checkpoint (``checkpoints/step_<N>.zip``, written after that step's evaluation) is
    used.

    Raises:
        FileNotFoundError: the run has neither a best policy file nor an evaluated step with a checkpoint.
    """
    out = Path(out)
    best = best_evaluation(out)
    if best is not None and (out / best["file"]).is_file():
        return out / best["file"], best
    saved = set(checkpoint_steps(out))
    rows = [row for row in read_evals(out) if row["step"] in saved]
    if not rows:
        raise FileNotFoundError(f"{out} has no best.json and no periodic evaluation with a checkpoint of its step "
                                "(run with --eval-every and --checkpoint-every at common multiples)")
    row = max(rows, key=evaluation_rank)  # max keeps the first of equals, as training does
    return out / "checkpoints" / f"step_{row['step']}.zip", row


def _make_env(cfg: TrainConfig):
    import gymnasium as gym

    return gym.make(cfg.env_id, **cfg.env_arguments())


def _reward_rules(env: Any) -> dict[str, Any]:
    """The environment's reward settings, so that a summary says which rules its returns were earned under (the
    ``min_reward`` floor arrived after the first learning runs)."""
    names = ("invalid_reward", "min_reward", "uncertainty_penalty", "uncertainty_threshold", "reference_name")
    return {name: getattr(env, name, None) for name in names}


def _model_file_sha256(env: Any) -> str | None:
    """sha256 of the model file behind the environment's reward potential (None for potentials without one, such
    as xTB), read when training starts: the shipped default's file is replaced when a new default ships."""
    from molgym.potentials.registry import sha256_of

    path = getattr(getattr(env, "potential", None), "path", None)
    return sha256_of(path) if path else None


def _callbacks(cfg: TrainConfig, out: Path, eval_env, progress: bool, imitation=None):
    from stable_baselines3.common.callbacks import BaseCallback

    class Run(BaseCallback):
        """Progress bar, periodic greedy evaluation (eval.csv), checkpoints (atomic) and, when ``imitation`` is
        given (:class:`~molgym.agents.common.imitation.RelaxedImitation`), its demonstrations and updates."""

        def __init__(self):
            super().__init__()
            self.bar = None
            self.next_eval = None
            self.next_ckpt = None
            self.train_returns: list[float] = []
            self.best = best_evaluation(out)  # a resumed run keeps its best so far

        def _on_training_start(self) -> None:
            n = self.model.num_timesteps
            self.next_eval = (n // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
            self.next_ckpt = (n // cfg.checkpoint_every + 1) * cfg.checkpoint_every if cfg.checkpoint_every else None
            if progress:
                from tqdm import tqdm

                self.bar = tqdm(total=cfg.steps, initial=n, unit="step", dynamic_ncols=True, desc=cfg.agent, mininterval=1.0)

        def _on_rollout_start(self) -> None:
            if imitation is not None:  # after the previous rollout's PPO update (nothing before the first)
                nll = imitation.update(self.model.policy)
                if nll is not None:
                    self.logger.record("imitation/nll", nll)

        def _on_rollout_end(self) -> None:
            if imitation is not None:
                imitation.end_rollout()
                self.logger.record("imitation/buffer", len(imitation.buffer))

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode_return" in info:
                    self.train_returns.append(float(info["episode_return"]))
                    if imitation is not None and "terminal_observation" in info:
                        imitation.offer(info["terminal_observation"], info)
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
                if imitation is not None:
                    imitation.save(out / IMITATION_FILE)
                self.next_ckpt += cfg.checkpoint_every
            return True

        def evaluate(self, n: int) -> None:
            records = greedy_episodes(self.model.policy, eval_env, cfg.eval_episodes, seed=cfg.seed + 10_000)
            s = summarise(records)
            for key in ("mean_return", "validity", "mean_fraction_of_optimum"):
                if s[key] is not None:
                    self.logger.record(f"eval/{key}", s[key])
            row = {"step": n, **{key: s[key] for key in EVAL_COLUMNS[1:]}}
            path = out / "eval.csv"
            new = not path.exists()
            with open(path, "a", newline="") as fh:
                w = csv.writer(fh)
                if new:
                    w.writerow(EVAL_COLUMNS)
                w.writerow([row[key] for key in EVAL_COLUMNS])
            if self.best is None or evaluation_rank(row) > evaluation_rank(self.best):
                self.best = save_best(self.model, out, row)

        def _on_training_end(self) -> None:
            if self.bar is not None:
                self.bar.close()

    return Run()


def _imitation(cfg: TrainConfig, out: Path, env, model, resume: bool):
    """The run's :class:`~molgym.agents.common.imitation.RelaxedImitation` (``None`` when off), relaxing under
    the environment's return potential; a resumed run reloads its buffer."""
    if not cfg.imitation_coef:
        return None
    from molgym.agents.common.imitation import RelaxedImitation

    imitation = RelaxedImitation(cfg.imitation_coef, env.return_potential, env.elements,
                                 model.observation_space["mask"].n, max_grad_norm=cfg.max_grad_norm,
                                 seed=cfg.seed + model.num_timesteps)
    if resume:
        imitation.load(out / IMITATION_FILE)
    return imitation


def _polish(model, imitation, eval_env, cfg: TrainConfig, log) -> dict[str, Any]:
    """Polish the final policy (:meth:`~molgym.agents.common.imitation.RelaxedImitation.polish`), scoring it by
    one greedy episode in the run's environment (:func:`evaluation_rank`: validity, then the environment's own
    return) before and during the polish, and keeping the best-scored policy: the unpolished PPO policy unless a
    polished one ranks strictly higher. The polish fits the relaxed molecule, but greedy decoding can still leave
    it (measured on C7H10O2), and a run must not end worse than it trained. Returns the polish's record with the
    greedy figures at each scored step and ``kept`` (whether a polished policy was kept)."""
    seed = cfg.seed + 20_000
    figures: list[dict[str, Any]] = []  # one per score() call, in the order of record["scores"]

    def score() -> tuple[float, float]:
        s = summarise(greedy_episodes(model.policy, eval_env, 1, seed=seed))
        figures.append({key: s[key] for key in ("mean_return", "validity", "mean_fraction_of_optimum")})
        return evaluation_rank(s)

    record = imitation.polish(model.policy, cfg.polish_steps, log=log, score=score)
    if not record["steps"]:
        return {**record, "kept": False}
    record["scores"] = [{"step": step, **f} for (step, _), f in zip(record["scores"], figures)]
    kept = record["chosen_step"] > 0
    if log is not None:
        before = record["scores"][0]
        chosen = next(r for r in record["scores"] if r["step"] == record["chosen_step"])
        log(f"polish: greedy return {before['mean_return']:.3f} (valid {before['validity']:g}) before, "
            f"{chosen['mean_return']:.3f} (valid {chosen['validity']:g}) kept at polish step {record['chosen_step']}")
    return {**record, "kept": kept}


def save_checkpoint(model, out: Path, step: int) -> Path:
    """Write ``checkpoints/step_<step>.zip`` and ``checkpoints/latest.zip`` atomically."""
    from molgym.io import atomic_path

    ckpt_dir = out / "checkpoints"
    target = ckpt_dir / f"step_{step}.zip"
    _save_model(model, target)
    with atomic_path(ckpt_dir / "latest.zip") as tmp:
        shutil.copyfile(target, tmp)
    return target


def save_best(model, out: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Keep ``model`` as the run's best policy (:func:`_record_best`); returns the new ``best.json``."""
    return _record_best(out, row, lambda path: _save_model(model, path))


def _adopt_best_checkpoint(out: Path) -> None:
    """A run made before ``best.json`` existed, when resumed, starts its best from its best evaluated step that has
    a checkpoint (:func:`best_evaluated_checkpoint`), copied to ``best-<N>.zip``; nothing when it has a
    ``best.json`` or no such step."""
    from molgym.io import atomic_path

    if best_evaluation(out) is not None:
        return
    try:
        source, row = best_evaluated_checkpoint(out)
    except FileNotFoundError:
        return

    def copy(path: Path) -> None:
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)

    _record_best(out, row, copy)


def _record_best(out: Path, row: dict[str, Any], write_policy) -> dict[str, Any]:
    """Make the policy that ``write_policy(path)`` writes (atomically) the run's best: write ``best-<step>.zip``,
    then ``best.json`` (``row`` and the file's name), then remove the previous best file, so a run stopped at any
    point has a ``best.json`` that names a policy file holding the policy it describes. Returns the new
    ``best.json``."""
    from molgym.io import write_json

    previous = best_evaluation(out)
    best = {**row, "file": f"best-{row['step']}.zip"}
    write_policy(out / best["file"])
    write_json(out / "best.json", best)
    if previous is not None and previous.get("file") != best["file"]:
        (out / previous["file"]).unlink(missing_ok=True)
    return best


def _save_model(model, path: Path) -> None:
    """``model.save`` to ``path`` atomically (SB3 appends ``.zip`` to a name without it, hence the rename)."""
    from molgym.io import atomic_path

    with atomic_path(path) as tmp:
        model.save(str(tmp.with_suffix(".zip")))
        os.replace(tmp.with_suffix(".zip"), tmp)


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
    potential_sha256 = _model_file_sha256(eval_env.unwrapped)  # now: a model file replaced later must not count
    out.mkdir(parents=True, exist_ok=True)
    write_json(config_path, asdict(cfg))

    policy = policy_class(cfg.agent)
    if resume:
        model = PPO.load(str(latest), env=venv, device=cfg.device)
        model.policy.generator.manual_seed(cfg.seed + model.num_timesteps)  # a fresh stream after resuming
        log(f"resuming {out} at step {model.num_timesteps}")
        _adopt_best_checkpoint(out)
    else:
        model = PPO(
            policy, venv, n_steps=cfg.n_steps, batch_size=cfg.batch_size, n_epochs=cfg.epochs,
            learning_rate=learning_rate_schedule(cfg), gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
            clip_range=cfg.clip_range, target_kl=cfg.target_kl,
            ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
            device=cfg.device, verbose=0,
            policy_kwargs={"seed": cfg.seed, "model_kwargs": policy.model_class.resolved_options(cfg.model_kwargs)},
        )
    formats = ["csv"] + (["tensorboard"] if tensorboard_available() else [])
    model.set_logger(progress_logger(out, formats, resume_step=model.num_timesteps if resume else None))
    if "tensorboard" in formats:
        log(f"TensorBoard logs in {out} (tensorboard --logdir {out})")

    imitation = _imitation(cfg, out, eval_env.unwrapped, model, resume)
    start_step = model.num_timesteps
    remaining = cfg.steps - start_step
    callback = _callbacks(cfg, out, eval_env, progress, imitation)
    t0 = time.perf_counter()
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callback, reset_num_timesteps=False,
                    progress_bar=False)
    wall = time.perf_counter() - t0
    trained = model.num_timesteps - start_step
    save_checkpoint(model, out, model.num_timesteps)
    if imitation is not None:
        imitation.save(out / IMITATION_FILE)
    polish = None
    if cfg.polish_steps:  # after the checkpoint: training resumes from the PPO policy, never the polished one
        polish = _polish(model, imitation, eval_env, cfg, log if progress else None)
        _save_model(model, out / "model.zip")
    else:
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
        "final_greedy": summarise(greedy),
        "final_sampled": summarise(sampled) if sampled else None,
        "held_out": summarise_held_out(held_out),
        "best_evaluation": best_evaluation(out),
        "reward_rules": _reward_rules(eval_env.unwrapped),
        "potential_sha256": potential_sha256,
        "tensorboard": "tensorboard" in formats,
        **({"imitation": imitation.summary()} if imitation is not None else {}),
        **({"polish": polish} if polish is not None else {}),
    }
    write_json(out / "summary.json", summary)
    venv.close()
    eval_env.close()
    return summary
