"""Network pieces shared by the placement policies: MLPs, the edge list of a batch of padded canvases with its
radial basis, an invariant (SchNet-style) interaction and an E(3)-equivariant (e3nn) interaction.

Canvases are small (tens of atoms): every ordered pair of distinct placed atoms within the cutoff is an edge.
The graph is held as an edge list over the batch's flattened atoms (:class:`CanvasGraph`), and the interactions
sum their per-edge messages onto the receivers with ``index_add_``. Padding atoms never enter it: in a PPO
minibatch most of the (B, N, N) pairs are padding or pairs of a part-built canvas, and working on all of them
made an update 2.8x (covariant) and 2.5x (internal) slower on the CPU (64 C7H10O2 canvases, one thread: 198 vs
70 ms and 68 vs 27 ms for evaluate_actions plus backward).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

__all__ = ["mlp", "CanvasGraph", "InvariantInteraction", "EquivariantInteraction", "e3nn_without_torchscript"]


@contextlib.contextmanager
def e3nn_without_torchscript():
    """Build e3nn modules as plain ``torch.fx`` modules instead of TorchScript ones (restored on exit).

    Scripting every tensor product costs seconds at construction and re-specialises on new input shapes; the
    policies' graphs are tiny and change shape with the batch, so plain fx code is faster end to end. Only the
    modules built inside the block are affected (MACE potentials keep e3nn's defaults).
    """
    import mace  # noqa: F401  (before e3nn: its constants load with torch.load, see DESIGN.md)
    import e3nn

    saved = e3nn.get_optimization_defaults()
    e3nn.set_optimization_defaults(jit_script_fx=False)
    try:
        yield
    finally:
        e3nn.set_optimization_defaults(**saved)


def mlp(sizes: list[int], activation: type[nn.Module] = nn.SiLU, last_zero: bool = False) -> nn.Sequential:
    """A plain MLP ``sizes[0] -> ... -> sizes[-1]`` (activation between layers, none after the last).

    ``last_zero`` initialises the last layer to zero: heads start from a neutral distribution (uniform
    categoricals, default scales) rather than from random preferences.
    """
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    if last_zero:
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class CanvasGraph:
    """The graph of a batch of padded canvases as an edge list, with each edge's radial basis and weight.

    Args:
        positions: (B, N, 3); mask: (B, N) bool; cutoff: Å; num_radial: size of the Bessel basis.

    Atoms are indexed ``b * N + i`` in the flattened batch. Edge ``k`` goes from ``senders[k]`` (atom ``j``) to
    ``receivers[k]`` (atom ``i``) of the same canvas; ``vectors[k] = x_j - x_i`` (E, 3), ``lengths`` (E,),
    ``radial`` (E, K) the Bessel basis times ``weights`` (E,), a smooth envelope that vanishes with its slope at the
    cutoff.
    """

    def __init__(self, positions: torch.Tensor, mask: torch.Tensor, cutoff: float, num_radial: int):
        b, n = mask.shape
        eye = torch.eye(n, dtype=torch.bool, device=positions.device)
        pair = (mask[:, :, None] & mask[:, None, :] & ~eye).reshape(-1).nonzero().squeeze(-1)  # (b * N + i) * N + j
        receivers = torch.div(pair, n, rounding_mode="floor")
        senders = torch.div(pair, n * n, rounding_mode="floor") * n + pair % n
        flat = positions.reshape(b * n, 3)
        vectors = flat[senders] - flat[receivers]
        lengths = vectors.norm(dim=-1)
        near = lengths < cutoff
        self.receivers, self.senders = receivers[near], senders[near]
        self.vectors, self.lengths = vectors[near], lengths[near]
        k = torch.arange(1, num_radial + 1, dtype=positions.dtype, device=positions.device)
        r = self.lengths.unsqueeze(-1)
        bessel = math.sqrt(2.0 / cutoff) * torch.sin(k * math.pi * r / cutoff) / r
        x = self.lengths / cutoff
        self.weights = 1.0 - 10.0 * x**3 + 15.0 * x**4 - 6.0 * x**5
        self.radial = bessel * self.weights.unsqueeze(-1)


class InvariantInteraction(nn.Module):
    """Continuous-filter convolution (SchNet-like): ``h_i += MLP(sum_j W(r_ij) * Lin(h_j))``; invariant."""

    def __init__(self, channels: int, num_radial: int, avg_neighbours: float = 4.0):
        super().__init__()
        self.avg_neighbours = float(avg_neighbours)
        self.filter = mlp([num_radial, channels, channels])
        self.lin_in = nn.Linear(channels, channels)
        self.update = mlp([channels, channels, channels])

    def forward(self, h: torch.Tensor, graph: CanvasGraph) -> torch.Tensor:
        b, n, c = h.shape
        w = self.filter(graph.radial) * graph.weights.unsqueeze(-1)  # (E, C)
        message = w * self.lin_in(h).reshape(b * n, c)[graph.senders]
        message = torch.zeros(b * n, c, dtype=h.dtype, device=h.device).index_add_(0, graph.receivers, message)
        return h + self.update(message.reshape(b, n, c) / self.avg_neighbours)


class EquivariantInteraction(nn.Module):
    """One E(3)-equivariant message-passing layer (NequIP/MACE-style, written with e3nn primitives).

    ``m_i = sum_j TP(h_j, Y(r_ij); R(|r_ij|)) / avg_neighbours`` with a channel-wise ("uvu") tensor product whose
    path weights come from a radial MLP, then ``h_i' = Gate(Lin_self(h_i) + Lin_msg(m_i))`` (+ ``h_i`` when the
    irreps agree). All irreps have natural parity (``0e, 1o, 2e, 3o``), so the layer is O(3)-equivariant.
    """

    def __init__(self, irreps_in: str, irreps_out: str, lmax_sh: int, num_radial: int, radial_hidden: int = 32,
                 avg_neighbours: float = 4.0):
        super().__init__()
        import mace  # noqa: F401  (before e3nn: its constants load with torch.load, see DESIGN.md)
        from e3nn import o3
        from e3nn.nn import Gate

        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax_sh)
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in self.irreps_out:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        self.irreps_mid = o3.Irreps(mid)
        self.tp = o3.TensorProduct(self.irreps_in, self.irreps_sh, self.irreps_mid, instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = mlp([num_radial, radial_hidden, self.tp.weight_numel])
        scalars = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l > 0])
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        self.gate = Gate(scalars, [nn.functional.silu], gates, [torch.sigmoid], gated)
        self.lin_self = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.lin_msg = o3.Linear(self.irreps_mid, self.gate.irreps_in)
        self.residual = self.irreps_in == self.gate.irreps_out
        self.avg_neighbours = float(avg_neighbours)

    def forward(self, h: torch.Tensor, graph: CanvasGraph, sh: torch.Tensor) -> torch.Tensor:
        """``h`` (B, N, D) node features, ``sh`` (E, S) spherical harmonics of the graph's edge vectors."""
        b, n, d = h.shape
        msg = self.tp(h.reshape(b * n, d)[graph.senders], sh, self.radial(graph.radial))
        msg = msg * graph.weights.unsqueeze(-1)  # smooth at the cutoff
        msg = torch.zeros(b * n, msg.shape[-1], dtype=msg.dtype, device=msg.device).index_add_(0, graph.receivers, msg)
        msg = msg.reshape(b, n, -1) / self.avg_neighbours
        out = self.gate(self.lin_self(h) + self.lin_msg(msg))
        return h + out if self.residual else out
