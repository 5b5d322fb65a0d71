"""The agents' action densities over (element, 3D position): they integrate to one, and the policies' samplers
draw from them. Integrals are importance-sampled with scrambled Sobol points from a proposal q that covers every
focus atom with log-uniform radii in [0.05, 30] Å and uniform directions (a Gaussian for the empty canvas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.stats import qmc

from agent_helpers import canvas_positions, make_policy, observation

KINDS = ["empty", "one", "two", "collinear", "many"]
R_LO, R_HI = 0.05, 30.0


def _proposal(centres: np.ndarray, m: int, seed: int, first_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``m`` points and their log-density under the proposal."""
    u = qmc.Sobol(d=4, scramble=True, seed=seed).random(m)
    if len(centres) == 0:
        s = 3.0 * first_scale
        x = s * stats.norm.ppf(u[:, 1:4])
        log_q = stats.norm.logpdf(x / s).sum(-1) - 3 * math.log(s)
        return x, log_q
    g = np.minimum((u[:, 0] * len(centres)).astype(int), len(centres) - 1)
    r = R_LO * (R_HI / R_LO) ** u[:, 1]
    t, phi = 2 * u[:, 2] - 1, 2 * math.pi * u[:, 3]
    st = np.sqrt(1 - t * t)
    x = centres[g] + r[:, None] * np.stack([st * np.cos(phi), st * np.sin(phi), t], -1)
    d = np.linalg.norm(x[:, None, :] - centres[None], axis=-1)
    inside = (d >= R_LO) & (d <= R_HI)
    q = np.where(inside, 1.0 / (d * math.log(R_HI / R_LO) * 4 * math.pi * d * d), 0.0).mean(-1)
    return x, np.log(q)


def _weights(policy, obs, x, log_q) -> np.ndarray:
    """pi(e, x) / q(x) for every element e: (E, m)."""
    out = []
    with torch.no_grad():
        dist = policy.distribution(obs)
        for e in range(policy.n_elements):
            actions = torch.as_tensor(np.concatenate([np.full((len(x), 1), e), x], -1))[:, None, :]
            out.append(np.exp(dist.log_prob(actions)[:, 0].numpy() - log_q))
    return np.stack(out)


def _canvas(kind: str, seed: int):
    rng = np.random.default_rng(seed)
    pos = canvas_positions(kind, rng)
    return pos, observation(pos, rng)


@pytest.mark.parametrize("agent", ["covariant", "internal"])
@pytest.mark.parametrize("kind", KINDS)
def test_density_integrates_to_one(agent, kind):
    policy = make_policy(agent)
    pos, obs = _canvas(kind, KINDS.index(kind))
    m = 2**14 if kind == "empty" else 2**16  # the empty canvas's Gaussian proposal is nearly the density itself
    x, log_q = _proposal(pos, m, seed=1, first_scale=policy.model.first_atom_scale)
    total = _weights(policy, obs, x, log_q).sum(0).mean()
    assert abs(total - 1.0) < 0.02, total


def _bins(actions: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Bin index of each action: element x nearest atom x distance-to-it band x z-hemisphere."""
    e = actions[:, 0].round().astype(int)
    x = actions[:, 1:]
    if len(centres) == 0:
        centres = np.zeros((1, 3))
    d = np.linalg.norm(x[:, None, :] - centres[None], axis=-1)
    near = d.argmin(-1)
    band = np.digitize(d[np.arange(len(x)), near], [0.9, 1.1, 1.3, 1.6])
    up = (x[:, 2] > centres[near, 2]).astype(int)
    return ((e * len(centres) + near) * 5 + band) * 2 + up


@pytest.mark.parametrize(
    "agent, kind",
    # the empty canvas's first atom is drawn by code shared by both agents: once is enough
    [("covariant", "empty"), ("covariant", "two"), ("covariant", "many"), ("internal", "two"), ("internal", "many")],
)
def test_sampler_matches_density(agent, kind):
    """Chi-square of 3000 sampled actions over bins against the bins' probabilities under the density."""
    policy = make_policy(agent)
    pos, obs = _canvas(kind, 100 + KINDS.index(kind))
    n = 3000
    gen = torch.Generator()
    gen.manual_seed(3)
    with torch.no_grad():
        actions = policy.distribution(obs).sample_n(n, gen)[:, 0].numpy()
    # the reference bin probabilities must be far more precise than 3000 samples: importance sampling needs more
    # points where the density is sharper (6 atoms, concentrated directions)
    m = 2**18 if kind == "many" else 2**17
    x, log_q = _proposal(pos, m, seed=2, first_scale=policy.model.first_atom_scale)
    w = _weights(policy, obs, x, log_q)  # (E, m)
    size = 3 * max(len(pos), 1) * 10
    expected = np.zeros(size)
    for e in range(w.shape[0]):
        labels = _bins(np.concatenate([np.full((len(x), 1), e), x], -1), pos)
        expected += np.bincount(labels, weights=w[e], minlength=size) / len(x)
    assert abs(expected.sum() - 1) < 0.05  # a sanity check; the precise integral is the test above
    observed = np.bincount(_bins(actions, pos), minlength=size).astype(float)
    big = expected * n >= 5
    obs_counts = np.append(observed[big], observed[~big].sum())
    exp_counts = np.append(expected[big], expected[~big].sum()) * n
    exp_counts *= obs_counts.sum() / exp_counts.sum()
    keep = exp_counts > 0
    assert stats.chisquare(obs_counts[keep], exp_counts[keep]).pvalue > 1e-3
