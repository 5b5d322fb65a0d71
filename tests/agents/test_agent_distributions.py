"""The building-block distributions of the agents: normalised, and their samplers draw from their densities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import mace  # noqa: F401  (e3nn's constants need it on torch >= 2.6)
from molgym.agents.common.distributions import (
    LogNormalMixture,
    SphericalGrid,
    SphericalHarmonicDensity,
    TruncatedNormalMixture,
    VonMisesMixture,
    real_spherical_harmonics,
    sampling_cells,
)

D = torch.float64


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _coefficients(rng: np.random.Generator, lmax: int, total: float) -> torch.Tensor:
    """Random coefficients with sum_l |a_l| = total (the worst case the policies allow when total = bound)."""
    a = torch.as_tensor(rng.normal(size=(lmax + 1) ** 2 - 1), dtype=D)
    split = rng.dirichlet(np.ones(lmax))
    for l, w in zip(range(1, lmax + 1), split):
        s = slice(l * l - 1, (l + 1) ** 2 - 1)
        a[s] *= total * w / a[s].norm()
    return a


def test_quadrature_matches_von_mises_fisher_closed_form():
    grid = SphericalGrid(2, 32, 64)
    n = torch.as_tensor([0.3, -0.5, 0.81], dtype=D)
    n = n / n.norm()
    y1 = real_spherical_harmonics(1, n)  # |Y_1(u)| = 1 and Y_1 is linear in u, so Y_1(u) . Y_1(n) = u . n
    for kappa in (0.1, 5.0, 20.0):
        a = torch.cat([kappa * y1, torch.zeros(5, dtype=D)])
        exact = math.log(4 * math.pi * math.sinh(kappa) / kappa)
        assert abs(SphericalHarmonicDensity(a, grid).log_normaliser.item() - exact) < 1e-9


@pytest.mark.parametrize("lmax", [1, 2, 3])
def test_quadrature_accurate_to_1e6_at_the_concentration_bound(lmax):
    rng = np.random.default_rng(lmax)
    grid, fine = SphericalGrid(lmax, 32, 64), SphericalGrid(lmax, 120, 240)
    a = torch.stack([_coefficients(rng, lmax, 20.0) for _ in range(50)])
    err = (SphericalHarmonicDensity(a, grid).log_normaliser - SphericalHarmonicDensity(a, fine).log_normaliser).abs()
    assert err.max().item() < 1e-6


def test_spherical_density_is_rotation_invariant_with_wigner_coefficients():
    from e3nn import o3

    rng = np.random.default_rng(1)
    grid = SphericalGrid(2, 32, 64)
    a = _coefficients(rng, 2, 12.0)
    u = torch.as_tensor(rng.normal(size=(20, 3)), dtype=D)
    u = u / u.norm(dim=-1, keepdim=True)
    R = o3.rand_matrix(dtype=D)
    D12 = o3.Irreps("1o + 2e").D_from_matrix(R)
    lp = SphericalHarmonicDensity(a, grid).log_prob(u)
    lp_rot = SphericalHarmonicDensity(D12 @ a, grid).log_prob(u @ R.T)
    assert torch.allclose(lp, lp_rot, atol=1e-9)


def test_spherical_mode_is_the_density_maximum_not_a_grid_node_and_rotates_with_the_coefficients():
    """Greedy directions: the maximum of the density (no grid rounding), so they rotate with the canvas."""
    from e3nn import o3

    rng = np.random.default_rng(4)
    grid, fine = SphericalGrid(3, 32, 64), SphericalGrid(3, 120, 240)
    a = torch.stack([_coefficients(rng, 3, 12.0) for _ in range(40)])
    u = SphericalHarmonicDensity(a, grid).mode()
    assert torch.allclose(u.norm(dim=-1), torch.ones(40, dtype=D), atol=1e-12)
    f = (real_spherical_harmonics(3, u) * a).sum(-1)
    assert (f >= (a @ fine.ylm_nodes.T).max(-1).values - 1e-9).all()  # at least the best of 28,800 nodes
    v = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((real_spherical_harmonics(3, v) * a).sum(), v)
    assert (g - (g * u).sum(-1, keepdim=True) * u).norm(dim=-1).max() < 1e-3  # a stationary point on the sphere
    grid_nodes = grid.nodes[(a @ grid.ylm_nodes.T).argmax(-1)]
    assert ((u * grid_nodes).sum(-1) < 1.0 - 1e-6).all()  # not rounded to the quadrature grid
    R = o3.rand_matrix(dtype=D)
    a_rot = a @ o3.Irreps("1o + 2e + 3o").D_from_matrix(R).T
    u_rot = SphericalHarmonicDensity(a_rot, grid).mode()
    assert torch.acos(((u @ R.T) * u_rot).sum(-1).clamp(-1.0, 1.0)).max() < 1e-4


@pytest.mark.parametrize("total", [0.0, 4.0, 20.0])
def test_spherical_sampler_matches_density(total):
    """Chi-square of 8k samples over 8 x 16 (theta, phi) cells against the cells' probabilities (fine grid)."""
    rng = np.random.default_rng(int(total))
    grid = SphericalGrid(2, 32, 64)
    a = _coefficients(rng, 2, total) if total else torch.zeros(8, dtype=D)
    dens = SphericalHarmonicDensity(a.expand(8_000, 8), grid)
    u = dens.sample(_gen(7))
    assert torch.allclose(u.norm(dim=-1), torch.ones(8_000, dtype=D))

    def cell(v):
        th = torch.arccos(v[..., 2].clamp(-1, 1))
        ph = torch.remainder(torch.atan2(v[..., 1], v[..., 0]), 2 * math.pi)
        return (th / math.pi * 8).long().clamp(max=7) * 16 + (ph / (2 * math.pi) * 16).long().clamp(max=15)

    fine = SphericalGrid(2, 128, 256)
    p_nodes = torch.exp(SphericalHarmonicDensity(a, fine).log_prob(fine.nodes) + fine.log_weights)
    expected = torch.zeros(128, dtype=D).index_add_(0, cell(fine.nodes), p_nodes)
    assert abs(expected.sum().item() - 1) < 1e-9
    observed = torch.bincount(cell(u), minlength=128).double()
    keep = expected * 8_000 >= 5
    obs, exp = observed[keep].numpy(), (expected[keep] * 8_000).numpy()
    exp *= obs.sum() / exp.sum()
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def _moments(u: torch.Tensor) -> torch.Tensor:
    """``u`` and the six independent entries of ``u u^T``, per row: (..., 9)."""
    outer = (u.unsqueeze(-1) * u.unsqueeze(-2)).reshape(*u.shape[:-1], 9)
    return torch.cat([u, outer[..., [0, 1, 2, 4, 5, 8]]], -1)


