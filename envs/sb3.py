"""A Stable-Baselines3 ``VecEnv`` that keeps molgym's batched potential evaluation.

SB3's ``DummyVecEnv`` steps its environments one after another (one potential call each). :class:`MolGymVecEnv`
is a ``DummyVecEnv`` whose ``step_wait`` goes through :func:`molgym.envs.vector.batched_step`: ONE potential call
for all environments, with SB3's conventions (``dones``, ``info["terminal_observation"]``, reset in the same step).

    venv = make_sb3_vec_env("MolGym/SingleBag-v0", n_envs=16, seed=0, formula="C3H8O", potential="default")
    model = stable_baselines3.PPO("MultiInputPolicy", venv)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from molgym.envs.base import MolecularEnv
from molgym.envs.vector import _check_shared_potential, batched_step

__all__ = ["MolGymVecEnv", "make_sb3_vec_env"]


class MolGymVecEnv(DummyVecEnv):
    """SB3 ``VecEnv`` over molgym environments with one batched potential call per step.

    Args:
        env_fns: functions returning *unwrapped* :class:`~molgym.envs.base.MolecularEnv` instances sharing one
            potential (wrappers would be bypassed by the batched step, so they are refused).
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env]]):
        super().__init__(env_fns)
        for env in self.envs:
            if not isinstance(env, MolecularEnv):
                raise ValueError(
                    f"MolGymVecEnv needs unwrapped molgym environments, got {type(env).__name__}; build them with "
                    "the environment class (make_sb3_vec_env does) or use SB3's DummyVecEnv for wrapped ones"
                )
        _check_shared_potential(self.envs)

    def step_wait(self) -> VecEnvStepReturn:
        results = batched_step(self.envs, list(self.actions))
        for i, (obs, reward, terminated, truncated, info) in enumerate(results):
            self.buf_rews[i] = reward
            self.buf_dones[i] = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                info["terminal_observation"] = obs
                obs, self.reset_infos[i] = self.envs[i].reset()
            self.buf_infos[i] = info
            self._save_obs(i, obs)
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), list(self.buf_infos)

    def action_masks(self) -> np.ndarray:
        """``(n_envs, n_elements)`` mask of the elements left in each bag (for maskable policies)."""
        return np.stack([env.action_masks() for env in self.envs])


def make_sb3_vec_env(env_id: str, n_envs: int = 1, seed: int | None = None, **env_kwargs: Any) -> MolGymVecEnv:
    """``n_envs`` environments of a registered molgym id as a :class:`MolGymVecEnv` (seeded ``seed + i``)."""
    from gymnasium.envs.registration import load_env_creator

    if int(n_envs) != n_envs or n_envs < 1:
        raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
    spec = gym.spec(env_id)
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    kwargs = {**spec.kwargs, **env_kwargs}
    venv = MolGymVecEnv([lambda: creator(**kwargs) for _ in range(int(n_envs))])
    if seed is not None:
        venv.seed(seed)
    return venv
