"""Exact, seedable distributions used by the placement policies.

Every distribution here has a log-density that is exact (normalised in closed form, or by quadrature accurate to
1e-6 for the spherical one) and a sampler that draws from *that* density (exact inverse-CDF or rejection
sampling), so that PPO's importance ratios compare the right numbers. Sampling always takes an explicit
``torch.Generator`` (CPU; random numbers are drawn on the CPU in float64 and moved to the parameters' device), so
nothing here touches torch's global random state.

- :class:`LogNormalMixture`: distances on ``(0, inf)`` (density vanishes at 0, so the Cartesian density
  ``p(d) / d^2`` stays finite at the focus atom).
- :class:`TruncatedNormalMixture`: bond angles on ``[0, pi]``.
- :class:`VonMisesMixture`: dihedral angles on the circle (Best-Fisher rejection sampler).
- :class:`SphericalHarmonicDensity`: directions on the unit sphere with ``log p(u) = sum_l a_l . Y_l(u) - log Z``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "uniform",
    "standard_normal",
    "sample_categorical",
    "LogNormalMixture",
    "TruncatedNormalMixture",
    "VonMisesMixture",
    "SphericalGrid",
    "spherical_grid",
    "sampling_cells",
    "quadrature_error",
    "SphericalHarmonicDensity",
    "real_spherical_harmonics",
    "isotropic_gaussian_log_prob",
]

LOG_2PI = math.log(2.0 * math.pi)
LOG_4PI = math.log(4.0 * math.pi)


# ----------------------------------------------------------------------------------------------- random numbers
def uniform(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in ``(0, 1)`` drawn in float64 on the CPU from ``generator``, returned like ``like``."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    u = u.clamp(min=1e-300)  # torch.rand is in [0, 1); avoid log(0)
    return u.to(device=like.device)


def standard_normal(shape: tuple[int, ...], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal numbers (float64, CPU generator), on ``like``'s device."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=like.device)


def sample_categorical(log_probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``log_probs`` (..., K), drawn from ``generator`` (inverse CDF on float64)."""
    lp = log_probs.detach().double()
    probs = (lp - lp.max(-1, keepdim=True).values).exp()
    cdf = probs.cumsum(-1)
    u = uniform(cdf.shape[:-1], generator, cdf) * cdf[..., -1]
    index = torch.searchsorted(cdf.contiguous(), u.unsqueeze(-1)).squeeze(-1)
    # never return a zero-probability index (u lands exactly on a flat stretch of the CDF only with prob. 0)
    return index.clamp(max=log_probs.shape[-1] - 1)


def isotropic_gaussian_log_prob(x: torch.Tensor, scale: float) -> torch.Tensor:
    """log N(x; 0, scale^2 I_3) for x of shape (..., 3)."""
    return -0.5 * (x * x).sum(-1) / scale**2 - 3.0 * (math.log(scale) + 0.5 * LOG_2PI)