def test_spherical_sampler_above_the_default_bound_matches_the_density_moments():
    """At a concentration of 80 (four times the default bound; directions about 6 degrees wide), on the quadrature
    and sampling partition a covariant model uses there: the sampler converges, and the means of ``u`` and of
    ``u u^T`` over 10k samples match the density's (fine quadrature) within 4 standard errors (a density 10 %
    less concentrated gives 5). Moments, not bins: at this sharpness node-to-bin assignment is the larger error."""
    rng = np.random.default_rng(80)
    a = _coefficients(rng, 2, 80.0)
    grid = SphericalGrid(2, 48, 96, *sampling_cells(80.0))
    samples = _moments(SphericalHarmonicDensity(a.expand(10_000, 8), grid).sample(_gen(3)))
    fine = SphericalGrid(2, 128, 256)
    w = torch.exp(SphericalHarmonicDensity(a, fine).log_prob(fine.nodes) + fine.log_weights)
    exact = (w.unsqueeze(-1) * _moments(fine.nodes)).sum(0)
    se = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - exact).abs() < 4 * se).all(), (samples.mean(0) - exact) / se
    assert samples[:, :3].mean(0).norm() > 0.9  # the density is sharp, so the test has a peak to get right


def _params(rng, k, lo, hi, scale_lo, scale_hi):
    logits = torch.as_tensor(rng.normal(size=k), dtype=D)
    loc = torch.as_tensor(rng.uniform(lo, hi, size=k), dtype=D)
    scale = torch.as_tensor(rng.uniform(scale_lo, scale_hi, size=k), dtype=D)
    return logits, loc, scale


def _check_1d(dist, lo, hi, seed, n=8_000):
    x = torch.linspace(lo, hi, 400_001, dtype=D)
    pdf = torch.exp(dist.log_prob(x))
    mass = torch.trapezoid(pdf, x).item()
    assert abs(mass - 1) < 1e-6
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]).numpy() * np.diff(x.numpy()))])

    def batch(t):
        return type(dist)(*(p.expand(n, -1) if torch.is_tensor(p) else p for p in vars(dist).values()))

    samples = batch(dist).sample(_gen(seed)).numpy()
    assert stats.kstest(samples, lambda s: np.interp(s, x.numpy(), cdf)).pvalue > 1e-3


def test_log_normal_mixture():
    rng = np.random.default_rng(0)
    logits, loc, scale = _params(rng, 4, -0.2, 0.8, 0.02, 0.5)
    _check_1d(LogNormalMixture(logits, loc, scale), 1e-6, 40.0, seed=1)


def test_truncated_normal_mixture():
    rng = np.random.default_rng(1)
    logits, loc, scale = _params(rng, 4, 0.0, math.pi, 0.02, 1.0)
    _check_1d(TruncatedNormalMixture(logits, loc, scale, 0.0, math.pi), 0.0, math.pi, seed=2)
    dist = TruncatedNormalMixture(logits, loc, scale, 0.0, math.pi)
    assert dist.log_prob(torch.tensor([-0.1, 3.2], dtype=D)).isneginf().all()


@pytest.mark.parametrize("kmax", [0.05, 3.0, 100.0])
def test_von_mises_mixture(kmax):
    rng = np.random.default_rng(2)
    logits, loc, _ = _params(rng, 3, -math.pi, math.pi, 0.1, 1.0)
    conc = torch.as_tensor(rng.uniform(0.01, kmax, size=3), dtype=D)
    _check_1d(VonMisesMixture(logits, loc, conc), -math.pi, math.pi, seed=3)


def test_covariant_model_refuses_a_quadrature_too_coarse_for_its_concentration():
    from molgym.agents.covariant import CovariantModel

    with pytest.raises(ValueError, match="finer quadrature"):
        CovariantModel(3, channels=4, vector_channels=2, num_interactions=1, max_concentration=200.0,
                       quadrature=(8, 16))
