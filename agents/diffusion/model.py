"""The noise-conditioned energy network and its EDM preconditioning.

The network is an *energy*: a MACE-style stack (mace-torch's radial embedding, residual interaction blocks and
symmetric-contraction product blocks, e3nn spherical harmonics) on a fully connected graph of each molecule,
whose node attributes are the continuous (noisy) element encoding concatenated with an embedding of the noise
level. Per-node invariant read-outs summed over the molecule give one scalar ``E(x~, h~, sigma)``.

The denoiser is built from its gradient, as in SiMGen's energy-based diffusion model:

    F_x = -dE/dx~,  F_h = -dE/dh~
    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))

with EDM's preconditioning (Karras et al. 2022) applied separately to positions and element channels, each with
its own ``sigma_data``. The score ``(D - x) / sigma^2`` is then itself minus the gradient of a scalar (a harmonic
term plus the learned energy), which is what makes the score analysis meaningful: the score *is* a force.

Positions live in Å, centred (zero centre of mass, the translation-free subspace); elements are a one-hot over
H, C, N, O, F scaled by :data:`ELEMENT_SCALE` (EDM's 0.25), diffused with the same sigma as the positions.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "ELEMENTS",
    "ELEMENT_SCALE",
    "ModelConfig",
    "EnergyNetwork",
    "Preconditioning",
    "EnergyDenoiser",
    "fully_connected_edges",
    "center",
]

#: Atomic numbers of the element channels, in order.
ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9)
#: One-hot scale of the element channels (EDM's): elements are decided late in the reverse process.
ELEMENT_SCALE: float = 0.25


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and preconditioning constants (stored in every checkpoint).

    ``r_max`` is in units of the network input ``c_in * x`` (about ``sigma_data_x`` Å at low noise), large enough
    that every pair of a QM9 molecule is within it: the graph is effectively fully connected.
    """

    channels: int = 32
    max_L: int = 1
    max_ell: int = 2
    correlation: int = 2
    num_interactions: int = 2
    num_bessel: int = 10
    r_max: float = 6.0
    radial_mlp: tuple[int, ...] = (32, 32)
    noise_features: int = 3  # frequencies of the Fourier embedding of c_noise (2 x this + 1 attributes)
    sigma_data_x: float = 1.3
    sigma_data_h: float = 0.1
    avg_num_neighbors: float = 17.0
    #: False: the model is trained on and samples heavy atoms only (QM9 has at most 9: about 4x fewer pairs than
    #: with hydrogens); the generator then adds hydrogens by valence rules. The H channel stays in the encoding
    #: (always empty) so both kinds share one architecture.
    hydrogens: bool = True

    def as_dict(self) -> dict:
        d = asdict(self)
        d["radial_mlp"] = list(self.radial_mlp)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["radial_mlp"] = tuple(d.get("radial_mlp", (32, 32)))
        return cls(**d)


