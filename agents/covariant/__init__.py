"""The covariant actor-critic agent (Simm et al., ICLR 2021) as a Stable-Baselines3 policy.

    from stable_baselines3 import PPO
    from molgym.agents.covariant import CovariantPolicy

    model = PPO(CovariantPolicy, env, policy_kwargs={"seed": 0})

See :mod:`molgym.agents.covariant.model` for the architecture and its symmetry guarantees.
"""

from __future__ import annotations

from molgym.agents.common.policy import PlacementPolicy
from molgym.agents.covariant.model import CovariantModel

__all__ = ["CovariantModel", "CovariantPolicy"]


class CovariantPolicy(PlacementPolicy):
    """SB3 ``ActorCriticPolicy`` with the covariant model; ``policy_kwargs``: ``model_kwargs`` (see
    :class:`CovariantModel`), ``seed`` (sampling generator), ``optimizer_class``, ``optimizer_kwargs``."""

    model_class = CovariantModel
