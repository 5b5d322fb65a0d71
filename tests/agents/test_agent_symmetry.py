"""Symmetries of the agents, in float64: log pi(Q a | Q s) = log pi(a | s) and V(Q s) = V(s) to 1e-4.

Covariant: every orthogonal Q (rotations and reflections). Internal: rotations (a reflection flips dihedrals).
Both: translations of non-empty canvases. Canvases of 0, 1, 2 atoms, 3 collinear atoms and 6 atoms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from agent_helpers import canvas_positions, make_policy, observation, repeat, transform, transform_actions

KINDS = ["empty", "one", "two", "collinear", "many"]


def _orthogonal(seed: int, proper: bool) -> np.ndarray:
    r = Rotation.random(random_state=seed).as_matrix()
    return r if proper else -r  # -R: a rotation composed with the inversion (det = -1)


def _check(policy, obs, actions, obs2, actions2):
    with torch.no_grad():
        lp, v = policy.log_prob(obs, actions), policy.predict_values(obs)
        lp2, v2 = policy.log_prob(obs2, actions2), policy.predict_values(obs2)
    assert torch.isfinite(lp).all()
    assert torch.allclose(lp, lp2, atol=1e-4, rtol=0), (lp - lp2).abs().max()
    assert torch.allclose(v, v2, atol=1e-4, rtol=0)


def _sampled(policy, obs, n=6, seed=0):
    gen = torch.Generator()
    gen.manual_seed(seed)
    obs_n = repeat(obs, n)
    with torch.no_grad():
        return obs_n, policy.distribution(obs_n).sample(gen)


@pytest.mark.parametrize("agent", ["covariant", "internal"])
@pytest.mark.parametrize("kind", KINDS)
def test_rotation_invariance(agent, kind):
    rng = np.random.default_rng(KINDS.index(kind))
    policy = make_policy(agent)
    obs, actions = _sampled(policy, observation(canvas_positions(kind, rng), rng))
    for seed in range(3):
        R = _orthogonal(seed, proper=True)
        _check(policy, obs, actions, transform(obs, R), transform_actions(actions, R))


@pytest.mark.parametrize("kind", KINDS)
def test_covariant_reflection_invariance(kind):
    rng = np.random.default_rng(10 + KINDS.index(kind))
    policy = make_policy("covariant")
    obs, actions = _sampled(policy, observation(canvas_positions(kind, rng), rng))
    for seed in range(2):
        Q = _orthogonal(seed, proper=False)
        _check(policy, obs, actions, transform(obs, Q), transform_actions(actions, Q))
    mirror = np.diag([1.0, 1.0, -1.0])
    _check(policy, obs, actions, transform(obs, mirror), transform_actions(actions, mirror))


def test_internal_agent_is_chiral_on_generic_canvases():
    """Documented limitation: a reflection changes the internal agent's density (dihedrals flip sign)."""
    rng = np.random.default_rng(3)
    policy = make_policy("internal")
    obs, actions = _sampled(policy, observation(canvas_positions("many", rng), rng))
    mirror = np.diag([1.0, 1.0, -1.0])
    with torch.no_grad():
        lp = policy.log_prob(obs, actions)
        lp2 = policy.log_prob(transform(obs, mirror), transform_actions(actions, mirror))
    assert (lp - lp2).abs().max() > 1e-3


def test_covariant_greedy_action_rotates_with_the_canvas():
    """The greedy (deterministic) action is the density's maximum, not a grid node: rotating a generic canvas
    rotates the greedy placement (the degenerate canvases have no unique greedy direction)."""
    rng = np.random.default_rng(7)
    policy = make_policy("covariant")
    obs = observation(canvas_positions("many", rng), rng)
    with torch.no_grad():
        action = policy.distribution(obs).mode()
        for seed in range(3):
            Q = _orthogonal(seed, proper=True)
            rotated = policy.distribution(transform(obs, Q)).mode()
            assert torch.equal(rotated[..., 0], action[..., 0])
            assert torch.allclose(rotated, transform_actions(action, Q), atol=1e-4, rtol=0)


@pytest.mark.parametrize("agent", ["covariant", "internal"])
@pytest.mark.parametrize("kind", ["one", "two", "many"])
def test_translation_invariance(agent, kind):
    rng = np.random.default_rng(20 + len(kind))
    policy = make_policy(agent)
    obs, actions = _sampled(policy, observation(canvas_positions(kind, rng), rng))
    shift = np.array([0.7, -1.1, 0.4])
    eye = np.eye(3)
    _check(policy, obs, actions, transform(obs, eye, shift), transform_actions(actions, eye, shift))


@pytest.mark.parametrize("agent", ["covariant", "internal"])
def test_padding_and_batching_do_not_change_the_density(agent):
    rng = np.random.default_rng(5)
    policy = make_policy(agent, max_atoms=8)
    canvases = [canvas_positions(k, rng) for k in ("empty", "two", "many")]
    obs = [observation(c, rng, max_atoms=8) for c in canvases]
    batch = {k: np.concatenate([o[k] for o in obs]) for k in obs[0]}
    gen = torch.Generator()
    gen.manual_seed(1)
    with torch.no_grad():
        actions = policy.distribution(batch).sample(gen)
        together = policy.log_prob(batch, actions)
        alone = torch.cat([policy.log_prob(o, actions[i:i + 1]) for i, o in enumerate(obs)])
    assert torch.allclose(together, alone, atol=1e-10)