def center(x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """``x`` with each molecule's mean position subtracted (projection onto the zero-centre-of-mass subspace)."""
    sums = torch.zeros(num_graphs, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, batch, x)
    counts = torch.zeros(num_graphs, dtype=x.dtype, device=x.device).index_add_(
        0, batch, torch.ones_like(batch, dtype=x.dtype))
    return x - (sums / counts.clamp(min=1).unsqueeze(1))[batch]


def fully_connected_edges(sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_index [2, E], batch [N])`` of the fully connected graphs (no self loops) of molecules of ``sizes``."""
    sizes = sizes.to(torch.long)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    senders, receivers = [], []
    cache: dict[int, torch.Tensor] = {}
    for n, off in zip(sizes.tolist(), offsets.tolist()):
        if n not in cache:
            idx = torch.arange(n)
            s, r = torch.meshgrid(idx, idx, indexing="ij")
            keep = s != r
            cache[n] = torch.stack([s[keep], r[keep]])
        senders.append(cache[n][0] + off)
        receivers.append(cache[n][1] + off)
    if not senders:
        return torch.zeros(2, 0, dtype=torch.long), batch
    return torch.stack([torch.cat(senders), torch.cat(receivers)]), batch


class EnergyNetwork(torch.nn.Module):
    """``E(x~, h~, c_noise)``: one invariant scalar per molecule from MACE blocks (see the module docstring)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        import mace  # noqa: F401  (before e3nn: e3nn 0.4.4 loads its constants with torch.load)
        from e3nn import o3
        from mace.modules.blocks import (
            EquivariantProductBasisBlock,
            LinearNodeEmbeddingBlock,
            LinearReadoutBlock,
            NonLinearReadoutBlock,
            RadialEmbeddingBlock,
            RealAgnosticResidualInteractionBlock,
        )

        self.config = config
        n_attrs = len(ELEMENTS) + 2 * config.noise_features + 1
        self.register_buffer("frequencies", 2.0 ** torch.arange(config.noise_features, dtype=torch.float32))
        attr_irreps = o3.Irreps(f"{n_attrs}x0e")
        scalars = o3.Irreps(f"{config.channels}x0e")
        hidden = o3.Irreps(" + ".join(f"{config.channels}x{l}{'o' if l % 2 else 'e'}"
                                      for l in range(config.max_L + 1)))
        sh_irreps = o3.Irreps.spherical_harmonics(config.max_ell)
        interaction_irreps = (sh_irreps * config.channels).sort()[0].simplify()
        self.spherical_harmonics = o3.SphericalHarmonics(sh_irreps, normalize=True, normalization="component")
        self.radial = RadialEmbeddingBlock(r_max=config.r_max, num_bessel=config.num_bessel, num_polynomial_cutoff=5)
        edge_feats = o3.Irreps(f"{config.num_bessel}x0e")
        self.embedding = LinearNodeEmbeddingBlock(attr_irreps, scalars)
        self.interactions = torch.nn.ModuleList()
        self.products = torch.nn.ModuleList()
        self.readouts = torch.nn.ModuleList()
        feats = scalars
        for layer in range(config.num_interactions):
            last = layer == config.num_interactions - 1
            out = scalars if last else hidden
            self.interactions.append(RealAgnosticResidualInteractionBlock(
                node_attrs_irreps=attr_irreps, node_feats_irreps=feats, edge_attrs_irreps=sh_irreps,
                edge_feats_irreps=edge_feats, target_irreps=interaction_irreps, hidden_irreps=out,
                avg_num_neighbors=config.avg_num_neighbors, radial_MLP=list(config.radial_mlp),
            ))
            self.products.append(EquivariantProductBasisBlock(
                node_feats_irreps=interaction_irreps, target_irreps=out, correlation=config.correlation,
                num_elements=n_attrs, use_sc=True,
            ))
            if last:
                self.readouts.append(NonLinearReadoutBlock(out, o3.Irreps("16x0e"), torch.nn.functional.silu))
            else:
                self.readouts.append(LinearReadoutBlock(out))
            feats = out

    def noise_embedding(self, c_noise: torch.Tensor) -> torch.Tensor:
        """Fourier features ``[1, sin(2^k c), cos(2^k c)]`` of ``c_noise = ln(sigma) / 4`` (one row per node)."""
        arg = c_noise.unsqueeze(-1) * self.frequencies
        return torch.cat([torch.ones_like(c_noise).unsqueeze(-1), torch.sin(arg), torch.cos(arg)], dim=-1)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c_noise: torch.Tensor, edge_index: torch.Tensor,
                batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        """Energies ``[num_graphs]`` of the batch; ``c_noise`` is per node."""
        attrs = torch.cat([h, self.noise_embedding(c_noise)], dim=-1)
        vectors = x[edge_index[1]] - x[edge_index[0]]
        lengths = vectors.norm(dim=-1, keepdim=True)
        edge_attrs = self.spherical_harmonics(vectors)
        edge_feats, _ = self.radial(lengths, attrs, edge_index, None)
        feats = self.embedding(attrs)
        node_energy = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for interaction, product, readout in zip(self.interactions, self.products, self.readouts):
            feats, sc = interaction(node_attrs=attrs, node_feats=feats, edge_attrs=edge_attrs,
                                    edge_feats=edge_feats, edge_index=edge_index)
            feats = product(node_feats=feats, sc=sc, node_attrs=attrs)
            node_energy = node_energy + readout(feats).squeeze(-1)
        return torch.zeros(num_graphs, dtype=x.dtype, device=x.device).index_add_(0, batch, node_energy)


class Preconditioning:
    """EDM's preconditioning for one component with data standard deviation ``sigma_data``.

    ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``, ``c_in = 1 / sqrt(s^2 + sd^2)`` and
    loss weight ``(s^2 + sd^2) / (s sd)^2 = 1 / c_out^2``: the network's target has unit variance at every noise
    level, and the weighted loss on ``D`` equals the plain loss on the network output.
    """

    def __init__(self, sigma_data: float):
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def c_skip(self, sigma):
        return self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)

    def c_out(self, sigma):
        return sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def c_in(self, sigma):
        return 1.0 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def loss_weight(self, sigma):
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    @staticmethod
    def c_noise(sigma):
        return torch.log(sigma) / 4 if isinstance(sigma, torch.Tensor) else math.log(sigma) / 4


class EnergyDenoiser(torch.nn.Module):
    """EDM denoiser ``D(x, h; sigma)`` from the gradient of :class:`EnergyNetwork`.

    ``forward`` takes noisy centred positions ``x [N, 3]`` (Å), noisy scaled element encodings ``h [N, 5]``,
    per-molecule noise levels ``sigma [B]`` and the graph, and returns ``(D_x, D_h, energy)``. With
    ``create_graph=True`` (training) the result can be differentiated again.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        with warnings.catch_warnings():
            # e3nn 0.4.4 scripts its Linear layers at construction; torch.jit warns about their annotations on
            # every build. Harmless, and noise in every `molgym generate diffusion` / `molgym bench` run.
            warnings.filterwarnings("ignore", message=".*TorchScript type system.*", category=UserWarning)
            self.energy = EnergyNetwork(self.config)
        self.pre_x = Preconditioning(self.config.sigma_data_x)
        self.pre_h = Preconditioning(self.config.sigma_data_h)

    def forward(self, x: torch.Tensor, h: torch.Tensor, sigma: torch.Tensor, edge_index: torch.Tensor,
                batch: torch.Tensor, create_graph: bool = False):
        num_graphs = len(sigma)
        s = sigma[batch].unsqueeze(-1)
        with torch.enable_grad():
            x_in = (self.pre_x.c_in(s) * x).detach().requires_grad_(True)
            h_in = (self.pre_h.c_in(s) * h).detach().requires_grad_(True)
            c_noise = Preconditioning.c_noise(s.squeeze(-1))
            energy = self.energy(x_in, h_in, c_noise, edge_index, batch, num_graphs)
            grad_x, grad_h = torch.autograd.grad(energy.sum(), [x_in, h_in], create_graph=create_graph)
        f_x, f_h = -grad_x, -grad_h
        if not create_graph:
            f_x, f_h, energy = f_x.detach(), f_h.detach(), energy.detach()
        d_x = self.pre_x.c_skip(s) * x + self.pre_x.c_out(s) * f_x
        d_h = self.pre_h.c_skip(s) * h + self.pre_h.c_out(s) * f_h
        return d_x, d_h, energy
