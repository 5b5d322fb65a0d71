"""Register molgym's Gymnasium environments (``MolGym/...-v0``) on ``import molgym``.

Entry points are strings (``"molgym.envs.single_bag:SingleBagEnv"``), so registering imports neither the
environments nor torch: Gymnasium imports the module when an environment is made. Registering twice is a no-op,
so re-importing or reloading molgym never warns about overriding an id.

``import molgym`` calls :func:`register_on_import`: if Gymnasium is already imported the ids are registered at
once; otherwise a small import hook registers them the moment ``gymnasium.envs.registration`` is first imported
(``import gymnasium`` does that). Either way ``gymnasium.make("MolGym/SingleBag-v0")`` works after
``import molgym``, and ``import molgym`` itself does not pay for importing Gymnasium and NumPy (~0.5 s).
"""

from __future__ import annotations

import importlib.abc
import sys

__all__ = ["ENV_IDS", "register_envs", "register_on_import"]

_REGISTRY_MODULE = "gymnasium.envs.registration"

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


class _RegisterWhenGymnasiumLoads(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of ``gymnasium.envs.registration`` to register molgym's ids right
    after that module has run, then removes itself from ``sys.meta_path``."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _REGISTRY_MODULE:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module
        hook = self

        def exec_module(module):
            original(module)
            if hook in sys.meta_path:
                sys.meta_path.remove(hook)
            register_envs()

        spec.loader.exec_module = exec_module  # this loader instance serves only this spec
        return spec


def register_on_import() -> None:
    """Register now if Gymnasium's registry is loaded, else as soon as it is (see the module docstring)."""
    if _REGISTRY_MODULE in sys.modules:
        register_envs()
    elif not any(isinstance(f, _RegisterWhenGymnasiumLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenGymnasiumLoads())
