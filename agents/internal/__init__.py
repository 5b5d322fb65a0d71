"""The internal-coordinate actor-critic agent (Simm et al., ICML 2020) as a Stable-Baselines3 policy.

    from stable_baselines3 import PPO
    from molgym.agents.internal import InternalPolicy

    model = PPO(InternalPolicy, env, policy_kwargs={"seed": 0})

See :mod:`molgym.agents.internal.model` for the architecture, the local frames and the symmetry guarantees.
"""

from __future__ import annotations

from molgym.agents.common.policy import PlacementPolicy
from molgym.agents.internal.model import InternalModel

__all__ = ["InternalModel", "InternalPolicy"]


class InternalPolicy(PlacementPolicy):
    """SB3 ``ActorCriticPolicy`` with the internal-coordinate model; ``policy_kwargs``: ``model_kwargs`` (see
    :class:`InternalModel`), ``seed``, ``optimizer_class``, ``optimizer_kwargs``."""

    model_class = InternalModel
