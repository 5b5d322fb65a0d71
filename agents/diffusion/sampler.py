"""EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2) for the energy-based denoiser.

Noise levels ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, then 0. At
each step the state is optionally "churned" (noise added to raise sigma by a factor ``1 + gamma``, with
``gamma = min(S_churn / N, sqrt(2) - 1)`` inside ``[S_tmin, S_tmax]``), an Euler step of the probability-flow
ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` is taken and corrected with Heun's second-order rule (except at
the last step, to sigma = 0). ``S_churn = 0`` gives the deterministic ODE sampler.

Positions start from, and their noise stays in, the zero-centre-of-mass subspace. All randomness comes from one
``torch.Generator`` seeded by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from molgym.agents.diffusion.model import ELEMENTS, EnergyDenoiser, center, fully_connected_edges

__all__ = ["SamplerSettings", "noise_levels", "heun_sample"]


@dataclass(frozen=True)
class SamplerSettings:
    """Heun sampler options (EDM's names); ``sigma_max`` and ``sigma_min`` in Å."""

    steps: int = 40
    sigma_min: float = 0.002
    sigma_max: float = 10.0
    rho: float = 7.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0

    def check(self) -> None:
        if self.steps < 1:
            raise ValueError(f"sampler steps must be at least 1, got {self.steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        if self.rho <= 0:
            raise ValueError(f"rho must be positive, got {self.rho}")
        if self.s_churn < 0:
            raise ValueError(f"S_churn must be >= 0, got {self.s_churn}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["s_tmax"] = None if math.isinf(self.s_tmax) else self.s_tmax
        return d


def noise_levels(settings: SamplerSettings) -> torch.Tensor:
    """The ``steps + 1`` noise levels of the schedule, decreasing from ``sigma_max`` to 0."""
    n = settings.steps
    i = torch.arange(n, dtype=torch.float64)
    hi, lo = settings.sigma_max ** (1 / settings.rho), settings.sigma_min ** (1 / settings.rho)
    sigmas = (hi + i / max(n - 1, 1) * (lo - hi)) ** settings.rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def heun_sample(model: EnergyDenoiser, sizes: list[int], generator: torch.Generator,
                settings: SamplerSettings = SamplerSettings(), fixed_h: torch.Tensor | None = None,
                callback: Callable[[int, float, torch.Tensor, torch.Tensor], None] | None = None,
                heavy_only: bool = False):
    """Sample molecules with ``sizes`` atoms; returns ``(positions [N, 3], atomic numbers [N], batch [N])``.

    ``fixed_h`` (``[N, 5]`` scaled one-hot) fixes the elements (formula-conditioned generation) by replacement:
    at noise level ``sigma`` the element channels are set to ``fixed_h + sigma * eps`` (one seeded ``eps`` per
    atom), the forward process's own noisy version of the known elements, so the network sees inputs like those
    it was trained on, and only the positions are integrated.
    ``callback(i, sigma, x, h)`` is called after each step. ``heavy_only`` (a model trained without hydrogens)
    decodes each atom's element among the heavy channels only.
    """
    settings.check()
    sizes_t = torch.as_tensor(sizes, dtype=torch.long)
    if len(sizes_t) == 0 or int(sizes_t.min()) < 1:
        raise ValueError(f"every molecule needs at least one atom, got sizes {sizes}")
    edge_index, batch = fully_connected_edges(sizes_t)
    num_graphs, n_nodes = len(sizes_t), int(sizes_t.sum())
    dtype = next(model.parameters()).dtype
    sigmas = noise_levels(settings)
    x = center(torch.randn(n_nodes, 3, generator=generator, dtype=dtype), batch, num_graphs) * sigmas[0].item()
    h = torch.randn(n_nodes, len(ELEMENTS), generator=generator, dtype=dtype) * sigmas[0].item()
    if fixed_h is not None:
        if tuple(fixed_h.shape) != (n_nodes, len(ELEMENTS)):
            raise ValueError(f"fixed_h must have shape {(n_nodes, len(ELEMENTS))}, got {tuple(fixed_h.shape)}")
        fixed_h = fixed_h.to(dtype)
        eps_h = h / sigmas[0].item()

    def denoise(x_, h_, sigma: float):
        if fixed_h is not None:
            h_ = fixed_h + sigma * eps_h
        d_x, d_h, _ = model(x_, h_, torch.full((num_graphs,), sigma, dtype=dtype), edge_index, batch)
        return center(d_x, batch, num_graphs), (h_ if fixed_h is not None else d_h)

    gamma_max = min(settings.s_churn / settings.steps, math.sqrt(2) - 1)
    for i in range(settings.steps):
        t_cur, t_next = sigmas[i].item(), sigmas[i + 1].item()
        gamma = gamma_max if settings.s_tmin <= t_cur <= settings.s_tmax else 0.0
        t_hat = t_cur * (1 + gamma)
        if gamma > 0:
            scale = math.sqrt(t_hat ** 2 - t_cur ** 2) * settings.s_noise
            x = x + center(torch.randn(x.shape, generator=generator, dtype=dtype), batch, num_graphs) * scale
            if fixed_h is None:
                h = h + torch.randn(h.shape, generator=generator, dtype=dtype) * scale
        d_x, d_h = denoise(x, h, t_hat)
        dx, dh = (x - d_x) / t_hat, (h - d_h) / t_hat
        x_next, h_next = x + (t_next - t_hat) * dx, h + (t_next - t_hat) * dh
        if t_next > 0:
            d_x2, d_h2 = denoise(x_next, h_next, t_next)
            dx2, dh2 = (x_next - d_x2) / t_next, (h_next - d_h2) / t_next
            x_next = x + (t_next - t_hat) * 0.5 * (dx + dx2)
            h_next = h + (t_next - t_hat) * 0.5 * (dh + dh2)
        x, h = x_next, h_next
        if callback is not None:
            callback(i, t_next, x, h)
    final_h = fixed_h if fixed_h is not None else h
    if heavy_only and fixed_h is None:
        final_h = final_h.clone()
        final_h[:, ELEMENTS.index(1)] = -math.inf
    numbers = torch.as_tensor(ELEMENTS)[final_h.argmax(dim=-1)]
    return x.detach(), numbers, batch
