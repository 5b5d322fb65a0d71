"""molgym's CPU replacements for e3nn modules inside MACE models: same numbers as e3nn, swapped only when checked."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase.build import molecule

from molgym.potentials import mace as mace_backend
from molgym.potentials.mace import MACEPotential


def _molecules():
    # 16 molecules, 171 atoms: above ElementLinear's 128-node threshold, so its grouped path runs in the batch
    names = ["CH3CH2OH", "C6H6", "CH3COOH", "HCOOH", "CH3CN", "C2H6", "NH3", "H2O"]
    mols = [molecule(n) for n in names] * 2
    rng = np.random.default_rng(0)
    for m in mols:
        m.positions += rng.normal(scale=0.05, size=m.positions.shape)
    return mols


@pytest.fixture(scope="module")
def tiny_pair(tiny_mace_file):
    """The tiny model (float64) loaded twice: with molgym's modules swapped in, and as e3nn built it."""
    return (
        MACEPotential(str(tiny_mace_file), device="cpu", dtype="float64", accelerate=True),
        MACEPotential(str(tiny_mace_file), device="cpu", dtype="float64", accelerate=False),
    )


def test_swaps_only_the_handled_forms(tiny_pair):
    fast, plain = tiny_pair
    # tiny has 8x0e+8x1o hidden features: layer 1's convolution has non-scalar inputs and keeps e3nn's module;
    # layer 0's skip connection has scalar inputs only (e3nn's module is as fast there) and outputs no path reaches
    assert fast.accelerated == ["interactions.0.conv_tp", "interactions.1.skip_tp"]
    assert plain.accelerated == []
    # read from the model: a second potential over the already accelerated model reports the same modules
    assert MACEPotential(fast.model, device="cpu").accelerated == fast.accelerated
    assert type(plain.model.interactions[0].conv_tp).__module__.startswith("e3nn")
    assert not hasattr(plain.model.interactions[0], "conv_fusion")


def test_accelerate_must_be_a_bool_or_none(tiny_mace_file):
    with pytest.raises(ValueError, match="accelerate must be True, False or None.*got 'yes'"):
        MACEPotential(str(tiny_mace_file), device="cpu", accelerate="yes")


def test_energies_forces_and_descriptors_match_e3nn(tiny_pair):
    import torch

    fast, plain = tiny_pair
    mols = _molecules()
    np.testing.assert_allclose(fast.energies(mols), plain.energies(mols), rtol=1e-10, atol=1e-10)
    e_fast, f_fast = fast.energies_and_forces(mols)
    e_plain, f_plain = plain.energies_and_forces(mols)
    np.testing.assert_allclose(e_fast, e_plain, rtol=1e-10, atol=1e-10)
    for a, b in zip(f_fast, f_plain):
        np.testing.assert_allclose(a, b, atol=1e-9)
    for a, b in zip(fast.descriptors(mols), plain.descriptors(mols)):
        np.testing.assert_allclose(a, b, atol=1e-9)
    # gradients of descriptors with respect to positions (SiMGen's path) agree too
    grads = []
    for pot in (fast, plain):
        positions = torch.tensor(np.concatenate([m.positions for m in mols]), dtype=torch.float64,
                                 requires_grad=True)
        feats, _ = pot.torch_descriptors(mols, positions=positions)
        (grad,) = torch.autograd.grad((feats**2).sum(), positions)
        grads.append(grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-8)


def test_single_molecules_take_the_small_path_and_agree(tiny_pair):
    fast, plain = tiny_pair
    for m in _molecules()[:4]:
        assert fast.energies([m])[0] == pytest.approx(plain.energies([m])[0], abs=1e-10)


def test_shipped_model_is_swapped_and_agrees_in_float32():
    from molgym.potentials import load_potential

    fast = load_potential("default", device="cpu", dtype="float32")
    plain = load_potential("default", device="cpu", dtype="float32", accelerate=False)
    # scalar hidden features, so both convolutions are swapped; layer 0 (mace's non-residual first block) has an
    # element-dependent linear map on all three irreps; layer 1's acts on scalars only and keeps e3nn's module
    assert fast.accelerated == ["interactions.0.conv_tp", "interactions.0.skip_tp", "interactions.1.conv_tp"]
    mols = _molecules()
    np.testing.assert_allclose(fast.energies(mols), plain.energies(mols), rtol=1e-6, atol=2e-4)
    e_fast, f_fast = fast.energies_and_forces(mols[:3])
    e_plain, f_plain = plain.energies_and_forces(mols[:3])
    for a, b in zip(f_fast, f_plain):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_a_replacement_that_disagrees_is_undone(tiny_mace_file, monkeypatch):
    from molgym.potentials import mace_cpu

    original_forward = mace_cpu.FusedEdgeConvolution.forward
    monkeypatch.setattr(mace_cpu.FusedEdgeConvolution, "forward",
                        lambda self, *args: original_forward(self, *args) * 1.001)
    pot = MACEPotential(str(tiny_mace_file), device="cpu", dtype="float64")
    # the block whose convolution was wrong keeps all its e3nn modules; the other block is still swapped
    assert pot.accelerated == ["interactions.1.skip_tp"]
    block = pot.model.interactions[0]
    assert type(block.conv_tp).__module__.startswith("e3nn") and type(block.skip_tp).__module__.startswith("e3nn")
    assert not hasattr(block, "conv_fusion")


def test_accelerated_potential_pickles(tiny_pair):
    fast, _ = tiny_pair
    mols = _molecules()
    again = pickle.loads(pickle.dumps(fast))
    assert again.accelerated == fast.accelerated
    np.testing.assert_allclose(again.energies(mols), fast.energies(mols), rtol=1e-12)


def test_keep_freed_memory_can_be_switched_off(monkeypatch):
    import platform

    monkeypatch.setattr(mace_backend, "_kept_freed_memory", None)
    monkeypatch.setenv("MOLGYM_KEEP_FREED_MEMORY", "0")
    assert mace_backend.keep_freed_memory() is False
    monkeypatch.setattr(mace_backend, "_kept_freed_memory", None)
    monkeypatch.delenv("MOLGYM_KEEP_FREED_MEMORY")
    assert mace_backend.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
