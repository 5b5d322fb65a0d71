"""Exact-return correction: with ``reference=``, an episode's return is the reference's build return of what was
built (plus the rule penalties), whatever the potential's errors; checked against real GFN2-xTB."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from ase import Atoms

from molgym.envs import SingleBagEnv, SolvationEnv, random_valid_action
from molgym.potentials import load_potential
from molgym.potentials.base import Potential, SCFConvergenceError
from molgym.reward import isolated_atom_energies


@pytest.fixture(scope="module")
def xtb():
    return load_potential("xtb")


def _build_return(potential: Potential, final: Atoms, start: Atoms | None = None) -> float:
    """``E(start) + sum E(placed atoms) - E(final)`` under ``potential``, computed here independently."""
    n_start = 0 if start is None else len(start)
    e_atom = isolated_atom_energies(potential, final.numbers.tolist())

    def energy(atoms: Atoms) -> float:
        if len(atoms) == 0:
            return 0.0
        if len(atoms) == 1:
            return e_atom[int(atoms.numbers[0])]
        return float(potential.energies([atoms])[0])

    placed = final.numbers[n_start:]
    return (0.0 if start is None else energy(start)) + sum(e_atom[int(z)] for z in placed) - energy(final)


def _play(env, rng, invalid_after: int | None = None):
    """One episode of random valid placements (an invalid one after ``invalid_after`` steps); returns
    ``(sum of rewards, last info)``."""
    total, step = 0.0, 0
    while True:
        action = random_valid_action(env, rng)
        if invalid_after is not None and step == invalid_after:
            action = np.array([0, 9.5, 0.0, 0.0])  # outside the workspace
        _obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        step += 1
        if terminated or truncated:
            return total, info


@pytest.mark.parametrize("ending", ["bag_empty", "min_reward", "invalid"])
def test_episode_return_equals_the_reference_return_of_the_final_canvas(ending, tiny_potential, xtb):
    floor = {"bag_empty": None, "min_reward": 0.0, "invalid": -1.0}[ending]
    env = SingleBagEnv(formula="C2H6O", potential=tiny_potential, reference="xtb", min_reward=floor)
    seen = 0
    for seed in range(12):
        env.reset(seed=seed)
        total, info = _play(env, np.random.default_rng(seed), invalid_after=3 if ending == "invalid" else None)
        if info["terminated_by"] != ending:
            continue
        seen += 1
        final = env.canvas
        expected = _build_return(xtb, final)
        penalty = env.invalid_reward if ending == "invalid" else 0.0
        assert total == pytest.approx(expected + penalty, abs=1e-6)
        assert info["episode_return"] == pytest.approx(total, abs=1e-9)
        assert info["reference_return"] == pytest.approx(expected, abs=1e-6)
        assert info["potential_return"] == pytest.approx(_build_return(tiny_potential, final), abs=1e-6)
        assert not info["reference_failed"]
        if seen == 2:
            break
    assert seen == 2, f"fewer than two episodes ended by {ending}"


def test_vector_env_corrects_every_ending_with_one_reference_call_per_step(tiny_model_path, xtb, count_calls):
    counting = count_calls(xtb)
    venv = gym.make_vec("MolGym/SingleBag-v0", num_envs=4, formula="C2H6O", potential=tiny_model_path,
                        reference=counting, min_reward=0.0)
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    totals = np.zeros(4)
    checked = 0
    for _ in range(40):
        actions = np.stack([random_valid_action(env, rng) for env in venv.unwrapped.envs])
        calls_before = len(counting.calls)
        _obs, rewards, terminated, _trunc, infos = venv.step(actions)
        totals += rewards
        ended = np.flatnonzero(terminated)
        # endings with more than one atom need the reference: all of them in one call
        needs = [i for i in ended if len(venv.unwrapped.envs[i].canvas) > 1]
        assert len(counting.calls) - calls_before == (1 if needs else 0)
        if needs:
            assert counting.calls[-1] == len(needs)
        for i in ended:
            final = venv.unwrapped.envs[i].canvas  # next-step autoreset: still the final canvas
            assert totals[i] == pytest.approx(_build_return(xtb, final), abs=1e-6)
            assert infos["reference_return"][i] == pytest.approx(totals[i], abs=1e-6)
            checked += 1
        totals[ended] = 0.0
        totals[venv.unwrapped._autoreset & ~terminated] = 0.0
    venv.close()
    assert checked >= 4


def test_sb3_vec_env_keeps_the_correction(tiny_model_path, xtb):
    from molgym.envs.sb3 import make_sb3_vec_env

    venv = make_sb3_vec_env("MolGym/SingleBag-v0", n_envs=2, seed=0, formula="CH4O", potential=tiny_model_path,
                            reference="xtb", min_reward=None)
    venv.reset()
    rng = np.random.default_rng(3)
    totals, checked = np.zeros(2), 0
    while checked < 3:
        actions = np.stack([random_valid_action(env, rng) for env in venv.envs])
        _obs, rewards, dones, infos = venv.step(actions)
        totals += rewards
        for i in np.flatnonzero(dones):
            obs = infos[i]["terminal_observation"]
            n = int(obs["mask"].sum())
            final = Atoms(numbers=obs["atomic_numbers"][:n], positions=obs["positions"][:n].astype(float))
            # float32 observations: the positions are rounded, so compare at the meV level here
            assert totals[i] == pytest.approx(_build_return(xtb, final), abs=2e-3)
            assert totals[i] == pytest.approx(infos[i]["reference_return"], abs=1e-6)
            totals[i] = 0.0
            checked += 1
    venv.close()


def test_solvation_return_counts_only_what_the_episode_placed(tiny_potential, xtb, count_calls):
    env = SolvationEnv(solute="C", solvent="H2O", n_solvent=1, potential=tiny_potential, reference="xtb",
                       min_reward=None, distance_penalty=0.0)
    env.reset(seed=0)
    start = env.canvas
    total, info = _play(env, np.random.default_rng(0))
    assert info["terminated_by"] == "bag_empty"
    assert total == pytest.approx(_build_return(xtb, env.canvas, start=start), abs=1e-6)
    # the solute's reference energy is cached: a second episode evaluates only its final canvas
    counting = count_calls(xtb)
    env2 = SolvationEnv(solute="C", solvent="H2O", n_solvent=1, potential=tiny_potential, reference=counting,
                        min_reward=None, distance_penalty=0.0)
    calls_before = len(counting.calls)  # the isolated atoms' energies, at construction
    for seed in range(2):
        env2.reset(seed=seed)
        _play(env2, np.random.default_rng(seed))
    assert counting.calls[calls_before:] == [2, 1]


class _FailingReference(Potential):
    """GFN2-xTB that reports a failed SCF on every structure of more than three atoms."""

    def __init__(self, inner: Potential):
        self.inner, self.name, self.species = inner, "failing-xtb", inner.species

    def energies(self, structures):
        structures = list(structures)
        for i, atoms in enumerate(structures):
            if len(atoms) > 3:
                raise SCFConvergenceError(f"SCF did not converge on structure {i}", index=i)
        return self.inner.energies(structures)

    def energies_and_forces(self, structures):
        raise NotImplementedError


def test_a_failed_reference_scores_the_episode_as_invalid(tiny_potential, xtb):
    env = SingleBagEnv(formula="CH4O", potential=tiny_potential, reference=_FailingReference(xtb), min_reward=None,
                       invalid_reward=-2.0)
    env.reset(seed=0)
    total, info = _play(env, np.random.default_rng(0))
    assert total == pytest.approx(-2.0, abs=1e-9)
    assert info["reference_failed"] and info["invalid"]
    assert "SCF did not converge" in info["invalid_reason"] and "failing-xtb" in info["invalid_reason"]


class _HCOnly(Potential):
    name, species = "hc-only", frozenset({1, 6})

    def energies(self, structures):
        return np.zeros(len(list(structures)))

    def energies_and_forces(self, structures):
        raise NotImplementedError


def test_bad_references_are_clear_errors_and_an_identical_one_is_a_no_op(tiny_model_path, tiny_potential):
    with pytest.raises(ValueError, match="nonsense"):
        SingleBagEnv(formula="CH4O", potential=tiny_potential, reference="nonsense")
    with pytest.raises(ValueError, match="does not cover O"):
        SingleBagEnv(formula="CH4O", potential=tiny_potential, reference=_HCOnly())
    with pytest.raises(ValueError, match="reference must be"):
        SingleBagEnv(formula="CH4O", potential=tiny_potential, reference=3)
    same = SingleBagEnv(formula="CH4O", potential=tiny_model_path, reference=tiny_model_path, min_reward=0.0)
    plain = SingleBagEnv(formula="CH4O", potential=tiny_model_path, min_reward=0.0)
    assert same.reference is None and same.reference_name is None
    for env in (same, plain):
        env.reset(seed=1)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert _play(same, rng_a)[0] == _play(plain, rng_b)[0]


def test_best_known_return_is_the_reference_one(tiny_potential):
    env = SingleBagEnv(formula="C3H8O", potential=tiny_potential, reference="xtb")
    _obs, info = env.reset(seed=0)
    assert info["reference"] == "GFN2-xTB"
    assert info["best_known_return"] == pytest.approx(61.470648)  # GFN2-xTB entry of molgym/data/best_known.json
