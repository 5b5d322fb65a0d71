"""Relaxed self-imitation (``molgym train --imitate-relaxed``): demonstrations from real GFN2-xTB relaxations, the
pairs that rebuild them, and the policy update that makes them likelier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from agent_helpers import placement_spaces

from molgym.agents.common.imitation import BUFFER, Demonstration, RelaxedImitation, demonstration
from molgym.agents.covariant import CovariantPolicy
from molgym.envs.spaces import observation

ELEMENTS = ("C", "H", "O")


@pytest.fixture(scope="module")
def xtb():
    from molgym.potentials import load_potential

    return load_potential("xtb")


def _methanol(stretch: float = -0.1):
    """Methanol, heavy atoms first as the agents build, with its C-O bond stretched by ``stretch`` Å (the default
    squeezes it, which keeps the bond perceived)."""
    m = molecule("CH3OH")
    order = np.argsort([z == 1 for z in m.numbers], kind="stable")
    m = m[order]
    c, o = m.positions[0], m.positions[1]
    u = (o - c) / np.linalg.norm(o - c)
    oh = [i for i in range(len(m)) if m.numbers[i] == 1 and np.linalg.norm(m.positions[i] - o) < 1.2]
    m.positions[[1, *oh]] += stretch * u
    return m


def test_demonstration_is_the_relaxed_molecule_in_build_order(xtb):
    built = _methanol()
    demo = demonstration(built, built_return=10.0, potential=xtb)
    assert demo is not None
    assert demo.relaxed_return > 10.0 + 0.05  # the squeezed C-O bond released energy
    assert np.array_equal(demo.numbers, built.numbers)
    co = np.linalg.norm(demo.positions[1] - demo.positions[0])
    assert 1.38 < co < 1.48 and co > np.linalg.norm(built.positions[1] - built.positions[0]) + 0.05
    observations, actions = demo.pairs(ELEMENTS, max_atoms=8)
    assert len(observations) == len(built) - 1 == len(actions)
    for t, (obs, action) in enumerate(zip(observations, actions), start=1):
        placed = built.numbers[:t]
        expected = observation(placed, demo.positions[:t], {"C": 1 - sum(placed == 6), "H": 4 - sum(placed == 1),
                                                             "O": 1 - sum(placed == 8)}, ELEMENTS, 8)
        for key in expected:
            assert np.array_equal(obs[key], expected[key]), (t, key)
        assert ELEMENTS[int(action[0])] == built.get_chemical_symbols()[t]
        np.testing.assert_allclose(action[1:], demo.positions[t], atol=1e-5)


def test_a_relaxation_into_another_molecule_is_no_demonstration(xtb):
    # the hydroxyl hydrogen 1.9 Å from O (not bonded): relaxing binds it again, another bond graph
    built = _methanol(stretch=0.0)
    o = built.positions[1]
    h = [i for i in range(len(built)) if built.numbers[i] == 1 and np.linalg.norm(built.positions[i] - o) < 1.2][0]
    built.positions[h] = o + 1.9 * (built.positions[h] - o) / np.linalg.norm(built.positions[h] - o)
    assert demonstration(built, built_return=0.0, potential=xtb) is None


def _fresh_policy():
    obs_space, act_space = placement_spaces(8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return CovariantPolicy(obs_space, act_space, lambda _: 1e-3, seed=0,
                               model_kwargs={"channels": 8, "vector_channels": 4})


def _complete_episode(atoms, ret):
    obs = observation(atoms.numbers, atoms.positions, {}, ELEMENTS, 8)
    return obs, {"invalid": False, "episode_return": ret}


def test_the_buffer_keeps_the_best_relaxed_complete_episode_of_each_rollout(xtb, tmp_path):
    imitation = RelaxedImitation(1.0, xtb, ELEMENTS, 8)
    built = _methanol()
    incomplete = observation(built.numbers[:3], built.positions[:3], {"H": 3}, ELEMENTS, 8)
    imitation.offer(incomplete, {"invalid": False, "episode_return": 99.0})  # bag not empty
    imitation.offer(*_complete_episode(built, 50.0)[:1], {"invalid": True, "episode_return": 98.0})
    assert imitation.candidate is None
    imitation.offer(*_complete_episode(built, 12.0))
    imitation.offer(*_complete_episode(_methanol(-0.05), 11.0))  # lower return: not the rollout's candidate
    imitation.end_rollout()
    assert imitation.candidate is None and len(imitation.buffer) == 1
    assert imitation.buffer[0].built_return == 12.0 and imitation.stats["relaxations"] == 1
    # the same molecule again, relaxed to a lower return, does not add a second entry or replace the first
    imitation.offer(*_complete_episode(built, 5.0))
    imitation.end_rollout()
    assert len(imitation.buffer) == 1 and imitation.buffer[0].built_return == 12.0
    # saved and loaded with the run's checkpoints
    imitation.save(tmp_path / "imitation.json")
    again = RelaxedImitation(1.0, xtb, ELEMENTS, 8)
    again.load(tmp_path / "imitation.json")
    assert len(again.buffer) == 1 and again.stats["relaxations"] == 2
    np.testing.assert_allclose(again.buffer[0].positions, imitation.buffer[0].positions)
    assert BUFFER >= 2


def test_updates_make_the_demonstrations_likelier():
    rng = np.random.default_rng(0)
    built = _methanol()
    demo = Demonstration(built.numbers.copy(), built.positions + 0.01 * rng.normal(size=built.positions.shape),
                         relaxed_return=1.0, built_return=0.5, key="methanol")
    policy = _fresh_policy()
    imitation = RelaxedImitation(1.0, None, ELEMENTS, 8)
    assert imitation.update(policy) is None  # nothing to imitate yet
    imitation.buffer = [demo]
    observations, actions = demo.pairs(ELEMENTS, 8)
    batch = {k: np.stack([o[k] for o in observations]) for k in observations[0]}

    def nll() -> float:
        with torch.no_grad():
            return float(-policy.log_prob(batch, actions).mean())

    before = nll()
    for _ in range(10):
        imitation.update(policy)
    assert nll() < before - 0.3  # measured: 4.04 -> 3.46 nats per placement
    assert imitation.stats["updates"] == 10


def test_bad_coefficient_is_refused():
    with pytest.raises(ValueError, match="imitation coefficient must be a positive number, got -1"):
        RelaxedImitation(-1.0, None, ELEMENTS, 8)


def _greedy_build(policy, numbers, max_atoms: int = 8):
    """The molecule ``policy`` builds greedily from the bag of ``numbers`` (the environment's observation, without
    an environment: the reward plays no part in a greedy action)."""
    from ase.data import chemical_symbols

    left = {s: 0 for s in ELEMENTS}
    for z in numbers:
        left[chemical_symbols[int(z)]] += 1
    placed_z, placed_x = [], []
    for _ in range(len(numbers)):
        obs = observation(np.array(placed_z, dtype=int), np.array(placed_x).reshape(-1, 3), left, ELEMENTS, max_atoms)
        action, _ = policy.predict({k: v[None] for k, v in obs.items()}, deterministic=True)
        symbol = ELEMENTS[int(round(action[0][0]))]
        left[symbol] -= 1
        placed_z.append(chemical_symbols.index(symbol))
        placed_x.append(action[0][1:])
    return np.array(placed_z), np.array(placed_x, dtype=float)


def _aligned_rmsd(p: np.ndarray, q: np.ndarray) -> float:
    """RMSD of ``p`` onto ``q`` after the best rotation or reflection (Kabsch; the agent's first direction is
    free)."""
    p, q = p - p.mean(0), q - q.mean(0)
    u, _, vt = np.linalg.svd(p.T @ q)
    return float(np.sqrt((((p @ u @ vt) - q) ** 2).sum(1).mean()))


def _formaldehyde(stretch: float = 0.0):
    """H2CO in build order (C, O, H, H): every atom is bonded to the first, the focus the polish teaches (the first
    atom's element is PPO's to learn; an untrained policy's greedy first element is the vocabulary's first, C)."""
    m = molecule("H2CO")
    m = m[np.argsort([{6: 0, 8: 1, 1: 2}[z] for z in m.numbers], kind="stable")]
    m.positions[1] += stretch * (m.positions[1] - m.positions[0])
    return m


def test_focus_terms_sum_to_the_placement_density():
    m = _methanol()
    demo = Demonstration(m.numbers.copy(), m.positions.copy(), 1.0, 0.5, key="methanol")
    observations, actions = demo.pairs(ELEMENTS, 8)
    batch = {k: torch.as_tensor(np.stack([o[k] for o in observations])) for k in observations[0]}
    policy = _fresh_policy()
    with torch.no_grad():
        dist = policy.distribution(batch)
        actions = torch.as_tensor(actions)
        per_focus = torch.stack([dist.focus_log_prob(actions, torch.full((len(actions),), f)) for f in range(5)], -1)
        placed = torch.arange(5).unsqueeze(0) < torch.arange(1, 6).unsqueeze(1)  # pair t has t atoms placed
        total = torch.logsumexp(per_focus.masked_fill(~placed, -torch.inf), -1)
    torch.testing.assert_close(total, dist.log_prob(actions), rtol=0, atol=1e-5)
    # the focus the polish teaches: the placed atom nearest to the new one (C for its hydrogens, O for its own)
    assert demo.foci().tolist() == [0, 0, 1, 0, 0]


def test_greedy_labelled_swaps_a_symmetric_first_pair_only_when_needed():
    c2 = Atoms("CCC", positions=[[0, 0, 0], [1.5, 0, 0], [2.3, 1.2, 0]])  # the third C bonded to the second
    demo = Demonstration(c2.numbers, c2.positions, 1.0, 0.5, key="c3")
    swapped = demo.greedy_labelled()
    assert swapped.foci()[1] == 0 and np.allclose(swapped.positions[0], c2.positions[1])
    assert demo.greedy_labelled().greedy_labelled().foci()[1] == 0
    m = _formaldehyde()
    other = Demonstration(m.numbers, m.positions, 1.0, 0.5, key="h2co")
    assert other.greedy_labelled() is other  # C and O: no symmetric pair


def test_polish_makes_the_greedy_molecule_the_best_demonstration():
    best = _formaldehyde()
    worse = _formaldehyde(stretch=0.2)
    policy = _fresh_policy()
    imitation = RelaxedImitation(1.0, None, ELEMENTS, 8)
    assert imitation.polish(policy, 10)["steps"] == 0  # empty buffer: nothing to fit, and it says so
    imitation.buffer = [Demonstration(worse.numbers.copy(), worse.positions.copy(), 1.0, 0.5, key="worse"),
                        Demonstration(best.numbers.copy(), best.positions.copy(), 2.0, 1.5, key="best")]
    rates = [g["lr"] for g in policy.optimizer.param_groups]
    numbers, positions = _greedy_build(policy, best.numbers)
    assert not np.array_equal(numbers, best.numbers) or _aligned_rmsd(positions, best.positions) > 0.3
    done = imitation.polish(policy, 600)
    assert done["demonstration_relaxed_return"] == 2.0 and done["pairs"] == len(best) - 1
    assert done["last_loss"] < done["first_loss"] - 3.0
    assert [g["lr"] for g in policy.optimizer.param_groups] == rates  # PPO's own rate is back
    numbers, positions = _greedy_build(policy, best.numbers)
    assert np.array_equal(numbers, best.numbers)
    assert _aligned_rmsd(positions, best.positions) < 0.05


def test_the_demonstrations_next_atom_follows_the_canvas_it_is_superposed_on():
    from molgym.agents.common.imitation import _superposed_next

    rng = np.random.default_rng(1)
    reference = _methanol().positions
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # a random rotation or reflection
    moved = reference @ q.T + np.array([1.0, -2.0, 0.5])
    t = 4
    # the canvas is the moved copy of the first t atoms: the next atom lands on its moved copy; the policy's own
    # placement, weakly tied, moves it little when it is off (it is there to settle what the canvas leaves free)
    np.testing.assert_allclose(_superposed_next(reference[:t + 1], moved[:t], moved[t])[0], moved[t], atol=1e-6)
    assert _superposed_next(reference[:t + 1], moved[:t], moved[t])[1] < 1e-6
    assert _superposed_next(reference[:t + 1], moved[:t] + rng.normal(scale=0.2, size=(t, 3)), moved[t])[1] > 0.05
    np.testing.assert_allclose(_superposed_next(reference[:t + 1], moved[:t], moved[t] + 0.3)[0], moved[t], atol=0.01)
    # a canvas of one atom leaves the direction free: the policy's direction, the reference's distance
    got = _superposed_next(reference[:2], moved[:1], moved[0] + np.array([0.0, 0.0, 3.0]))[0]
    np.testing.assert_allclose(got, moved[0] + np.array([0.0, 0.0, np.linalg.norm(reference[1] - reference[0])]),
                               atol=1e-6)


def test_a_scored_polish_ends_as_its_best_scored_policy():
    best = _formaldehyde()
    policy = _fresh_policy()
    imitation = RelaxedImitation(1.0, None, ELEMENTS, 8)
    imitation.buffer = [Demonstration(best.numbers.copy(), best.positions.copy(), 2.0, 1.5, key="best")]
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    falling = iter([3.0, 2.0, 1.0])  # each later policy scores lower: the unpolished one is kept
    done = imitation.polish(policy, 20, score=lambda: next(falling), score_every=10)
    assert [step for step, _ in done["scores"]] == [0, 10, 20] and done["chosen_step"] == 0
    assert all(torch.equal(start[k], v) for k, v in policy.state_dict().items())
    for group in policy.optimizer.param_groups:
        group["lr"] = 5e-4  # PPO's rate at the end of a run, not the polish's 1e-3
    rising = iter([1.0, 3.0, 2.0])
    done = imitation.polish(policy, 20, score=lambda: next(rising), score_every=10)
    assert done["chosen_step"] == 10 and any(not torch.equal(start[k], v) for k, v in policy.state_dict().items())
    assert all(g["lr"] == 5e-4 for g in policy.optimizer.param_groups)  # PPO's rate, not the saved polish rate