def _ndtr(x: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(x)


# ------------------------------------------------------------------------------------------------- 1D mixtures
@dataclass
class LogNormalMixture:
    """Mixture of log-normals: ``d = exp(z)``, ``z ~ sum_k w_k N(loc_k, scale_k^2)``; support ``(0, inf)``.

    Parameters have shape (..., K); ``log_prob(d)`` broadcasts ``d`` (...) against the batch shape.
    """

    logits: torch.Tensor
    loc: torch.Tensor  # of log d
    scale: torch.Tensor  # of log d

    def log_prob(self, d: torch.Tensor) -> torch.Tensor:
        d = d.clamp(min=1e-12)
        z = torch.log(d).unsqueeze(-1)
        log_w = torch.log_softmax(self.logits, -1)
        log_n = -0.5 * ((z - self.loc) / self.scale) ** 2 - torch.log(self.scale) - 0.5 * LOG_2PI
        return torch.logsumexp(log_w + log_n, -1) - z.squeeze(-1)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        k = sample_categorical(torch.log_softmax(self.logits, -1), generator)
        loc = self.loc.detach().double().gather(-1, k.unsqueeze(-1)).squeeze(-1)
        scale = self.scale.detach().double().gather(-1, k.unsqueeze(-1)).squeeze(-1)
        z = loc + scale * standard_normal(loc.shape, generator, loc)
        return torch.exp(z).to(self.loc.dtype)

    def mode(self) -> torch.Tensor:
        """The median ``exp(loc)`` of the heaviest component (a greedy choice, not the exact mode)."""
        k = self.logits.argmax(-1, keepdim=True)
        return torch.exp(self.loc.gather(-1, k).squeeze(-1))


@dataclass
class TruncatedNormalMixture:
    """Mixture of normals truncated to ``[low, high]`` (each component renormalised exactly on the interval)."""

    logits: torch.Tensor
    loc: torch.Tensor
    scale: torch.Tensor
    low: float
    high: float

    def _log_mass(self) -> torch.Tensor:
        a = (self.low - self.loc) / self.scale
        b = (self.high - self.loc) / self.scale
        return torch.log((_ndtr(b) - _ndtr(a)).clamp(min=1e-300))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(-1)
        log_w = torch.log_softmax(self.logits, -1)
        log_n = -0.5 * ((x - self.loc) / self.scale) ** 2 - torch.log(self.scale) - 0.5 * LOG_2PI
        lp = torch.logsumexp(log_w + log_n - self._log_mass(), -1)
        inside = (x.squeeze(-1) >= self.low) & (x.squeeze(-1) <= self.high)
        return torch.where(inside, lp, torch.full_like(lp, -math.inf))

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        k = sample_categorical(torch.log_softmax(self.logits, -1), generator).unsqueeze(-1)
        loc = self.loc.detach().double().gather(-1, k).squeeze(-1)
        scale = self.scale.detach().double().gather(-1, k).squeeze(-1)
        lo = _ndtr((self.low - loc) / scale)
        hi = _ndtr((self.high - loc) / scale)
        p = lo + uniform(loc.shape, generator, loc) * (hi - lo)
        x = loc + scale * torch.special.ndtri(p.clamp(1e-300, 1.0 - 1e-16))
        return x.clamp(self.low, self.high).to(self.loc.dtype)

    def mode(self) -> torch.Tensor:
        k = self.logits.argmax(-1, keepdim=True)
        return self.loc.gather(-1, k).squeeze(-1).clamp(self.low, self.high)


@dataclass
class VonMisesMixture:
    """Mixture of von Mises distributions on the circle; ``log_prob`` is exact (``log I0`` via ``i0e``)."""

    logits: torch.Tensor
    loc: torch.Tensor
    concentration: torch.Tensor

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(-1)
        k = self.concentration
        log_w = torch.log_softmax(self.logits, -1)
        log_i0 = torch.log(torch.special.i0e(k)) + k
        log_vm = k * torch.cos(x - self.loc) - LOG_2PI - log_i0
        return torch.logsumexp(log_w + log_vm, -1)

    def sample(self, generator: torch.Generator, max_rounds: int = 1000) -> torch.Tensor:
        """Best & Fisher (1979) rejection sampler (wrapped-Cauchy envelope), vectorised, float64."""
        idx = sample_categorical(torch.log_softmax(self.logits, -1), generator).unsqueeze(-1)
        mu = self.loc.detach().double().gather(-1, idx).squeeze(-1)
        kappa = self.concentration.detach().double().gather(-1, idx).squeeze(-1)
        tau = 1.0 + torch.sqrt(1.0 + 4.0 * kappa**2)
        rho = (tau - torch.sqrt(2.0 * tau)) / (2.0 * kappa)
        r = (1.0 + rho**2) / (2.0 * rho)
        out = torch.zeros_like(mu)
        todo = torch.ones_like(mu, dtype=torch.bool)
        for _ in range(max_rounds):
            n = int(todo.sum())
            if n == 0:
                break
            u1, u2, u3 = (uniform((n,), generator, mu) for _ in range(3))
            rr, kk = r[todo], kappa[todo]
            z = torch.cos(math.pi * u1)
            f = (1.0 + rr * z) / (rr + z)
            c = kk * (rr - f)
            accept = (c * (2.0 - c) - u2 > 0) | (torch.log(c / u2) + 1.0 - c >= 0)
            theta = torch.sign(u3 - 0.5) * torch.acos(f.clamp(-1.0, 1.0))
            where = todo.nonzero(as_tuple=True)
            sel = tuple(w[accept] for w in where)
            out[sel] = theta[accept]
            todo[sel] = False
        if todo.any():  # pragma: no cover - acceptance is >= 65% per round
            raise RuntimeError("von Mises sampler did not converge")
        angle = torch.remainder(out + mu + math.pi, 2.0 * math.pi) - math.pi
        return angle.to(self.loc.dtype)

    def mode(self) -> torch.Tensor:
        k = self.logits.argmax(-1, keepdim=True)
        return torch.remainder(self.loc.gather(-1, k).squeeze(-1) + math.pi, 2.0 * math.pi) - math.pi


# ------------------------------------------------------------------------------------------------ the sphere
def real_spherical_harmonics(lmax: int, u: torch.Tensor) -> torch.Tensor:
    """e3nn's real spherical harmonics ``Y_1 .. Y_lmax`` of unit vectors ``u`` (..., 3), 'norm' normalisation
    (``|Y_l(u)| = 1`` for every l), concatenated: (..., (lmax+1)^2 - 1). ``Y_0`` (a constant) is left out."""
    import mace  # noqa: F401  (before e3nn: its constants load with torch.load, see DESIGN.md)
    from e3nn import o3

    return o3.spherical_harmonics(list(range(1, lmax + 1)), u, normalize=False, normalization="norm")


class SphericalGrid:
    """Quadrature and sampling grids on the unit sphere (float64, CPU; moved and cast on demand).

    - Quadrature: Gauss-Legendre in ``cos(theta)`` (``n_theta`` nodes) x uniform ``phi`` (``n_phi`` nodes); the
      weights sum to ``4 pi``. Exact for spherical harmonics of degree < min(2 n_theta, n_phi).
    - Sampling cells: a ``cells_theta x cells_phi`` partition uniform in ``theta`` and ``phi`` with each cell's
      area, its centre and a radius bounding the geodesic distance from the centre to any point of the cell.
    """

    def __init__(self, lmax: int, n_theta: int = 40, n_phi: int = 80, cells_theta: int = 32, cells_phi: int = 64):
        self.lmax, self.n_theta, self.n_phi = int(lmax), int(n_theta), int(n_phi)
        t, w = np.polynomial.legendre.leggauss(self.n_theta)
        phi = 2.0 * np.pi * np.arange(self.n_phi) / self.n_phi
        tt, pp = np.meshgrid(t, phi, indexing="ij")
        st = np.sqrt(1.0 - tt**2)
        nodes = np.stack([st * np.cos(pp), st * np.sin(pp), tt], -1).reshape(-1, 3)
        weights = (w[:, None] * np.full(self.n_phi, 2.0 * np.pi / self.n_phi)[None, :]).reshape(-1)
        self.nodes = torch.as_tensor(nodes)
        self.log_weights = torch.log(torch.as_tensor(weights))
        self.ylm_nodes = real_spherical_harmonics(self.lmax, self.nodes)

        th_edges = np.linspace(0.0, np.pi, cells_theta + 1)
        ph_edges = np.linspace(0.0, 2.0 * np.pi, cells_phi + 1)
        th_lo, th_hi = th_edges[:-1], th_edges[1:]
        th_c = 0.5 * (th_lo + th_hi)
        dphi = 2.0 * np.pi / cells_phi
        sin_max = np.where((th_lo <= np.pi / 2) & (th_hi >= np.pi / 2), 1.0, np.maximum(np.sin(th_lo), np.sin(th_hi)))
        # path centre -> (theta, phi_c) along the meridian, then along the parallel: an upper bound on geodesics
        radius = 0.5 * (th_hi - th_lo) + sin_max * 0.5 * dphi
        area = (np.cos(th_lo) - np.cos(th_hi)) * dphi
        ph_c = 0.5 * (ph_edges[:-1] + ph_edges[1:])
        TC, PC = np.meshgrid(th_c, ph_c, indexing="ij")
        centres = np.stack([np.sin(TC) * np.cos(PC), np.sin(TC) * np.sin(PC), np.cos(TC)], -1).reshape(-1, 3)
        self.cell_centres = torch.as_tensor(centres)
        self.ylm_cells = real_spherical_harmonics(self.lmax, self.cell_centres)
        self.cell_radius = torch.as_tensor(np.repeat(radius, cells_phi))
        self.cell_log_area = torch.log(torch.as_tensor(np.repeat(area, cells_phi)))
        self.cell_cos_lo = torch.as_tensor(np.repeat(np.cos(th_hi), cells_phi))  # cos is decreasing in theta
        self.cell_cos_hi = torch.as_tensor(np.repeat(np.cos(th_lo), cells_phi))
        self.cell_phi_lo = torch.as_tensor(np.tile(ph_edges[:-1], cells_theta))
        self.cell_dphi = dphi
        self._cache: dict = {}

    def on(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(nodes, log_weights, Y at nodes) on ``like``'s device and dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(
                x.to(device=like.device, dtype=like.dtype) for x in (self.nodes, self.log_weights, self.ylm_nodes)
            )
        return self._cache[key]


@functools.lru_cache(maxsize=8)
def spherical_grid(lmax: int, n_theta: int = 32, n_phi: int = 64, cells_theta: int = 32,
                   cells_phi: int = 64) -> SphericalGrid:
    """A shared :class:`SphericalGrid` (read-only after construction; building one takes a moment)."""
    return SphericalGrid(lmax, n_theta, n_phi, cells_theta, cells_phi)


def sampling_cells(max_concentration: float) -> tuple[int, int]:
    """``(cells_theta, cells_phi)`` of a sampling partition fine enough for densities up to ``max_concentration``.

    Inside a cell the rejection sampler's envelope exceeds the density by up to ``Lip x radius``, so its acceptance
    falls like ``exp(-concentration x cell size)``: 32 x 64 cells serve up to 30 (the default bound is 20), and each
    further 30 adds 32 x 64. Measured on 256 coefficient vectors at the bound (L = 2): 32 x 64 cells draw at 20 in
    0.05 s and at 40 in 0.5 s; at 80 they do not converge, 96 x 192 cells draw in 0.6 s."""
    k = max(1, math.ceil(max_concentration / 30.0))
    return 32 * k, 64 * k


def _product_rule(n_theta: int, n_phi: int) -> tuple[torch.Tensor, torch.Tensor]:
    t, w = np.polynomial.legendre.leggauss(n_theta)
    phi = 2.0 * np.pi * np.arange(n_phi) / n_phi
    tt, pp = np.meshgrid(t, phi, indexing="ij")
    st = np.sqrt(1.0 - tt**2)
    nodes = np.stack([st * np.cos(pp), st * np.sin(pp), tt], -1).reshape(-1, 3)
    weights = np.repeat(w, n_phi) * (2.0 * np.pi / n_phi)
    return torch.as_tensor(nodes), torch.log(torch.as_tensor(weights))


@functools.lru_cache(maxsize=16)
def quadrature_error(lmax: int, bound: float, n_theta: int, n_phi: int, trials: int = 32, seed: int = 0) -> float:
    """Largest ``|log Z|`` error of the ``n_theta x n_phi`` product rule against one twice as fine, over
    ``trials`` seeded random coefficient vectors with ``sum_l |a_l| = bound`` (the worst case a policy allows)."""
    rng = np.random.default_rng(seed)
    a = torch.as_tensor(rng.normal(size=(trials, (lmax + 1) ** 2 - 1)))
    split = torch.as_tensor(rng.dirichlet(np.ones(lmax), size=trials))
    for i, s in enumerate(_l_slices(lmax)):
        a[:, s] *= bound * split[:, i:i + 1] / a[:, s].norm(dim=-1, keepdim=True)
    errors = []
    for n_t, n_p in ((n_theta, n_phi), (2 * n_theta, 2 * n_phi)):
        nodes, log_w = _product_rule(n_t, n_p)
        errors.append(torch.logsumexp(a @ real_spherical_harmonics(lmax, nodes).T + log_w, -1))
    return float((errors[0] - errors[1]).abs().max())


def _l_slices(lmax: int) -> list[slice]:
    return [slice(l * l - 1, (l + 1) * (l + 1) - 1) for l in range(1, lmax + 1)]


class SphericalHarmonicDensity:
    """Directions ``u`` on the unit sphere with ``p(u) = exp(sum_{l=1..L} a_l . Y_l(u)) / Z``.

    ``coefficients`` (..., (L+1)^2 - 1) hold ``a_1 .. a_L`` in e3nn's order; under a rotation ``R`` of the frame
    they transform with the Wigner matrices ``D_l(R)`` (they come from equivariant features), so
    ``p_{Ra}(Ru) = p_a(u)``. ``log Z`` is computed by the product quadrature of ``grid`` (accurate to 1e-6 as long
    as ``sum_l |a_l| <= bound``; the policies enforce the bound). Sampling is exact rejection sampling: a cell
    of ``grid``'s sampling partition is chosen with probability proportional to ``area * exp(U_cell)``, where
    ``U_cell = f(centre) + Lip * radius`` bounds ``f`` on the cell (Bernstein's inequality on the sphere gives
    ``|grad (a_l . Y_l)| <= l |a_l|``), a point is drawn uniformly (by area) in the cell and accepted with
    probability ``exp(f(u) - U_cell)``; accepted points have density exactly ``exp(f) / Z``.
    """

    def __init__(self, coefficients: torch.Tensor, grid: SphericalGrid):
        self.coefficients = coefficients
        self.grid = grid
        _, log_w, ylm = grid.on(coefficients)
        self.log_normaliser = torch.logsumexp(coefficients @ ylm.T + log_w, -1)

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """Log-density (w.r.t. the area measure) at unit vectors ``u`` (..., 3), broadcast against the batch."""
        y = real_spherical_harmonics(self.grid.lmax, u)
        return (y * self.coefficients).sum(-1) - self.log_normaliser

    def lipschitz(self) -> torch.Tensor:
        """Upper bound on the gradient norm of ``f = sum_l a_l . Y_l`` on the sphere."""
        a = self.coefficients.detach().double()
        return sum(l * a[..., s].norm(dim=-1) for l, s in zip(range(1, self.grid.lmax + 1), _l_slices(self.grid.lmax)))

    def sample(self, generator: torch.Generator, chunk: int = 256) -> torch.Tensor:
        """Exact samples, one per batch element: (..., 3)."""
        a = self.coefficients.detach().double()
        batch_shape = a.shape[:-1]
        a = a.reshape(-1, a.shape[-1])
        lip = self.lipschitz().reshape(-1)
        parts = [self._sample_rows(a[i:i + chunk], lip[i:i + chunk], generator) for i in range(0, a.shape[0], chunk)]
        out = torch.cat(parts) if parts else a.new_zeros(0, 3)
        return out.reshape(*batch_shape, 3).to(self.coefficients.dtype)

    def _sample_rows(self, a: torch.Tensor, lip: torch.Tensor, generator: torch.Generator,
                     candidates: int = 16, max_rounds: int = 1000) -> torch.Tensor:
        """Rejection sampling for a chunk of rows: ``candidates`` proposals per pending row and round; each row
        keeps its first accepted proposal (sequential trials of one rejection sampler, so still exact)."""
        g = self.grid
        dev = a.device
        upper = a @ g.ylm_cells.to(dev).T + lip.reshape(-1, 1).to(dev) * g.cell_radius.to(dev)  # (M, C)
        log_mass = upper + g.cell_log_area.to(dev)
        cdf = torch.exp(log_mass - log_mass.max(-1, keepdim=True).values).cumsum(-1)
        cdf = cdf / cdf[:, -1:]
        cos_lo_all, cos_hi_all = g.cell_cos_lo.to(dev), g.cell_cos_hi.to(dev)
        phi_lo_all = g.cell_phi_lo.to(dev)
        out = torch.zeros(a.shape[0], 3, dtype=torch.float64, device=dev)
        todo = torch.ones(a.shape[0], dtype=torch.bool, device=dev)
        n_cells = cdf.shape[1]
        for _ in range(max_rounds):
            rows = todo.nonzero(as_tuple=True)[0]
            n = rows.numel()
            if n == 0:
                break
            k = candidates
            r0, r1, r2, r3 = (uniform((n, k), generator, a) for _ in range(4))
            cell = torch.searchsorted(cdf[rows].contiguous(), r0).clamp(max=n_cells - 1)  # (n, k)
            cos_lo, cos_hi = cos_lo_all[cell], cos_hi_all[cell]
            t = cos_lo + r1 * (cos_hi - cos_lo)
            phi = phi_lo_all[cell] + r2 * g.cell_dphi
            sin_t = torch.sqrt((1.0 - t * t).clamp(min=0.0))
            u = torch.stack([sin_t * torch.cos(phi), sin_t * torch.sin(phi), t], -1)  # (n, k, 3)
            f = (real_spherical_harmonics(g.lmax, u) * a[rows].unsqueeze(1)).sum(-1)
            accept = torch.log(r3) <= f - upper[rows.unsqueeze(1), cell]
            got = accept.any(-1)
            first = accept.to(torch.int8).argmax(-1)  # index of the first accepted proposal
            chosen = u[torch.arange(n, device=dev), first]
            out[rows[got]] = chosen[got]
            todo[rows[got]] = False
        if todo.any():  # pragma: no cover - the envelope is tight (acceptance >= exp(-2 Lip radius))
            raise RuntimeError("spherical sampler did not converge")
        return out

    def mode(self, tol: float = 1e-6, max_rounds: int = 200) -> torch.Tensor:
        """The direction of largest density (..., 3): the best quadrature node, refined by a pattern search.

        The quadrature grid alone would round every greedy direction to its spacing (about 5.6 degrees, enough
        to strain a built molecule's bond angles, and to make greedy decoding depend on the frame). From the best
        node, each round compares the current point with 8 points at geodesic distance ``r`` around it: it moves
        to the best if that is higher, otherwise halves ``r`` (per direction), until ``r < tol`` radians. ``r``
        starts at the grid's largest gap: the search stays on the peak the grid picked."""
        a = self.coefficients.detach().double()
        nodes, _, ylm = self.grid.on(a)
        a_rows = a.reshape(-1, a.shape[-1])
        u = nodes[(a_rows @ ylm.T).argmax(-1)]
        k = torch.arange(8, dtype=a.dtype, device=a.device) * (math.pi / 4.0)
        ring = torch.stack([torch.cos(k), torch.sin(k)], -1)  # (8, 2)
        r = torch.full(u.shape[:1], max(2.0 * math.pi / self.grid.n_phi, math.pi / self.grid.n_theta),
                       dtype=a.dtype, device=a.device)
        for _ in range(max_rounds):
            live = r >= tol
            if not live.any():
                break
            uu, rr, aa = u[live], r[live].unsqueeze(-1).unsqueeze(-1), a_rows[live]
            e1, e2 = _tangent_basis(uu)
            step = ring[:, :1] * e1.unsqueeze(-2) + ring[:, 1:] * e2.unsqueeze(-2)  # (n, 8, 3)
            candidates = torch.cat([uu.unsqueeze(-2), torch.cos(rr) * uu.unsqueeze(-2) + torch.sin(rr) * step], -2)
            f = (real_spherical_harmonics(self.grid.lmax, candidates) * aa.unsqueeze(-2)).sum(-1)  # (n, 9)
            best = f.argmax(-1)
            moved = torch.nn.functional.normalize(candidates[torch.arange(len(best)), best], dim=-1)
            u[live] = moved
            r[live] = torch.where(best == 0, r[live] * 0.5, r[live])
        return u.reshape(*a.shape[:-1], 3).to(self.coefficients.dtype)


def _tangent_basis(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors (..., 3) orthogonal to the unit vectors ``u`` and to each other."""
    axis = torch.zeros_like(u)
    axis[..., 0] = 1.0
    axis[u[..., 0].abs() > 0.9] = torch.tensor([0.0, 1.0, 0.0], dtype=u.dtype, device=u.device)
    e1 = torch.nn.functional.normalize(torch.linalg.cross(u, axis), dim=-1)
    return e1, torch.linalg.cross(u, e1)
