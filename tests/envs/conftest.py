"""Shared fixtures: a tiny untrained MACE model saved as a model file (fast, deterministic), and a counting
potential that records how many ``energies`` calls an environment makes."""

from __future__ import annotations

import numpy as np
import pytest

import molgym  # noqa: F401  (registers the environments)
from molgym.potentials.base import Potential


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: the tiny model's calls are ~10x faster on a shared 2-core machine than with two
    threads fighting other jobs (tests only; the library never changes torch's global settings)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """Path of a tiny untrained MACE model file (H, C, N, O, F), saved with torch.save."""
    import torch

    from molgym.potentials.mace_arch import build_untrained_mace

    # Non-zero isolated-atom energies so that rewards are not trivially zero-centred.
    model = build_untrained_mace("tiny", atomic_energies=np.array([-13.6, -1029.0, -1484.0, -2041.0, -2712.0]))
    path = tmp_path_factory.mktemp("models") / "tiny.model"
    torch.save(model, path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_potential(tiny_model_path):
    """The shared (cached) potential for the tiny model's path."""
    from molgym.envs.potentials import shared_potential

    return shared_potential(tiny_model_path, device="cpu")


class CountingPotential(Potential):
    """Delegates to another potential and counts ``energies`` calls and structures."""

    def __init__(self, inner: Potential):
        self.inner = inner
        self.name = f"counting({inner.name})"
        self.species = inner.species
        self.calls: list[int] = []

    def energies(self, structures):
        structures = list(structures)
        self.calls.append(len(structures))
        return self.inner.energies(structures)

    def energies_and_forces(self, structures):
        return self.inner.energies_and_forces(structures)


@pytest.fixture
def counting_potential(tiny_potential) -> CountingPotential:
    return CountingPotential(tiny_potential)


@pytest.fixture
def count_calls():
    """Wrap any potential in a :class:`CountingPotential` (``count_calls(xtb)``)."""
    return CountingPotential
