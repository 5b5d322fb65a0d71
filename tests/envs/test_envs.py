"""One parametrised suite over every registered MolGym id: checkers, determinism, pickling, vectorisation."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest

from molgym.envs import random_valid_action
from molgym.registration import ENV_IDS

SMALL_KWARGS = {
    "MolGym/SingleBag-v0": {"formula": "CH4O"},
    "MolGym/MultiBag-v0": {"formulas": ("CH4O", "CH3NO")},
    "MolGym/StochasticBag-v0": {"template": "C2H6O", "size_range": (3, 7)},
    "MolGym/Solvation-v0": {"solute": "C", "solvent": "H2O", "n_solvent": 2},
}
ALL_IDS = sorted(ENV_IDS)


def make(env_id, potential, **extra):
    return gym.make(env_id, **SMALL_KWARGS[env_id], potential=potential, **extra)


def run_episode(env, seed: int, action_seed: int, max_steps: int = 50):
    """Reset with ``seed`` and place random valid atoms (drawn with ``action_seed``) until the episode ends."""
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(action_seed)
    rewards, observations = [], [obs]
    for _ in range(max_steps):
        obs, reward, terminated, truncated, info = env.step(random_valid_action(env, rng))
        rewards.append(reward)
        observations.append(obs)
        if terminated or truncated:
            break
    return rewards, observations, info


def test_every_registered_id_is_tested():
    assert {k for k in gym.registry if k.startswith("MolGym/")} == set(ALL_IDS) == set(SMALL_KWARGS)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_gymnasium_and_sb3_checkers(env_id, tiny_model_path, tiny_potential):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    # Advice, not errors: the action is in Å (not [-1, 1]), positions are (max_atoms, 3) by design (the agents'
    # covariant policies read them as a point cloud), and check_env is given the unwrapped env on purpose.
    allowed = ("symmetric and normalized", "different from the unwrapped", "positions has an unconventional shape")
    env = make(env_id, tiny_model_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped)
        sb3_check_env(make(env_id, tiny_model_path).unwrapped, warn=True)
    complaints = [str(w.message) for w in caught
                  if issubclass(w.category, UserWarning) and not any(a in str(w.message) for a in allowed)]
    assert complaints == []
    env.close()


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_seeded_episodes_are_deterministic(env_id, tiny_model_path):
    first = run_episode(make(env_id, tiny_model_path), seed=3, action_seed=4)
    second = run_episode(make(env_id, tiny_model_path), seed=3, action_seed=4)
    assert len(first[0]) >= 2
    assert first[0] == second[0]
    for a, b in zip(first[1], second[1]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_envs_pickle_mid_episode(env_id, tiny_model_path):
    env = make(env_id, tiny_model_path)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    env.step(random_valid_action(env, rng))
    clone = pickle.loads(pickle.dumps(env))
    assert clone.unwrapped.potential is env.unwrapped.potential  # reloaded from the per-process cache
    action = random_valid_action(env, rng)
    out_a, out_b = env.step(action), clone.step(action)
    assert out_a[1] == out_b[1]
    np.testing.assert_array_equal(out_a[0]["positions"], out_b[0]["positions"])


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_vector_env_matches_single_envs_with_one_call_per_step(env_id, counting_potential):
    n, seed = 3, 11
    venv = gym.make_vec(env_id, num_envs=n, **SMALL_KWARGS[env_id], potential=counting_potential)
    assert type(venv).__name__.endswith("VectorEnv") and hasattr(venv, "envs")
    singles = [make(env_id, counting_potential).unwrapped for _ in range(n)]
    obs, _ = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        single_obs, _ = env.reset(seed=seed + i)
        np.testing.assert_array_equal(obs["bag"][i], single_obs["bag"])
    rngs = [np.random.default_rng(100 + i) for i in range(n)]
    done = np.zeros(n, dtype=bool)
    finished_last = np.zeros(n, dtype=bool)
    steps = 0
    while not done.all():
        finished_last[:] = False
        actions = np.stack([random_valid_action(env, rngs[i]) if not done[i] else np.zeros(4, np.float32)
                            for i, env in enumerate(singles)])
        counting_potential.calls.clear()
        _, rewards, terminated, truncated, _ = venv.step(actions)
        vector_calls = list(counting_potential.calls)
        assert len(vector_calls) <= 1, f"vector step made {len(vector_calls)} potential calls"
        for i, env in enumerate(singles):
            if done[i]:
                continue
            _, reward, term, trunc, _ = env.step(actions[i])
            assert rewards[i] == pytest.approx(reward, abs=1e-8)
            assert terminated[i] == term
            done[i] = finished_last[i] = term or trunc
        steps += 1
    assert steps >= 2
    # next-step autoreset: the sub-environments that finished on the last step are reset, whatever the action
    obs, rewards, terminated, _, info = venv.step(np.full((n, 4), np.nan, dtype=np.float32))
    np.testing.assert_array_equal(rewards[finished_last], 0.0)
    assert not terminated[finished_last].any()
    assert (obs["mask"][finished_last].sum(axis=1) == [len(e.unwrapped._numbers) for e in
            np.array(venv.envs, dtype=object)[finished_last]]).all()
    venv.close()


def test_make_vec_sync_and_async(tiny_model_path):
    for mode in ("sync", "async"):
        venv = gym.make_vec("MolGym/SingleBag-v0", num_envs=2, vectorization_mode=mode, formula="CH4O",
                            potential=tiny_model_path)
        obs, _ = venv.reset(seed=0)
        assert obs["positions"].shape == (2, 6, 3)
        action = np.array([[0, 0.0, 0.0, 0.0], [2, 0.1, 0.0, 0.0]], dtype=np.float32)
        obs, rewards, terminated, _, info = venv.step(action)
        np.testing.assert_array_equal(rewards, 0.0)  # the first atom's reward is 0 by definition
        np.testing.assert_array_equal(obs["mask"][:, 0], 1)
        venv.close()


def test_same_step_autoreset(counting_potential):
    venv = gym.make_vec("MolGym/SingleBag-v0", num_envs=2, formula="CH4O", potential=counting_potential,
                        autoreset_mode="same_step")
    venv.reset(seed=0)
    bad = np.array([[0, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
    venv.step(bad)
    obs, rewards, terminated, _, info = venv.step(bad)  # too close: invalid, ends, resets in the same step
    assert terminated.all() and (rewards == -1.0).all()
    assert (obs["mask"].sum(axis=1) == 0).all()  # already the next episode
    assert info["final_obs"][0]["mask"].sum() == 1
    venv.close()


def test_sb3_vec_env_batches_and_matches(counting_potential):
    from molgym.envs.sb3 import make_sb3_vec_env

    n = 3
    venv = make_sb3_vec_env("MolGym/SingleBag-v0", n_envs=n, seed=5, formula="CH4O", potential=counting_potential)
    obs = venv.reset()
    assert obs["positions"].shape == (n, 6, 3)
    singles = [make("MolGym/SingleBag-v0", counting_potential).unwrapped for _ in range(n)]
    for i, env in enumerate(singles):
        env.reset(seed=5 + i)
    rngs = [np.random.default_rng(i) for i in range(n)]
    for _ in range(6):
        actions = np.stack([random_valid_action(env, rngs[i]) for i, env in enumerate(singles)])
        counting_potential.calls.clear()
        obs, rewards, dones, infos = venv.step(actions)
        assert len(counting_potential.calls) <= 1
        for i, env in enumerate(singles):
            _, reward, term, _, _ = env.step(actions[i])
            assert rewards[i] == pytest.approx(reward, abs=1e-6)  # SB3 stores rewards as float32
            assert dones[i] == term
    assert dones.all() and all("terminal_observation" in info for info in infos)
    assert venv.action_masks().shape == (n, 3)
    venv.close()


def test_vector_infos_with_known_and_unknown_best_known_returns():
    from molgym.best_known import BEST_KNOWN_PATH, load_table

    if not any(e["potential"] == "GFN2-xTB" and e["formula"] == "CH4O" for e in load_table(BEST_KNOWN_PATH)):
        pytest.skip("no GFN2-xTB value for CH4O in the shipped table")
    venv = gym.make_vec("MolGym/MultiBag-v0", num_envs=6, formulas=("CH4O", "C2H6"), potential="xtb")
    _, info = venv.reset(seed=0)
    formulas = info["task_formula"]
    assert {"CH4O", "C2H6"} <= set(formulas)
    known = info["best_known_return"]
    assert known.dtype == float
    assert np.all(np.isfinite(known[formulas == "CH4O"])) and np.all(np.isnan(known[formulas == "C2H6"]))
    venv.close()


def test_batch_infos_matches_gymnasiums_layout():
    """The one-pass batching gives what Gymnasium's env-by-env ``_add_info`` gives (None -> NaN aside)."""
    from gymnasium.vector import VectorEnv

    from molgym.envs.vector import batch_infos

    obs = {"mask": np.ones(2, dtype=np.int8)}
    infos = [
        {"energy": -1.5, "n_atoms": 2, "invalid": False, "reason": "", "mask": np.array([True, False]),
         "final_obs": obs, "final_info": {"episode_return": 3.0, "formula": "CH4", "best": 2.5}},
        None,
        {"energy": 2, "n_atoms": 3, "invalid": True, "reason": "too close", "mask": np.array([False, True]),
         "extra": np.float32(0.5), "final_info": {"episode_return": -1.0, "formula": "H2"}},
        {"energy": 0.25, "n_atoms": 1, "invalid": False, "reason": "", "mask": np.array([True, True]),
         "best_known_return": None},
    ]
    reference = VectorEnv()
    reference.num_envs = len(infos)
    expected: dict = {}
    for i, info in enumerate(infos):
        if info is not None:
            clean = {k: (np.nan if v is None else v) for k, v in info.items()}
            expected = reference._add_info(expected, clean, i)
    got = batch_infos(infos, len(infos))

    def same(a, b):
        assert type(a) is type(b)
        if isinstance(a, dict):
            assert list(a) == list(b)
            for key in a:
                same(a[key], b[key])
        else:
            assert a.dtype == b.dtype and a.shape == b.shape
            for x, y in zip(a.tolist(), b.tolist()):
                assert x is y or x == y or (x != x and y != y), (x, y)

    same(got, expected)
    assert got["final_obs"][0] is obs and got["energy"].dtype == float and np.isnan(got["best_known_return"][3])


def test_sb3_ppo_learns_a_few_steps_on_the_batched_vec_env(tiny_potential):
    from stable_baselines3 import PPO

    from molgym.envs.sb3 import make_sb3_vec_env

    venv = make_sb3_vec_env("MolGym/SingleBag-v0", n_envs=2, seed=0, formula="CH4O", potential=tiny_potential)
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=16)
    assert model.num_timesteps == 16
    venv.close()
