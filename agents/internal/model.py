"""The internal-coordinate model (Simm et al., ICML 2020, "Reinforcement learning for molecular design guided by
quantum mechanics").

Encoder: invariant continuous-filter convolutions (SchNet-like) over interatomic distances, conditioned on the bag.

Action, given the canvas:

1. focus atom ``f`` and element ``e | f``: masked categoricals (as in the covariant model);
2. distance ``d`` from the focus: mixture of log-normals;
3. angle ``alpha`` in ``[0, pi]`` between the new bond and the focus's *first reference* ``n1`` (its nearest
   neighbour on the canvas; distances are compared rounded to 1e-6 Å with ties broken by atom index, so that equal
   bond lengths pick the same reference in every rotated frame): mixture of normals truncated to ``[0, pi]``;
4. dihedral ``psi`` in ``(-pi, pi]`` about the ``f -> n1`` axis, measured from the plane of ``n2`` (the nearest
   other atom that is not collinear with ``f`` and ``n1``): mixture of von Mises.

The local frame of the focus is ``e1 = (x_n1 - x_f) / |.|``, ``e2`` = the unit component of ``x_n2 - x_f``
orthogonal to ``e1``, ``e3 = e1 x e2``; the new atom goes to
``x = x_f + d (cos(alpha) e1 + sin(alpha) (cos(psi) e2 + sin(psi) e3))``, whose Cartesian density is
``p(d) p(alpha) p(psi) / (d^2 sin(alpha))``.

Degenerate canvases keep the density exact: with one atom there is no ``n1`` and the direction is uniform on the
sphere (``p(d) / (4 pi d^2)``); with no valid ``n2`` (two atoms, or every other atom collinear with ``f, n1``
within ``|sin| < 1e-3``) the dihedral is uniform (``p(d) p(alpha) / (2 pi d^2 sin(alpha))``). The first atom is
drawn from an isotropic Gaussian at the origin.

Symmetry: rotations ``R`` (proper, ``det R = 1``): ``pi(R a | R s) = pi(a | s)``, ``V(R s) = V(s)``. A reflection
flips the sign of every dihedral, so this agent is *not* reflection-invariant unless the dihedral is uniform
(canvases of one or two atoms, collinear canvases).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from molgym.agents.common.distributions import (
    LOG_2PI,
    LOG_4PI,
    LogNormalMixture,
    TruncatedNormalMixture,
    VonMisesMixture,
    standard_normal,
    uniform,
)
from molgym.agents.common.layers import CanvasGraph, InvariantInteraction, mlp
from molgym.agents.common.model import Canvas, Encoded, PlacementModel, select_element, select_focus_element

__all__ = ["InternalModel", "local_frames"]

COLLINEAR_TOLERANCE = 1e-3


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def local_frames(positions: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference atoms and local frame of every atom as a focus (see the module docstring).

    Returns ``has_n1``, ``has_n2`` (B, N) bool and ``e1``, ``e2``, ``e3`` (B, N, 3) (an arbitrary orthonormal
    completion of ``e1`` where there is no ``n2``, the x/y/z axes where there is no ``n1``: the density does not
    depend on them there).
    """
    b, n, _ = positions.shape
    pos = positions.detach()
    vec = pos[:, None, :, :] - pos[:, :, None, :]  # vec[b, f, j] = x_j - x_f
    dist = vec.norm(dim=-1)
    eye = torch.eye(n, dtype=torch.bool, device=pos.device)
    other = mask[:, None, :] & mask[:, :, None] & ~eye
    # Reference atoms are the nearest by distance rounded to 1e-6 Å, ties broken by index (argmin returns the
    # first minimum): equal bond lengths (common in built molecules) then pick the same atom in every frame.
    key = torch.round(dist * 1e6)
    far = torch.full_like(dist, math.inf)
    d1 = torch.where(other, key, far)
    n1 = d1.argmin(-1)  # (B, N)
    has_n1 = other.any(-1)
    bi = torch.arange(b, device=pos.device)[:, None]
    fi = torch.arange(n, device=pos.device)[None, :]
    v1 = vec[bi, fi, n1]  # (B, N, 3)
    e1 = _unit(v1)
    e1 = torch.where(has_n1.unsqueeze(-1), e1, torch.tensor([0.0, 0.0, 1.0], dtype=pos.dtype, device=pos.device))
    sin = torch.cross(e1.unsqueeze(2).expand_as(vec), _unit(vec), dim=-1).norm(dim=-1)  # (B, N, N)
    valid2 = other & (n1.unsqueeze(-1) != torch.arange(n, device=pos.device)) & (sin > COLLINEAR_TOLERANCE)
    n2 = torch.where(valid2, key, far).argmin(-1)
    has_n2 = valid2.any(-1) & has_n1
    v2 = vec[bi, fi, n2]
    perp = v2 - (v2 * e1).sum(-1, keepdim=True) * e1
    # arbitrary completion where there is no n2: the axis least aligned with e1
    axis = torch.eye(3, dtype=pos.dtype, device=pos.device)[e1.abs().argmin(-1)]
    fallback = axis - (axis * e1).sum(-1, keepdim=True) * e1
    e2 = _unit(torch.where(has_n2.unsqueeze(-1), perp, fallback))
    e3 = torch.cross(e1, e2, dim=-1)
    return {"has_n1": has_n1, "has_n2": has_n2, "e1": e1, "e2": e2, "e3": e3}


