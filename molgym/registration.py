"""Register molgym's Gymnasium environments (``MolGym/...-v0``) on ``import molgym``.

Entry points are strings (``"molgym.envs.single_bag:SingleBagEnv"``), so registering imports neither the
environments nor torch: Gymnasium imports the module when an environment is made. Registering twice is a no-op,
so re-importing or reloading molgym never warns about overriding an id.
"""

from __future__ import annotations

__all__ = ["ENV_IDS", "register_envs"]

#: id -> (entry point, vector entry point)
ENV_IDS: dict[str, tuple[str, str]] = {
    "MolGym/SingleBag-v0": ("molgym.envs.single_bag:SingleBagEnv", "molgym.envs.vector:SingleBagVectorEnv"),
    "MolGym/MultiBag-v0": ("molgym.envs.multi_bag:MultiBagEnv", "molgym.envs.vector:MultiBagVectorEnv"),
    "MolGym/StochasticBag-v0": (
        "molgym.envs.stochastic_bag:StochasticBagEnv",
        "molgym.envs.vector:StochasticBagVectorEnv",
    ),
    "MolGym/Solvation-v0": ("molgym.envs.solvation:SolvationEnv", "molgym.envs.vector:SolvationVectorEnv"),
}


def register_envs() -> list[str]:
    """Register every molgym environment id not registered yet; return the ids registered by this call.

    Does nothing (and returns ``[]``) when Gymnasium is not installed, so the rest of molgym still imports.
    """
    try:
        from gymnasium.envs.registration import register, registry
    except ImportError:  # pragma: no cover - gymnasium is a dependency, but the core must not need it
        return []
    added = []
    for env_id, (entry_point, vector_entry_point) in ENV_IDS.items():
        if env_id in registry:
            continue
        register(id=env_id, entry_point=entry_point, vector_entry_point=vector_entry_point)
        added.append(env_id)
    return added
