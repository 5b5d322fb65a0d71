"""The covariant model (Simm et al., ICLR 2021, "Symmetry-aware actor-critic for 3D molecular design").

Encoder: E(3)-equivariant message passing over the canvas (e3nn; irreps ``C x 0e + c x 1o + c x 2e [+ c x 3o]``),
conditioned on the bag through the initial invariant atom features.

Action, given the canvas:

1. focus atom ``f``: categorical over the placed atoms (invariant logits);
2. element ``e | f``: categorical over the elements left in the bag;
3. distance ``d | f, e``: mixture of log-normals (invariant parameters);
4. direction ``u | f, e`` on the unit sphere: ``p(u) = exp(sum_{l=1..L} a_l . Y_l(u)) / Z`` where the coefficients
   ``a_l`` are weighted sums of the focus atom's equivariant ``l``-features (weights from invariants), so they
   rotate with the canvas; ``Z`` by quadrature (:class:`~molgym.agents.common.distributions.SphericalGrid`).
   ``sum_l |a_l|`` is kept below ``max_concentration`` (smoothly), which is what keeps the quadrature accurate
   to 1e-6.

The new atom goes to ``x = x_f + d u``; its Cartesian density is ``p(d) p(u) / d^2``.

Symmetry: for any orthogonal ``Q`` (rotations and reflections) ``pi(Q a | Q s) = pi(a | s)`` and
``V(Q s) = V(s)``, up to the quadrature error of ``Z`` (~1e-12). Canvases with one atom have zero ``l >= 1``
features, so the direction is exactly uniform; a collinear canvas gives an axially symmetric direction density.
The first atom of an episode is drawn from an isotropic Gaussian at the origin (invariant under ``Q``).
"""

from __future__ import annotations

from typing import Any

import torch

from molgym.agents.common.distributions import (
    LogNormalMixture,
    SphericalHarmonicDensity,
    quadrature_error,
    real_spherical_harmonics,
    sampling_cells,
    spherical_grid,
)
from molgym.agents.common.layers import CanvasGraph, EquivariantInteraction, e3nn_without_torchscript, mlp
from molgym.agents.common.model import Canvas, Encoded, PlacementModel, select_element, select_focus_element

__all__ = ["CovariantModel"]

_PARITY = {0: "e", 1: "o", 2: "e", 3: "o"}


def _check_direction_settings(lmax: int, min_distance_scale: float, max_distance_scale: float,
                              max_concentration: float, quadrature: tuple[int, int]) -> None:
    """``ValueError`` for settings the covariant model cannot honour: ``lmax`` outside 1..3, distance widths out
    of order, or a quadrature that does not normalise the direction density to 1e-6 at ``max_concentration``."""
    if not 1 <= lmax <= 3:
        raise ValueError(f"lmax must be 1, 2 or 3, got {lmax}")
    if not 0 < min_distance_scale < max_distance_scale:
        raise ValueError("need 0 < min_distance_scale < max_distance_scale")
    if not max_concentration > 0:
        raise ValueError(f"max_concentration must be positive, got {max_concentration}")
    error = quadrature_error(int(lmax), float(max_concentration), *quadrature)
    if error > 1e-6:
        raise ValueError(
            f"quadrature={tuple(quadrature)} normalises the direction density only to {error:.1e} at "
            f"max_concentration={max_concentration:g} (lmax={lmax}); use a finer quadrature "
            "(e.g. (40, 80) up to 30, (48, 96) up to 80) or a lower max_concentration"
        )