class InternalModel(PlacementModel):
    """See the module docstring.

    Args:
        n_elements: number of elements in the action vocabulary.
        channels: width of the invariant features.
        num_interactions: continuous-filter convolution layers.
        cutoff: graph cutoff (Å); num_radial: Bessel functions.
        components: mixture components of the distance, angle and dihedral distributions.
        **kwargs: :class:`~molgym.agents.common.model.PlacementModel` options.
    """

    def __init__(self, n_elements: int, channels: int = 64, num_interactions: int = 3, cutoff: float = 5.0,
                 num_radial: int = 8, components: int = 4, **kwargs: Any):
        super().__init__(n_elements, channels=channels, **kwargs)
        self.cutoff, self.num_radial, self.components = float(cutoff), int(num_radial), int(components)
        self.layers = torch.nn.ModuleList(InvariantInteraction(channels, num_radial) for _ in range(num_interactions))
        head_in = channels + self.element_channels
        k = self.components
        self.distance_head = mlp([head_in, channels, 3 * k], last_zero=True)
        self.angle_head = mlp([head_in, channels, 3 * k], last_zero=True)
        self.dihedral_head = mlp([head_in, channels, 3 * k], last_zero=True)
        with torch.no_grad():
            self.distance_head[-1].bias[k:2 * k] = torch.linspace(-1.5, 1.5, k)
            self.angle_head[-1].bias[k:2 * k] = torch.linspace(-1.0, 2.0, k)  # means ~ 73 .. 155 degrees
            self.dihedral_head[-1].bias[k:2 * k] = torch.linspace(-math.pi, math.pi, k + 1)[:-1]

    def node_features(self, canvas: Canvas, h0: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        graph = CanvasGraph(canvas.positions, canvas.mask, self.cutoff, self.num_radial)
        h = h0
        for layer in self.layers:
            h = layer(h, graph) * canvas.mask.unsqueeze(-1).to(h.dtype)
        return h, {"frames": local_frames(canvas.positions, canvas.mask)}

    def _heads(self, enc: Encoded) -> dict[str, torch.Tensor]:
        if "heads" in enc.extra:
            return enc.extra["heads"]
        x = self.head_inputs(enc)
        k = self.components
        d, a, t = self.distance_head(x), self.angle_head(x), self.dihedral_head(x)
        heads = {
            "d_logits": d[..., :k], "d_loc": 0.3 + 0.5 * torch.tanh(d[..., k:2 * k]),
            "d_scale": 0.01 + 0.49 * torch.sigmoid(d[..., 2 * k:] - 1.6),
            "a_logits": a[..., :k], "a_loc": math.pi * torch.sigmoid(a[..., k:2 * k]),
            "a_scale": 0.02 + 0.98 * torch.sigmoid(a[..., 2 * k:] - 1.0),
            "t_logits": t[..., :k], "t_loc": t[..., k:2 * k],
            "t_conc": 0.01 + torch.nn.functional.softplus(t[..., 2 * k:] + 0.5).clamp(max=100.0),
        }
        enc.extra["heads"] = heads
        return heads

    def _distributions(self, heads: dict[str, torch.Tensor], pick) -> tuple:
        d = LogNormalMixture(pick(heads["d_logits"]), pick(heads["d_loc"]), pick(heads["d_scale"]))
        a = TruncatedNormalMixture(pick(heads["a_logits"]), pick(heads["a_loc"]), pick(heads["a_scale"]), 0.0, math.pi)
        t = VonMisesMixture(pick(heads["t_logits"]), pick(heads["t_loc"]), pick(heads["t_conc"]))
        return d, a, t

    def position_log_prob(self, enc: Encoded, canvas: Canvas, element: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        fr = enc.extra["frames"]
        dist_d, dist_a, dist_t = self._distributions(self._heads(enc), lambda t: select_element(t, element))
        delta = x.unsqueeze(2) - canvas.positions.unsqueeze(0)  # (S, B, N, 3)
        d = delta.norm(dim=-1).clamp(min=1e-9)
        u = delta / d.unsqueeze(-1)
        cos_a = (u * fr["e1"]).sum(-1)
        sin_a = torch.cross(u, fr["e1"].expand_as(u), dim=-1).norm(dim=-1).clamp(min=1e-12)
        alpha = torch.atan2(sin_a, cos_a)
        psi = torch.atan2((u * fr["e3"]).sum(-1), (u * fr["e2"]).sum(-1))
        lp_dihedral = torch.where(fr["has_n2"], dist_t.log_prob(psi), torch.full_like(psi, -LOG_2PI))
        lp_direction = dist_a.log_prob(alpha) - torch.log(sin_a) + lp_dihedral
        lp_direction = torch.where(fr["has_n1"], lp_direction, torch.full_like(lp_direction, -LOG_4PI))
        return dist_d.log_prob(d) - 2.0 * torch.log(d) + lp_direction

    def _pick(self, focus: torch.Tensor, element: torch.Tensor):
        return lambda t: select_focus_element(t, focus, element)

    def _place(self, canvas: Canvas, enc: Encoded, focus: torch.Tensor, d, alpha, psi, u_free) -> torch.Tensor:
        fr = enc.extra["frames"]
        b = torch.arange(focus.shape[0], device=focus.device)
        e1, e2, e3 = fr["e1"][b, focus], fr["e2"][b, focus], fr["e3"][b, focus]
        u = torch.cos(alpha)[:, None] * e1 + torch.sin(alpha)[:, None] * (
            torch.cos(psi)[:, None] * e2 + torch.sin(psi)[:, None] * e3)
        u = torch.where(fr["has_n1"][b, focus].unsqueeze(-1), u, u_free)
        return canvas.positions[b, focus] + d.unsqueeze(-1) * u

    def sample_position(self, enc: Encoded, canvas: Canvas, focus: torch.Tensor, element: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
        fr = enc.extra["frames"]
        b = torch.arange(focus.shape[0], device=focus.device)
        dist_d, dist_a, dist_t = self._distributions(self._heads(enc), self._pick(focus, element))
        d, alpha, psi = dist_d.sample(generator), dist_a.sample(generator), dist_t.sample(generator)
        ref = canvas.positions
        psi_uniform = ((2.0 * uniform(psi.shape, generator, psi) - 1.0) * math.pi).to(ref.dtype)
        psi = torch.where(fr["has_n2"][b, focus], psi, psi_uniform)
        g = standard_normal((focus.shape[0], 3), generator, ref).to(ref.dtype)
        u_free = g / g.norm(dim=-1, keepdim=True)
        return self._place(canvas, enc, focus, d, alpha, psi, u_free)

    def mode_position(self, enc: Encoded, canvas: Canvas, focus: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        dist_d, dist_a, dist_t = self._distributions(self._heads(enc), self._pick(focus, element))
        d, alpha, psi = dist_d.mode(), dist_a.mode(), dist_t.mode()
        u_free = torch.zeros(focus.shape[0], 3, dtype=canvas.positions.dtype, device=focus.device)
        u_free[:, 2] = 1.0
        return self._place(canvas, enc, focus, d, alpha, psi, u_free)
