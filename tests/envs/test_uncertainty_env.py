"""Uncertainty in the environments: info["uncertainty"], the reward penalty, the threshold, the vector env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from molgym.envs.single_bag import SingleBagEnv
from molgym.envs.vector import MolGymVectorEnv
from molgym.potentials.committee import CommitteeHeads, CommitteeMACEPotential, isolated_features

# a C2H6O build: heavy atoms first, then H (valid placements under MolGym's rules)
BUILD = [
    ("C", [0.0, 0.0, 0.0]), ("C", [1.52, 0.0, 0.0]), ("O", [2.0, 1.35, 0.0]),
    ("H", [-0.4, 1.0, 0.1]), ("H", [-0.4, -0.5, 0.9]), ("H", [-0.4, -0.5, -0.9]),
    ("H", [1.9, -0.5, 0.9]), ("H", [1.9, -0.5, -0.9]), ("H", [2.9, 1.4, 0.2]),
]


@pytest.fixture(scope="module")
def committee(tiny_potential):
    n_feat = isolated_features(tiny_potential).shape[1]
    width = n_feat * len(tiny_potential.z_table)
    w = np.random.default_rng(0).normal(size=(4, width)) * 0.05
    heads = CommitteeHeads(z_table=list(tiny_potential.z_table), isolated=isolated_features(tiny_potential),
                           feature_scale=np.ones(width), weights=w - w.mean(axis=0), scale=1.5)
    return CommitteeMACEPotential(tiny_potential.model, heads, device="cpu", name="tiny-committee")


def _actions(env):
    return [np.array([env.elements.index(s), *pos], dtype=np.float32) for s, pos in BUILD]


def _run(env, seed=0):
    env.reset(seed=seed)
    out = []
    for action in _actions(env):
        _, reward, terminated, truncated, info = env.step(action)
        out.append((reward, terminated, info))
        if terminated:
            break
    return out


def test_info_carries_the_step_uncertainty_and_rewards_are_unchanged(committee, tiny_potential):
    plain = _run(SingleBagEnv(formula="C2H6O", potential=tiny_potential))
    steps = _run(SingleBagEnv(formula="C2H6O", potential=committee))
    assert len(steps) == len(BUILD) and steps[-1][1]
    assert all("uncertainty" not in info for _, _, info in plain)  # no committee, no key
    sigmas = np.array([info["uncertainty"] for _, _, info in steps])
    assert sigmas[0] == 0 and np.all(sigmas[1:] > 0)  # the first atom is exact
    np.testing.assert_allclose([r for r, _, _ in steps], [r for r, _, _ in plain], atol=1e-9)
    assert steps[-1][2]["terminated_by"] == "bag_empty"


def test_step_uncertainty_is_the_spread_of_the_members_rewards(committee):
    env = SingleBagEnv(formula="C2H6O", potential=committee)
    steps = _run(env)
    frames = env.trajectory()[1:]
    _, members = committee.committee_energies(frames[1:])
    energies = committee.energies(frames[1:])
    dev = np.vstack([np.zeros(members.shape[1]), members - energies[:, None]])
    expected = committee.uncertainty_scale * np.std(np.diff(dev, axis=0), axis=1)
    np.testing.assert_allclose([info["uncertainty"] for _, _, info in steps[1:]], expected, rtol=1e-8, atol=1e-10)


def test_penalty_reduces_the_reward_by_exactly_penalty_times_sigma(committee):
    free = _run(SingleBagEnv(formula="C2H6O", potential=committee))
    penalised = _run(SingleBagEnv(formula="C2H6O", potential=committee, uncertainty_penalty=0.7))
    for (r0, _, i0), (r1, _, i1) in zip(free, penalised, strict=True):
        assert i1["uncertainty"] == pytest.approx(i0["uncertainty"], abs=1e-12)
        assert r1 == pytest.approx(r0 - 0.7 * i0["uncertainty"], abs=1e-9)
        assert i1["reward_uncertainty"] == pytest.approx(-0.7 * i0["uncertainty"], abs=1e-12)
        assert i1["reward_interaction"] == pytest.approx(i0["reward_interaction"], abs=1e-9)


def test_threshold_ends_the_episode_after_an_uncertain_step(committee):
    free = _run(SingleBagEnv(formula="C2H6O", potential=committee))
    sigmas = [info["uncertainty"] for _, _, info in free]
    threshold = 0.5 * (sigmas[1] + sigmas[2]) if sigmas[2] > sigmas[1] else 0.5 * sigmas[1]
    first_over = next(k for k, s in enumerate(sigmas) if s > threshold)
    steps = _run(SingleBagEnv(formula="C2H6O", potential=committee, uncertainty_threshold=threshold))
    assert len(steps) == first_over + 1
    reward, terminated, info = steps[-1]
    assert terminated and info["terminated_by"] == "uncertainty" and not info["invalid"]
    assert reward == pytest.approx(free[first_over][0])  # the atom is placed and rewarded as usual
    assert "episode_return" in info
    env = SingleBagEnv(formula="C2H6O", potential=committee, uncertainty_threshold=threshold)
    _run(env)
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step(_actions(env)[first_over + 1])


def test_vector_env_agrees_with_single_env_in_one_batched_call(committee):
    calls = []
    original = committee.committee_energies

    def counting(structures):
        calls.append(len(structures))
        return original(structures)

    committee.committee_energies = counting
    try:
        venv = MolGymVectorEnv(num_envs=3, env_class=SingleBagEnv, formula="C2H6O", potential=committee, uncertainty_penalty=0.3)
        venv.reset(seed=0)
        single = _run(SingleBagEnv(formula="C2H6O", potential=committee, uncertainty_penalty=0.3))
        calls.clear()
        actions = np.stack([[a, a, a] for a in _actions(venv.envs[0])])
        for k, action in enumerate(actions):
            _, rewards, _, _, infos = venv.step(action)
            np.testing.assert_allclose(rewards, single[k][0], atol=1e-9)
            np.testing.assert_allclose(infos["uncertainty"], single[k][2]["uncertainty"], atol=1e-12)
        assert calls == [3] * (len(BUILD) - 1)  # one batched call per evaluated step, all envs in it
    finally:
        del committee.committee_energies


def test_gym_make_passes_the_options(committee):
    env = gym.make("MolGym/SingleBag-v0", formula="C2H6O", potential=committee, uncertainty_penalty=0.2,
                   uncertainty_threshold=5.0)
    assert env.unwrapped.uncertainty_penalty == 0.2 and env.unwrapped.uncertainty_threshold == 5.0
    _, info = env.reset(seed=0)
    assert info["uncertainty"] == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"uncertainty_penalty": -1.0}, "uncertainty_penalty must be a finite number >= 0"),
        ({"uncertainty_penalty": float("nan")}, "uncertainty_penalty must be a finite number >= 0"),
        ({"uncertainty_penalty": "a lot"}, "uncertainty_penalty must be a number >= 0"),
        ({"uncertainty_threshold": 0.0}, "uncertainty_threshold must be None or a finite number > 0"),
        ({"uncertainty_threshold": float("inf")}, "uncertainty_threshold must be None or a finite number > 0"),
    ],
)
def test_bad_options_are_clear_errors(committee, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SingleBagEnv(formula="C2H6O", potential=committee, **kwargs)


def test_options_need_a_potential_with_uncertainties(tiny_potential):
    with pytest.raises(ValueError, match="need a potential with uncertainties"):
        SingleBagEnv(formula="C2H6O", potential=tiny_potential, uncertainty_penalty=1.0)
    with pytest.raises(ValueError, match="need a potential with uncertainties"):
        SingleBagEnv(formula="C2H6O", potential=tiny_potential, uncertainty_threshold=1.0)