class CovariantModel(PlacementModel):
    """See the module docstring.

    Args:
        n_elements: number of elements in the action vocabulary.
        channels: invariant channels (``0e``).
        vector_channels: channels of each ``l >= 1`` irrep.
        lmax: highest ``l`` of the features and of the direction density (1..3).
        num_interactions: message-passing layers.
        cutoff: graph cutoff (Å).
        num_radial: Bessel functions of the radial basis.
        distance_components: log-normal components of the distance.
        min_distance_scale, max_distance_scale: bounds of each component's width (in log Å).
        max_concentration: bound on ``sum_l |a_l|`` (the largest log-density contrast of the direction).
        quadrature: ``(n_theta, n_phi)`` of the normalising quadrature (finer for a higher ``max_concentration``;
            the sampling partition follows the bound, :func:`~molgym.agents.common.distributions.sampling_cells`).
        **kwargs: :class:`~molgym.agents.common.model.PlacementModel` options.
    """

    def __init__(self, n_elements: int, channels: int = 32, vector_channels: int = 8, lmax: int = 2,
                 num_interactions: int = 2, cutoff: float = 5.0, num_radial: int = 8, distance_components: int = 4,
                 min_distance_scale: float = 0.01, max_distance_scale: float = 0.5, max_concentration: float = 20.0,
                 quadrature: tuple[int, int] = (32, 64), **kwargs: Any):
        super().__init__(n_elements, channels=channels, **kwargs)
        _check_direction_settings(lmax, min_distance_scale, max_distance_scale, max_concentration, quadrature)
        self.lmax, self.cutoff, self.num_radial = int(lmax), float(cutoff), int(num_radial)
        self.vector_channels = int(vector_channels)
        self.distance_components = int(distance_components)
        self.min_distance_scale, self.max_distance_scale = float(min_distance_scale), float(max_distance_scale)
        self.max_concentration = float(max_concentration)
        irreps = f"{channels}x0e + " + " + ".join(f"{vector_channels}x{l}{_PARITY[l]}" for l in range(1, lmax + 1))
        self.irreps_hidden = irreps
        with e3nn_without_torchscript():
            self.layers = torch.nn.ModuleList(
                EquivariantInteraction(f"{channels}x0e" if i == 0 else irreps, irreps, lmax_sh=lmax,
                                       num_radial=num_radial)
                for i in range(num_interactions)
            )
        head_in = channels + self.element_channels
        k = self.distance_components
        self.distance_head = mlp([head_in, channels, 3 * k], last_zero=True)
        with torch.no_grad():  # start with components spread over 0.9 .. 1.9 Å, width 0.1 (log Å)
            self.distance_head[-1].bias[k:2 * k] = torch.linspace(-1.5, 1.5, k)
        self.direction_head = mlp([head_in, channels, lmax * vector_channels])
        self.grid = spherical_grid(lmax, *quadrature, *sampling_cells(self.max_concentration))

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Unknown keys, and the direction settings :meth:`__init__` would refuse, as ``ValueError`` before any
        model is built (``molgym train`` checks its ``--model-kwargs`` with this)."""
        super().check_options(options)
        settings = {**cls.option_defaults(), **options}
        _check_direction_settings(*(settings[k] for k in ("lmax", "min_distance_scale", "max_distance_scale",
                                                          "max_concentration", "quadrature")))

    # --------------------------------------------------------------------------------------- encoder
    def node_features(self, canvas: Canvas, h0: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        import mace  # noqa: F401  (before e3nn: its constants load with torch.load, see DESIGN.md)
        from e3nn import o3

        graph = CanvasGraph(canvas.positions, canvas.mask, self.cutoff, self.num_radial)
        sh = o3.spherical_harmonics(list(range(self.lmax + 1)), graph.vectors, normalize=True, normalization="component")
        h = h0
        for layer in self.layers:
            h = layer(h, graph, sh) * canvas.mask.unsqueeze(-1).to(h.dtype)
        c, v = self.channels, self.vector_channels
        scalars = h[..., :c]
        vectors, start = [], c
        for l in range(1, self.lmax + 1):
            dim = v * (2 * l + 1)
            vectors.append(h[..., start:start + dim].reshape(*h.shape[:-1], v, 2 * l + 1))
            start += dim
        return scalars, {"vectors": vectors}

    # ------------------------------------------------------------------------------------------ heads
    def _heads(self, enc: Encoded) -> dict[str, torch.Tensor]:
        """Per (focus, element) parameters: distance mixture (B, N, E, K) x 3 and direction coefficients
        (B, N, E, (L+1)^2 - 1), cached on ``enc``."""
        if "heads" in enc.extra:
            return enc.extra["heads"]
        x = self.head_inputs(enc)
        k = self.distance_components
        raw = self.distance_head(x)
        logits, loc, scale_raw = raw[..., :k], raw[..., k:2 * k], raw[..., 2 * k:]
        loc = 0.3 + 0.5 * torch.tanh(loc)  # median exp(loc) in [0.82, 2.2] Å
        lo, hi = self.min_distance_scale, self.max_distance_scale
        scale = lo + (hi - lo) * torch.sigmoid(scale_raw - 1.6)  # ~0.1 at initialisation
        weights = self.direction_head(x)  # (B, N, E, L * v)
        coeffs = []
        for i, vec in enumerate(enc.extra["vectors"]):  # vec: (B, N, v, 2l+1)
            w = weights[..., i * self.vector_channels:(i + 1) * self.vector_channels]
            coeffs.append(torch.einsum("bnec,bncm->bnem", w, vec))
        a = torch.cat(coeffs, -1)
        norms = torch.stack([c.norm(dim=-1) for c in coeffs], -1)  # (B, N, E, L)
        total = norms.sum(-1, keepdim=True)
        # smooth bound: sum_l |a_l| < max_concentration
        a = a * (self.max_concentration / torch.sqrt(self.max_concentration**2 + total**2))
        heads = {"logits": logits, "loc": loc, "scale": scale, "coefficients": a}
        enc.extra["heads"] = heads
        return heads

    def position_log_prob(self, enc: Encoded, canvas: Canvas, element: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        heads = self._heads(enc)
        delta = x.unsqueeze(2) - canvas.positions.unsqueeze(0)  # (S, B, N, 3)
        d = delta.norm(dim=-1).clamp(min=1e-9)
        u = delta / d.unsqueeze(-1)
        dist = LogNormalMixture(*(select_element(heads[key], element) for key in ("logits", "loc", "scale")))
        a = select_element(heads["coefficients"], element)  # (S, B, N, D)
        if element.shape[0] < self.n_elements:  # few actions per canvas (PPO: one): normalise only those
            log_z = SphericalHarmonicDensity(a, self.grid).log_normaliser
        else:  # many actions per canvas: normalise every (focus, element) once
            log_z = select_element(self._log_normaliser(enc), element)
        log_dir = (real_spherical_harmonics(self.lmax, u) * a).sum(-1) - log_z
        return dist.log_prob(d) + log_dir - 2.0 * torch.log(d)

    def _log_normaliser(self, enc: Encoded) -> torch.Tensor:
        if "log_z" not in enc.extra:
            enc.extra["log_z"] = SphericalHarmonicDensity(self._heads(enc)["coefficients"], self.grid).log_normaliser
        return enc.extra["log_z"]

    def _conditional(self, enc: Encoded, focus: torch.Tensor, element: torch.Tensor):
        heads = self._heads(enc)
        dist = LogNormalMixture(*(select_focus_element(heads[k], focus, element) for k in ("logits", "loc", "scale")))
        direction = SphericalHarmonicDensity(select_focus_element(heads["coefficients"], focus, element), self.grid)
        return dist, direction

    def sample_position(self, enc: Encoded, canvas: Canvas, focus: torch.Tensor, element: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
        dist, direction = self._conditional(enc, focus, element)
        d = dist.sample(generator)
        u = direction.sample(generator)
        b = torch.arange(focus.shape[0], device=focus.device)
        return canvas.positions[b, focus] + d.unsqueeze(-1) * u

    def mode_position(self, enc: Encoded, canvas: Canvas, focus: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        dist, direction = self._conditional(enc, focus, element)
        b = torch.arange(focus.shape[0], device=focus.device)
        return canvas.positions[b, focus] + dist.mode().unsqueeze(-1) * direction.mode()
