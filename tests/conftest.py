"""Shared fixtures: tiny *real* MACE models built in the test session (random weights, seeded), and a tiny
reward-potential dataset.

The models exercise the real mace-torch code path (graph, equivariant layers, autograd forces); their energies have no
physical meaning, so tests use them for invariances, batching and plumbing, never for chemistry.
"""

from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")


@pytest.fixture(scope="session")
def tiny_mace_model():
    """An untrained float64 MACE module ('tiny' preset) over H, C, N, O, F."""
    from molgym.potentials.mace_arch import build_untrained_mace

    return build_untrained_mace("tiny", dtype="float64", seed=0)


@pytest.fixture(scope="session")
def tiny_mace_file(tiny_mace_model, tmp_path_factory):
    """The tiny model saved as a MACE model file, as a user's own model would be."""
    import torch

    path = tmp_path_factory.mktemp("models") / "tiny.model"
    torch.save(tiny_mace_model, path)
    return path


@pytest.fixture(scope="session")
def tiny_mace(tiny_mace_file):
    """A MACEPotential (float64, CPU) loaded from the tiny model file."""
    from molgym.potentials import load_potential

    return load_potential(str(tiny_mace_file), device="cpu", dtype="float64")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A ``tiny`` reward-potential dataset (real GFN2-xTB labels, seconds to build) and its manifest."""
    from molgym.data import dataset as ds

    out = tmp_path_factory.mktemp("data") / "tiny"
    manifest = ds.build_dataset(out, "tiny", workers=2, progress=False)
    return out, manifest
