"""``molgym train``: train a covariant or internal actor-critic agent with Stable-Baselines3 PPO.

    molgym train --agent covariant --env MolGym/SingleBag-v0 --formula CH4O --potential xtb \\
        --steps 20000 --n-envs 4 --seed 0 --out runs/ch4o-covariant

Writes config.json, progress.csv (and TensorBoard events if tensorboard is installed), eval.csv, checkpoints/,
best.json with the best periodic evaluation's policy, model.zip, molecules.xyz and summary.json under ``--out``
(see :mod:`molgym.agents.common.training`).
``--resume`` continues the run in ``--out`` from its latest checkpoint up to ``--steps`` in total.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from molgym.agents.common.train_config import LR_SCHEDULES

AGENT_CHOICES = ("covariant", "internal")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a covariant or internal actor-critic agent with PPO",
        description="Train a covariant (Simm et al. 2021) or internal (Simm et al. 2020) actor-critic agent with "
        "Stable-Baselines3 PPO on a molgym environment; logs, checkpoints, final molecules and a summary go "
        "under --out.",
    )
    task = p.add_argument_group("task")
    task.add_argument("--env", default="MolGym/SingleBag-v0", help="environment id (default MolGym/SingleBag-v0)")
    task.add_argument("--formula", default="CH4O", help="the bag's formula (default CH4O); 'none' to omit it")
    task.add_argument("--potential", default="default",
                      help="reward potential: 'default', 'xtb', 'pm6' or a MACE model file (default 'default')")
    task.add_argument("--reference", default="auto",
                      help="potential whose return each episode's return equals: the potential's per-step rewards "
                      "stay as shaping and the step that ends an episode adds R_ref - R_potential of the final "
                      "canvas, so agents cannot exploit the potential's errors. 'auto' (default): 'xtb' for a "
                      "MACE potential, none for xtb/pm6; 'none': the potential's rewards only; or any potential "
                      "spec")
    task.add_argument("--env-kwargs", default="{}", help="more environment arguments as JSON, e.g. "
                      "'{\"workspace\": 6}'; the keys must be parameters of the environment's constructor")
    run = p.add_argument_group("run")
    run.add_argument("--agent", choices=AGENT_CHOICES, default="covariant", help="which agent (default covariant)")
    run.add_argument("--steps", type=int, default=10_000,
                     help="total environment steps (default 10000). PPO trains in whole rollouts of --n-steps x "
                     "--n-envs steps, so a count that is not a multiple is rounded up to the next whole rollout "
                     "(the rounded count is printed before training starts)")
    run.add_argument("--n-envs", type=int, default=4, help="parallel environments, one batched potential call "
                     "per step (default 4)")
    run.add_argument("--seed", type=int, default=0, help="seed of the environments, weights and sampling")
    run.add_argument("--device", default="cpu", help="torch device for the policy: cpu, cuda, cuda:N, auto")
    run.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    run.add_argument("--out", required=True, help="run directory")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    ppo = p.add_argument_group("PPO")
    ppo.add_argument("--n-steps", type=int, default=64, help="rollout steps per environment per update (default 64)")
    ppo.add_argument("--batch-size", type=int, default=64, help="minibatch size (default 64)")
    ppo.add_argument("--epochs", type=int, default=4, help="epochs per update (default 4)")
    ppo.add_argument("--lr", type=float, default=1e-3,
                     help="learning rate (default 1e-3; 3e-4 before 2026-12-02, see docs/agents.md)")
    ppo.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                     help="learning rate over the run: constant (default) or linear decay to 0 at the last step")
    ppo.add_argument("--gamma", type=float, default=0.99)
    ppo.add_argument("--gae-lambda", type=float, default=0.95)
    ppo.add_argument("--clip-range", type=float, default=0.2)
    ppo.add_argument("--ent-coef", type=float, default=0.0)
    ppo.add_argument("--vf-coef", type=float, default=0.5)
    ppo.add_argument("--max-grad-norm", type=float, default=0.5)
    ppo.add_argument("--target-kl", type=float, default=None,
                     help="stop an update's epochs early once PPO's approximate KL divergence passes 1.5x this "
                     "(SB3's target_kl; default: never)")
    ppo.add_argument("--imitate-relaxed", type=float, default=0.0, metavar="COEF",
                     help="relaxed self-imitation (default 0: off): after each rollout the best complete episode is "
                     "relaxed under the run's return potential and kept as a demonstration; after each update the "
                     "policy takes gradient steps on COEF x the demonstrations' negative log-likelihood (returns "
                     "are unchanged; see docs/agents.md)")
    ppo.add_argument("--polish-steps", type=int, default=0, metavar="N",
                     help="with --imitate-relaxed, on a fixed-bag task: after the last update, N gradient steps "
                     "fitting the final policy to the best relaxed demonstration, so its greedy molecule is that "
                     "molecule without its strain; kept only if its greedy episode ranks higher (default 0: off; "
                     "4000 takes about 5 min on C7; resuming a finished run with it polishes that run; see "
                     "docs/agents.md)")
    ppo.add_argument("--model-kwargs", default="{}", help="agent model options as JSON, e.g. '{\"channels\": 16}'")
    ev = p.add_argument_group("evaluation and outputs")
    ev.add_argument("--eval-every", type=int, default=2_000, help="greedy evaluation every N steps (0: off)")
    ev.add_argument("--eval-episodes", type=int, default=4, help="episodes per evaluation (default 4)")
    ev.add_argument("--checkpoint-every", type=int, default=5_000, help="checkpoint every N steps (0: only at the end)")
    ev.add_argument("--final-molecules", type=int, default=8,
                    help="molecules sampled from the final policy, written with the greedy ones (default 8)")
    p.set_defaults(func=cmd_train)


def _json_arg(name: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {text!r}")
    return value


def config_from_args(args: argparse.Namespace):
    from molgym.agents.common.training import TrainConfig, resolve_reference

    formula = None if str(args.formula).lower() == "none" else args.formula
    return TrainConfig(
        out=str(Path(args.out)), agent=args.agent, env_id=args.env, formula=formula, potential=args.potential,
        reference=resolve_reference(args.reference, args.potential),
        env_kwargs=_json_arg("--env-kwargs", args.env_kwargs), steps=args.steps, n_envs=args.n_envs, seed=args.seed,
        device=args.device, n_steps=args.n_steps, batch_size=args.batch_size, epochs=args.epochs,
        learning_rate=args.lr, lr_schedule=args.lr_schedule, gamma=args.gamma, gae_lambda=args.gae_lambda,
        clip_range=args.clip_range,
        ent_coef=args.ent_coef, vf_coef=args.vf_coef, max_grad_norm=args.max_grad_norm, target_kl=args.target_kl,
        model_kwargs=_json_arg("--model-kwargs", args.model_kwargs), imitation_coef=args.imitate_relaxed,
        polish_steps=args.polish_steps,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes, checkpoint_every=args.checkpoint_every,
        final_molecules=args.final_molecules, threads=args.threads,
    )


def check_env_kwargs(env_id: str, env_kwargs: dict) -> None:
    """Raise ``ValueError`` naming the keys of ``env_kwargs`` that the constructor of ``env_id``'s environment
    class does not take, and listing those it does (an environment that takes ``**kwargs`` accepts any key).
    Imports the environment's module, loads nothing."""
    import inspect

    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    import molgym  # noqa: F401  (registers the MolGym/* ids)

    entry = gym.spec(env_id).entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    params = inspect.signature(creator).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [name for name, p in params.items()
               if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = [key for key in env_kwargs if key not in allowed]
    if unknown:
        raise ValueError(f"--env-kwargs: unknown key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(k) for k in unknown)} for {env_id} ({getattr(creator, '__name__', entry)}); "
                         f"allowed: {', '.join(allowed)}")


def _checkpoint_step(out: Path) -> int | None:
    """The step count saved in ``out/checkpoints/latest.zip`` (SB3 archives keep it in their ``data`` JSON), or
    ``None`` when there is none to read."""
    import zipfile

    try:
        with zipfile.ZipFile(out / "checkpoints" / "latest.zip") as archive:
            return int(json.loads(archive.read("data"))["num_timesteps"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def state_rounded_steps(cfg, resume: bool, log=print) -> int | None:
    """Say (with ``log``) how many steps the run will reach when ``cfg.steps`` is not a whole number of PPO
    rollouts (``n_steps x n_envs`` steps each; SB3 only stops between rollouts) and return that count; ``None``
    when nothing is rounded. A resumed run counts from the step of its latest checkpoint."""
    start = (_checkpoint_step(Path(cfg.out)) if resume else 0) or 0
    rollout = cfg.n_steps * cfg.n_envs
    remaining = cfg.steps - start
    if remaining <= 0 or remaining % rollout == 0:
        return None
    total = start + -(-remaining // rollout) * rollout
    span = (f"the {remaining} steps from the checkpoint at step {start} to --steps {cfg.steps} are" if start
            else f"--steps {cfg.steps} is")
    log(f"note: PPO trains in whole rollouts of n_steps x n_envs = {cfg.n_steps} x {cfg.n_envs} = {rollout} steps; "
        f"{span} not a whole number of rollouts, so this run trains to {total} steps")
    return total


def cmd_train(args: argparse.Namespace) -> int:
    from molgym.agents.common.training import train, validate_config

    cfg = config_from_args(args)
    validate_config(cfg)  # bad settings fail here, before any model or potential loads
    check_env_kwargs(cfg.env_id, cfg.env_kwargs)
    state_rounded_steps(cfg, args.resume)
    summary = train(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"trained {summary['agent']} on {summary['env_id']}{' ' + summary['formula'] if summary['formula'] else ''} for {summary['steps']} steps "
          f"({summary['trained_this_session']} this session, {summary['wall_s']:.0f} s"
          + (f", {summary['env_steps_per_s']:.1f} env steps/s" if summary["env_steps_per_s"] else "") + ")")
    reference = summary.get("reward_rules", {}).get("reference_name")
    print(f"rewards: {summary['potential']} per step" + (f"; episode returns corrected to {reference} at each "
          "episode's end (returns and fractions below are the reference's)" if reference else ""))
    for label, g in (("greedy", summary["final_greedy"]), ("sampled", summary["final_sampled"])):
        if g and g["episodes"]:
            frac = g.get("mean_fraction_of_optimum")
            print(f"final {label} molecules ({g['episodes']}): mean return {g['mean_return']:.3f} eV "
                  f"(best {g['best_return']:.3f}), completed {g['completed']:.0%}, valid {g['validity']:.0%}, "
                  f"stable {g['stability']:.0%}, "
                  "fraction of optimum "
                  + ("n/a (no best-known return for this potential)" if frac is None else f"{frac:.3f}"))
    held = summary.get("held_out")
    if held:
        for bag, h in held["bags"].items():
            g, smp = h["greedy"], h["sampled"]
            print(f"held-out bag {bag}: greedy return {g['mean_return']:.3f} eV, valid {g['validity']:.0%}; "
                  f"{smp['episodes']} sampled: mean return {smp['mean_return']:.3f} eV, valid {smp['validity']:.0%}")
    best = summary.get("best_evaluation")
    if best:
        frac = best.get("mean_fraction_of_optimum")
        print(f"best periodic evaluation: step {best['step']}, mean greedy return {best['mean_return']:.3f} eV"
              + ("" if frac is None else f" ({frac:.3f} of the optimum)") + f", valid {best['validity']:.0%}; "
              f"its policy is {Path(args.out) / best['file']}")
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0
