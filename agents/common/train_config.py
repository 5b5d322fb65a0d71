"""The settings of an agent training run (``TrainConfig``) and their checks, made before any training starts.

``molgym train`` builds a :class:`TrainConfig` from its flags; :func:`validate_config` refuses bad values with an
error naming them (and what is allowed), and :func:`resolve_reference` turns ``--reference auto`` into the
reference potential whose returns every episode's return equals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AGENTS", "IMPLIED_SETTINGS", "LR_SCHEDULES", "TrainConfig", "learning_rate_schedule", "resolve_reference",
           "validate_config"]

#: agent name -> policy class path
AGENTS: dict[str, str] = {
    "covariant": "molgym.agents.covariant:CovariantPolicy",
    "internal": "molgym.agents.internal:InternalPolicy",
}

#: Settings added to ``config.json`` after runs were made, with the value a config written without them implies
#: (the behaviour before the setting existed): a run report compares old and new runs with these filled in.
IMPLIED_SETTINGS: dict[str, Any] = {"lr_schedule": "constant", "imitation_coef": 0.0, "target_kl": None,
                                    "polish_steps": 0}

#: how the PPO learning rate changes over a run: held constant, or decayed linearly to 0 at the run's last step
LR_SCHEDULES: tuple[str, ...] = ("constant", "linear")


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
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    #: PPO stops an update's epochs early once the approximate KL divergence passes 1.5x this (``None``: never)
    target_kl: float | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    #: weight of the relaxed self-imitation term (0: off; :mod:`molgym.agents.common.imitation`)
    imitation_coef: float = 0.0
    #: gradient steps fitting the final policy to the best relaxed demonstration (0: off; needs imitation_coef)
    polish_steps: int = 0
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
        """The settings a resumed run must share with the original (everything but length, bookkeeping and the
        polish, which acts after the last checkpoint and so can be added to a finished run by resuming it)."""
        d = asdict(self)
        for key in ("out", "steps", "device", "eval_every", "eval_episodes", "checkpoint_every", "final_molecules",
                    "threads", "polish_steps"):
            d.pop(key)
        return d


def learning_rate_schedule(cfg: TrainConfig):
    """What SB3's PPO takes as ``learning_rate`` for ``cfg``: the rate itself, or for ``"linear"`` SB3's
    :class:`~stable_baselines3.common.utils.LinearSchedule` from the rate at step 0 to 0 at ``cfg.steps`` (SB3 feeds
    it the fraction of the run still to go, counted from step 0: a run resumed to the same ``--steps`` stays on
    the same line; one resumed to more steps continues on the line that ends at the new total)."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    from stable_baselines3.common.utils import LinearSchedule

    return LinearSchedule(cfg.learning_rate, 0.0, 1.0)


def policy_class(agent: str):
    """The SB3 policy class of ``agent`` (a key of :data:`AGENTS`)."""
    import importlib

    module, name = AGENTS[agent].split(":")
    return getattr(importlib.import_module(module), name)


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
    if not isinstance(cfg.model_kwargs, dict):
        raise ValueError(f"model_kwargs must be a JSON object (a dict), got {cfg.model_kwargs!r}")
    policy_class(cfg.agent).model_class.check_options(cfg.model_kwargs)
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if cfg.ent_coef < 0 or cfg.vf_coef < 0:
        raise ValueError("ent_coef and vf_coef must be non-negative")
    if cfg.target_kl is not None and not (np.isfinite(cfg.target_kl) and cfg.target_kl > 0):
        raise ValueError(f"target_kl must be a positive number (or none), got {cfg.target_kl!r}")
    if not (np.isfinite(cfg.imitation_coef) and cfg.imitation_coef >= 0):
        raise ValueError(f"imitation_coef must be a non-negative number (0 turns it off), got {cfg.imitation_coef!r}")
    steps = cfg.polish_steps
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"polish_steps must be a non-negative integer (0 turns it off), got {cfg.polish_steps!r}")
    if cfg.polish_steps and not cfg.imitation_coef:
        raise ValueError(f"polish_steps={cfg.polish_steps} needs relaxed self-imitation (--imitate-relaxed COEF > 0): "
                         "the polish fits the best demonstration of its buffer")
    if cfg.polish_steps and (cfg.env_id != "MolGym/SingleBag-v0" or cfg.formula is None):
        raise ValueError(f"polish_steps={cfg.polish_steps} fits the final policy to one molecule, so it is for "
                         f"fixed-bag tasks only (MolGym/SingleBag-v0 with a formula); got env {cfg.env_id!r}, "
                         f"formula {cfg.formula!r}")
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
