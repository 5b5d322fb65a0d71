"""Register molgym's Gymnasium environments (``MolGym/...-v0``) on ``import molgym``.

Entry points are strings (``"molgym.envs.single_bag:SingleBagEnv"``), so registering imports neither the
environments nor torch: Gymnasium imports the module when an environment is made. Every id's vector form is
molgym's :class:`~molgym.envs.vector.MolGymVectorEnv` over the same class (:func:`make_vector_env`), so
``gymnasium.make_vec`` evaluates all copies in one potential call per step. Registering twice is a no-op, so
re-importing or reloading molgym never warns about overriding an id. :func:`register_task` does the same for a
task defined outside molgym: one line.

``import molgym`` calls :func:`register_on_import`: if Gymnasium is already imported the ids are registered at
once; otherwise a small import hook registers them the moment ``gymnasium.envs.registration`` is first imported
(``import gymnasium`` does that). Either way ``gymnasium.make("MolGym/SingleBag-v0")`` works after
``import molgym``, and ``import molgym`` itself does not pay for importing Gymnasium and NumPy (~0.5 s).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from functools import partial
from typing import Any

__all__ = ["ENV_IDS", "register_envs", "register_on_import", "register_task", "make_vector_env"]

_REGISTRY_MODULE = "gymnasium.envs.registration"

#: id -> entry point (``"module:Class"`` of the :class:`~molgym.envs.base.MolecularEnv` subclass)
ENV_IDS: dict[str, str] = {
    "MolGym/SingleBag-v0": "molgym.envs.single_bag:SingleBagEnv",
    "MolGym/MultiBag-v0": "molgym.envs.multi_bag:MultiBagEnv",
    "MolGym/StochasticBag-v0": "molgym.envs.stochastic_bag:StochasticBagEnv",
    "MolGym/Solvation-v0": "molgym.envs.solvation:SolvationEnv",
}


def _load(entry_point: str | type) -> type:
    if not isinstance(entry_point, str):
        return entry_point
    module, _, name = entry_point.partition(":")
    return getattr(importlib.import_module(module), name)


def make_vector_env(entry_point: str | type, num_envs: int = 1, **kwargs: Any):
    """``num_envs`` copies of the environment ``entry_point`` (a class or ``"module:Class"``) as molgym's
    :class:`~molgym.envs.vector.MolGymVectorEnv`: the vector entry point of every id registered here, imported
    only when ``gymnasium.make_vec`` is called."""
    vector = importlib.import_module("molgym.envs.vector").MolGymVectorEnv
    return vector(num_envs=num_envs, env_class=_load(entry_point), **kwargs)


def register_task(env_id: str, entry_point: str | type, **kwargs: Any) -> None:
    """Register a molgym task as a Gymnasium id: ``gymnasium.make(env_id)`` builds ``entry_point`` (a
    :class:`~molgym.envs.base.MolecularEnv` subclass or its ``"module:Class"``) and ``gymnasium.make_vec(env_id,
    num_envs=n)`` molgym's vector env over it (one batched potential call per step; Gymnasium's own vector envs
    would make one call per copy). ``kwargs`` go to ``gymnasium.register`` (``kwargs=`` defaults, ...)."""
    from gymnasium.envs.registration import register

    register(id=env_id, entry_point=entry_point, vector_entry_point=partial(make_vector_env, entry_point), **kwargs)


def register_envs() -> list[str]:
    """Register every molgym environment id not registered yet; return the ids registered by this call.

    Does nothing (and returns ``[]``) when Gymnasium is not installed, so the rest of molgym still imports.
    """
    try:
        from gymnasium.envs.registration import registry
    except ImportError:  # pragma: no cover - gymnasium is a dependency, but the core must not need it
        return []
    added = []
    for env_id, entry_point in ENV_IDS.items():
        if env_id in registry:
            continue
        register_task(env_id, entry_point)
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
