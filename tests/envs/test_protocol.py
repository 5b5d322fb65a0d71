"""The public vector-step protocol (``begin_step`` / ``finish_step`` / ``ending_pending`` / ``ending_structures`` /
``settle_ending``) and adding a task: one module (here: this one) plus one registration line gives the batched
vector env."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
from ase import Atoms

from molgym.envs import SingleBagEnv, random_valid_action
from molgym.envs.base import MolecularEnv, check_reset_options, check_settings, task_vocabulary
from molgym.envs.vector import MolGymVectorEnv
from molgym.registration import register_task
from molgym.potentials.batching import evaluate_batch, evaluate_one


def _drive(env: MolecularEnv, action, potential, reference=None):
    """One step through the public protocol, the way a vector driver does it (a batch of one)."""
    structure = env.begin_step(action)
    if structure is None:
        result = env.finish_step()
    else:
        result = env.finish_step(*evaluate_batch(potential, [structure], env.reports_uncertainty)[0])
    if env.ending_pending:
        needed = env.ending_structures()
        result = env.settle_ending(evaluate_batch(reference, needed) if needed else ())
    assert not env.ending_pending
    return result


@pytest.mark.parametrize("with_reference", [False, True])
def test_the_public_protocol_gives_what_step_gives(tiny_potential, with_reference):
    kwargs = dict(formula="C2H6O", potential=tiny_potential, min_reward=None)
    if with_reference:
        kwargs["reference"] = "xtb"
    stepped, driven = SingleBagEnv(**kwargs), SingleBagEnv(**kwargs)
    for seed in range(3):
        stepped.reset(seed=seed)
        driven.reset(seed=seed)
        rng = np.random.default_rng(seed)
        while True:
            action = random_valid_action(stepped, rng)
            if seed == 2 and len(stepped.canvas) == 3:
                action = np.array([0, 0.0, 0.0, 0.0], dtype=np.float32)  # onto the first atom: invalid
            a = stepped.step(action)
            b = _drive(driven, action, tiny_potential, driven.reference)
            assert a[1:4] == b[1:4] and a[4].keys() == b[4].keys()
            assert all(np.array_equal(a[0][k], b[0][k]) for k in a[0])
            if a[2]:
                assert ("reward_reference" in a[4]) == with_reference
                break


def test_protocol_misuse_is_refused(tiny_potential):
    env = SingleBagEnv(formula="CH4O", potential=tiny_potential)
    with pytest.raises(RuntimeError, match="finished episode"):
        env.begin_step([0, 0.0, 0.0, 0.0])  # before reset
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="finish_step\\(\\) without begin_step\\(\\)"):
        env.finish_step()
    assert env.begin_step([0, 0.0, 0.0, 0.0]) is None  # the first atom needs no energy
    env.finish_step()
    structure = env.begin_step([1, 1.4, 0.0, 0.0])
    assert isinstance(structure, Atoms) and len(structure) == 2
    _, _, terminated, _, info = env.finish_step(None, "boom")  # a failed evaluation: invalid, never raises
    assert terminated and "boom" in info["invalid_reason"]
    assert not env.ending_pending and env.ending_structures() == []  # no reference: nothing to settle
    with pytest.raises(RuntimeError, match="settle_ending"):
        env.settle_ending()
    assert not hasattr(env, "_begin_step") and not hasattr(env, "_finish_step")


class _GrowFromMethane(MolecularEnv):
    """A task as a user writes one: a fixed start structure plus a formula's atoms."""

    def __init__(self, formula="H2O", elements=None, **settings):
        from molgym.chem import bag_size, parse_formula

        self.to_place = parse_formula(formula)
        self.start = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                             [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
        vocabulary = task_vocabulary(elements, list(self.to_place), f"the formula {formula}")
        super().__init__(**check_settings(type(self), settings), elements=vocabulary,
                         max_atoms=len(self.start) + bag_size(self.to_place), extra_numbers=[1, 6])

    def _new_episode(self, options):
        check_reset_options(options, ())
        return dict(self.to_place), self.start.copy()


def test_a_new_task_is_one_class_and_one_registration_line(tiny_model_path, counting_potential):
    env_id = "MolGymTest/GrowFromMethane-v0"
    register_task(env_id, _GrowFromMethane)
    try:
        venv = gym.make_vec(env_id, num_envs=3, formula="H2O", potential=counting_potential)
        assert isinstance(venv, MolGymVectorEnv) and all(type(e) is _GrowFromMethane for e in venv.envs)
        singles = [gym.make(env_id, formula="H2O", potential=counting_potential) for _ in range(3)]
        venv.reset(seed=10)
        for i, env in enumerate(singles):
            env.reset(seed=10 + i)
        rng = np.random.default_rng(0)
        for _ in range(3):
            actions = np.stack([random_valid_action(e, rng) for e in venv.envs])
            counting_potential.calls.clear()
            _, rewards, terminated, _, _ = venv.step(actions)
            assert len(counting_potential.calls) == 1  # one batched call for all three
            expected = [env.step(a)[1] for env, a in zip(singles, actions)]
            np.testing.assert_array_equal(rewards, expected)
            if terminated.any():
                break
    finally:
        gym.registry.pop(env_id, None)


def test_step_is_the_protocol_with_evaluate_one(tiny_potential):
    """``step`` and ``begin_step`` + ``evaluate_one`` + ``finish_step`` agree to the bit on every task."""
    from molgym.envs import MultiBagEnv, SolvationEnv, StochasticBagEnv

    for make in (lambda: MultiBagEnv(formulas=("CH4O", "C2H6O"), potential=tiny_potential),
                 lambda: StochasticBagEnv(template="C2H6O", size_range=(3, 7), potential=tiny_potential),
                 lambda: SolvationEnv(solute="C", n_solvent=2, potential=tiny_potential)):
        a, b = make(), make()
        a.reset(seed=4)
        b.reset(seed=4)
        rng = np.random.default_rng(1)
        for _ in range(8):
            action = random_valid_action(a, rng)
            structure = b.begin_step(action)
            expected = b.finish_step(*evaluate_one(tiny_potential, structure)) if structure is not None \
                else b.finish_step()
            got = a.step(action)
            assert got[1:4] == expected[1:4]
            if got[2]:
                break
