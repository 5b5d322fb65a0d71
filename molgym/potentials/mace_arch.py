"""MACE architecture presets, and a builder for untrained models of those architectures.

The presets name the model sizes molgym trains (see the potential training pipeline); building an *untrained*
model of a preset is for tests (equivariance, batching) and for timing an architecture before it is trained.
An untrained model's energies are meaningless: never use one as a reward.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class MACEArchitecture:
    """Hyper-parameters of a MACE model, named as in mace-torch's training CLI."""

    r_max: float = 5.0
    num_channels: int = 64
    max_L: int = 1
    correlation: int = 3
    num_interactions: int = 2
    max_ell: int = 3
    num_radial_basis: int = 8
    num_cutoff_basis: int = 5
    radial_MLP: tuple[int, ...] = (64, 64, 64)

    @property
    def hidden_irreps(self) -> str:
        parts = [f"{self.num_channels}x0e"]
        for ell in range(1, self.max_L + 1):
            parts.append(f"{self.num_channels}x{ell}{'o' if ell % 2 else 'e'}")
        return " + ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)


#: Named sizes. ``tiny`` is for tests; ``small`` and ``medium`` are candidates for the shipped reward model.
ARCHITECTURES: dict[str, MACEArchitecture] = {
    "tiny": MACEArchitecture(r_max=4.0, num_channels=8, max_L=1, correlation=2, max_ell=2, radial_MLP=(16,)),
    # max_ell=2 rather than 3: on a 2-core CPU it makes the symmetric contraction ~4x cheaper (measured with
    # benchmarks/potential_speed.py), which decides whether batched MACE beats xTB at all.
    "small": MACEArchitecture(num_channels=32, max_L=0, max_ell=2, radial_MLP=(32, 32)),
    # The shipped default's architecture. correlation=2 instead of 3: on a shared 2-core CPU, one training step
    # (energies + forces + backward) in float32 was measured ~5x cheaper than 'small' (correlation 3), which is
    # what made a useful number of epochs possible in the training time there was.
    "cpu": MACEArchitecture(num_channels=32, max_L=0, max_ell=2, correlation=2, radial_MLP=(32, 32)),
    "medium": MACEArchitecture(num_channels=64, max_L=1),
}


def build_untrained_mace(
    architecture: str | MACEArchitecture = "tiny",
    atomic_numbers: tuple[int, ...] = (1, 6, 7, 8, 9),
    atomic_energies: np.ndarray | None = None,
    seed: int = 0,
    dtype: str = "float64",
):
    """A randomly initialised ``ScaleShiftMACE`` of the given architecture (weights seeded, dtype explicit).

    Built without touching torch's global default dtype: MACE registers some buffers in the default dtype, so the
    whole module is cast to ``dtype`` afterwards.
    """
    import mace  # noqa: F401  (before e3nn, see molgym.potentials.mace)
    import torch
    from e3nn import o3
    from mace.modules import ScaleShiftMACE, interaction_classes

    arch = ARCHITECTURES[architecture] if isinstance(architecture, str) else architecture
    if atomic_energies is None:
        atomic_energies = np.zeros(len(atomic_numbers))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = ScaleShiftMACE(
            r_max=arch.r_max,
            num_bessel=arch.num_radial_basis,
            num_polynomial_cutoff=arch.num_cutoff_basis,
            max_ell=arch.max_ell,
            interaction_cls=interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=arch.num_interactions,
            num_elements=len(atomic_numbers),
            hidden_irreps=o3.Irreps(arch.hidden_irreps),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.asarray(atomic_energies, dtype=float),
            avg_num_neighbors=8.0,
            atomic_numbers=list(atomic_numbers),
            correlation=arch.correlation,
            gate=torch.nn.functional.silu,
            radial_MLP=list(arch.radial_MLP),
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(getattr(torch, dtype))
