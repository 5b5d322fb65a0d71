"""A native vector environment: one batched potential call per step for all sub-environments.

``gymnasium.make_vec("MolGym/SingleBag-v0", num_envs=64, formula=..., potential=...)`` returns a
:class:`MolGymVectorEnv` (the ids' ``vector_entry_point``). Its ``step`` validates each sub-environment's action,
gathers every structure that needs an energy, evaluates them in ONE ``potential.energies`` call (a single MACE
forward pass) and hands the energies back (the vector-step protocol of :mod:`molgym.envs.base`:
``begin_step`` / ``finish_step``); the per-step rewards are exactly those of the single environments.
With a ``reference`` (``reference="xtb"``), the final canvases of the sub-environments whose episodes end in a
step are evaluated by the reference in one more call, after the batched step (the others are not held up by
anything else).
``gymnasium.make_vec(..., vectorization_mode="sync"|"async")`` also works (one call per sub-environment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from molgym.envs.base import MolecularEnv
from molgym.potentials.batching import evaluate_batch

__all__ = [
    "batched_step",
    "batch_infos",
    "MolGymVectorEnv",
]


def batched_step(envs: Sequence[MolecularEnv], actions: Sequence[Any]) -> list[tuple]:
    """Step every environment with its action, evaluating all needed structures in ONE potential call.

    The driver of the vector-step protocol (:mod:`molgym.envs.base`): ``begin_step`` on every environment, one
    batched evaluation of the structures they return, ``finish_step`` on every environment. All environments must
    share one potential object (and one reference, if any); the reference corrections of the episodes that end are
    computed in one more call for all of them. Returns ``(obs, reward, terminated, truncated, info)`` per
    environment, identical to what ``env.step(action)`` would have returned.
    """
    structures, owners = [], []
    for i, (env, action) in enumerate(zip(envs, actions, strict=True)):
        structure = env.begin_step(action)
        if structure is not None:
            structures.append(structure)
            owners.append(i)
    energies = {}
    if structures:
        committee = envs[0].reports_uncertainty
        energies = dict(zip(owners, evaluate_batch(envs[0].potential, structures, committee)))
    results = [env.finish_step(*energies.get(i, (None, "", None))) for i, env in enumerate(envs)]
    return _settle_endings(envs, results)


def _settle_endings(envs: Sequence[MolecularEnv], results: list[tuple]) -> list[tuple]:
    """Add the reference corrections of the environments whose episodes ended this step, with ONE reference
    call for all their final canvases (environments without a reference, or still running, pass through)."""
    ending = [i for i, env in enumerate(envs) if env.ending_pending]
    if not ending:
        return results
    needed = {i: envs[i].ending_structures() for i in ending}
    flat = [s for i in ending for s in needed[i]]
    evaluated = evaluate_batch(envs[ending[0]].reference, flat) if flat else []
    k = 0
    for i in ending:
        n = len(needed[i])
        results[i] = envs[i].settle_ending(evaluated[k:k + n])
        k += n
    return results


def batch_infos(infos: Sequence[dict[str, Any] | None], num_envs: int) -> dict[str, Any]:
    """Sub-environment infos in Gymnasium's batched layout, built key by key in one pass.

    The layout is that of ``VectorEnv._add_info`` applied env by env: one array per key (its dtype from the first
    sub-environment that has the key; an object array for strings and other objects; ``(num_envs, *shape)`` for
    arrays), a boolean ``_key`` mask of the sub-environments that have it, nested dicts batched the same way and
    ``final_obs`` kept as an object array of observations. ``infos[i]`` may be ``None`` (no info). Unlike Gymnasium,
    a ``None`` value (an unknown best-known return) becomes NaN, so a float column keeps its dtype.
    """
    rows: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        for key in info or ():
            rows.setdefault(key, []).append(i)
    out: dict[str, Any] = {}
    for key, where in rows.items():
        values = [infos[i][key] for i in where]
        values = [np.nan if v is None else v for v in values]
        first = values[0]
        if isinstance(first, dict) and key != "final_obs":  # final_obs: observations stay whole
            nested: list[dict[str, Any] | None] = [None] * num_envs
            for i, v in zip(where, values):
                nested[i] = v
            array: Any = batch_infos(nested, num_envs)
        elif key == "final_obs" or not (
            type(first) in (int, float, bool) or isinstance(first, (np.number, np.ndarray))
        ):
            array = np.full(num_envs, None, dtype=object)
            for i, v in zip(where, values):
                array[i] = v
        else:
            shape, dtype = (first.shape, first.dtype) if isinstance(first, np.ndarray) else ((), type(first))
            array = np.zeros((num_envs, *shape), dtype=dtype)
            array[where] = values
        mask = np.zeros(num_envs, dtype=np.bool_)
        mask[where] = True
        out[key], out[f"_{key}"] = array, mask
    return out


def _check_shared_potential(envs: Sequence[MolecularEnv]) -> None:
    first = envs[0].potential
    if any(env.potential is not first for env in envs):
        raise ValueError("all sub-environments must share one potential object to be evaluated in one batch")
    if any(env.reference is not envs[0].reference for env in envs):
        raise ValueError("all sub-environments must share one reference potential object (or none)")


class MolGymVectorEnv(VectorEnv):
    """``num_envs`` copies of a molgym environment stepped together with one batched potential call.

    Args:
        num_envs: number of sub-environments (>= 1).
        env_class: the :class:`~molgym.envs.base.MolecularEnv` subclass (``gymnasium.make_vec`` passes the id's class:
            every id registered with :func:`molgym.registration.register_task` has this vector form).
        autoreset_mode: ``"next_step"`` (Gymnasium's default: a finished sub-environment is reset by the next
            ``step``, whose action for it is ignored, with reward 0) or ``"same_step"`` (reset inside the step
            that finishes; the final observation and info go to ``info["final_obs"]``/``info["final_info"]``).
        **env_kwargs: the environment's arguments (``formula=``, ``potential=``...). A potential spec is loaded
            once and shared by all sub-environments.

    Infos are batched the Gymnasium way (one array per key, ``_key`` masks); an unknown best-known return, ``None``
    in a single environment's info, is NaN here.

    ``reset(seed=s)`` seeds sub-environment ``i`` with ``s + i`` (as Gymnasium's ``SyncVectorEnv``), so its
    rewards equal those of ``env.reset(seed=s + i)`` followed by the same actions.
    """

    env_class: type[MolecularEnv] = MolecularEnv

    def __init__(
        self,
        num_envs: int = 1,
        env_class: type[MolecularEnv] | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        **env_kwargs: Any,
    ):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        env_kwargs.pop("max_episode_steps", None)  # episodes end on their own (empty bag)
        if env_class is not None:
            self.env_class = env_class
        mode = AutoresetMode(autoreset_mode) if isinstance(autoreset_mode, AutoresetMode) else {
            "next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP,
        }.get(str(autoreset_mode).lower().replace("-", "_"))
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be 'next_step' or 'same_step', got {autoreset_mode!r}")
        self.num_envs = int(num_envs)
        self.envs: list[MolecularEnv] = [self.env_class(**env_kwargs) for _ in range(self.num_envs)]
        _check_shared_potential(self.envs)
        self.potential = self.envs[0].potential
        first = self.envs[0]
        self.metadata = dict(first.metadata, autoreset_mode=mode)
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._started = False

    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset all sub-environments (or those in ``options["reset_mask"]``); see the class docstring for seeds."""
        if isinstance(seed, (int, np.integer)):
            super().reset(seed=int(seed))
            seeds: list[int | None] = [int(seed) + i for i in range(self.num_envs)]
        elif seed is None:
            seeds = [None] * self.num_envs
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} environments")
        options = dict(options or {})
        mask = np.asarray(options.pop("reset_mask", np.ones(self.num_envs, dtype=bool)), dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(f"options['reset_mask'] must have shape ({self.num_envs},), got {mask.shape}")
        if not self._started and not mask.all():
            raise ValueError("the first reset must reset every sub-environment")
        observations, infos = [], []
        for i, env in enumerate(self.envs):
            info = None
            if mask[i]:
                obs, info = env.reset(seed=seeds[i], options=options or None)
                self._autoreset[i] = False
            else:
                obs = env._observation()
            observations.append(obs)
            infos.append(info)
        self._started = True
        return self._stack(observations), batch_infos(infos, self.num_envs)

    def step(self, actions):
        """Step all sub-environments with ONE batched potential evaluation (see the module docstring)."""
        actions = list(iterate(self.action_space, actions))
        active = [i for i in range(self.num_envs) if not self._autoreset[i]]
        results = dict(zip(active, batched_step([self.envs[i] for i in active], [actions[i] for i in active])))
        observations, infos = [], []
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        same_step = self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
        for i, env in enumerate(self.envs):
            if i not in results:  # next-step autoreset
                obs, info = env.reset()
                self._autoreset[i] = False
            else:
                obs, rewards[i], terminated[i], truncated[i], info = results[i]
                done = terminated[i] or truncated[i]
                if same_step and done:
                    final_obs, final_info = obs, info
                    obs, info = env.reset()
                    info = dict(info, final_obs=final_obs, final_info=final_info)
                elif done:
                    self._autoreset[i] = True
            observations.append(obs)
            infos.append(info)
        return self._stack(observations), rewards, terminated, truncated, batch_infos(infos, self.num_envs)

    def action_masks(self) -> np.ndarray:
        """``(num_envs, n_elements)`` boolean mask of the elements left in each sub-environment's bag."""
        return np.stack([env.action_masks() for env in self.envs])

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call a method (or read an attribute) of every sub-environment."""
        out = []
        for env in self.envs:
            attr = getattr(env, name)
            out.append(attr(*args, **kwargs) if callable(attr) else attr)
        return tuple(out)

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """An attribute of every sub-environment."""
        return tuple(getattr(env, name) for env in self.envs)

    def render(self) -> tuple[Any, ...] | None:
        """Frames of all sub-environments."""
        if self.render_mode is None:
            return None
        return tuple(env.render() for env in self.envs)

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()

    def _stack(self, observations: list[dict]) -> dict:
        out = create_empty_array(self.single_observation_space, n=self.num_envs, fn=np.zeros)
        return concatenate(self.single_observation_space, observations, out)
