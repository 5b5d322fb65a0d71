"""The potentials layer: MACE batching and symmetries, xTB and PM6 against known values, and the errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.optimize import BFGS
from ase.units import Hartree
from scipy.spatial.transform import Rotation

from molgym.potentials import (
    ModelNotAvailableError,
    SCFConvergenceError,
    UnsupportedElementError,
    load_potential,
    lowest_multiplicity,
)
from molgym.potentials import registry
from molgym.potentials.mace import MACEPotential


def _molecules() -> list[Atoms]:
    names = ["CH4", "H2O", "C6H6", "CH3CH2OH", "HCOOH", "CH3CN", "C2H6", "NH3", "HCN", "CH3COOH"]
    return [molecule(n) for n in names] + [Atoms("CF", positions=[[0, 0, 0], [0, 0, 1.3]])]


def _rotated(atoms: Atoms, seed: int) -> Atoms:
    rot = Rotation.random(random_state=seed).as_matrix()
    out = atoms.copy()
    out.positions = atoms.positions @ rot.T + np.array([3.1, -7.4, 0.9])
    return out


# --- MACE -------------------------------------------------------------------------------------------------------


def test_mace_energies_invariant_to_rotation_translation_permutation(tiny_mace):
    mols = _molecules()
    ref = tiny_mace.energies(mols)
    assert np.all(np.isfinite(ref)) and np.ptp(ref) > 1e-3  # a real, non-constant function of the structure
    rotated = tiny_mace.energies([_rotated(m, seed=i) for i, m in enumerate(mols)])
    np.testing.assert_allclose(rotated, ref, atol=1e-5, rtol=0)
    rng = np.random.default_rng(0)
    permuted = tiny_mace.energies([m[rng.permutation(len(m))] for m in mols])
    np.testing.assert_allclose(permuted, ref, atol=1e-5, rtol=0)
    # a distortion does change the energy: the test above could fail
    distorted = mols[3].copy()
    distorted.positions[0] += [0.3, 0.0, 0.0]
    assert abs(tiny_mace.energies([distorted])[0] - ref[3]) > 1e-4


def test_mace_batched_equals_one_by_one(tiny_mace):
    mols = _molecules()
    batched = tiny_mace.energies(mols)
    single = np.array([tiny_mace.energies([m])[0] for m in mols])
    np.testing.assert_allclose(batched, single, atol=1e-10, rtol=0)
    e_batched, f_batched = tiny_mace.energies_and_forces(mols)
    np.testing.assert_allclose(e_batched, batched, atol=1e-10, rtol=0)
    for m, f in zip(mols, f_batched):
        np.testing.assert_allclose(f, tiny_mace.energies_and_forces([m])[1][0], atol=1e-10, rtol=0)


def test_mace_chunking_gives_the_same_energies(tiny_mace_model):
    mols = _molecules()
    whole = MACEPotential(tiny_mace_model, device="cpu").energies(mols)
    chunked = MACEPotential(tiny_mace_model, device="cpu", max_atoms_per_batch=10).energies(mols)
    np.testing.assert_allclose(chunked, whole, atol=1e-10, rtol=0)


def test_mace_forces_are_minus_the_energy_gradient_and_rotate(tiny_mace):
    atoms = molecule("CH3CH2OH")
    _, (forces,) = tiny_mace.energies_and_forces([atoms])
    h = 1e-5
    numeric = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            e_plus, e_minus = tiny_mace.energies([plus, minus])
            numeric[i, k] = -(e_plus - e_minus) / (2 * h)
    np.testing.assert_allclose(forces, numeric, atol=1e-6)
    rot = Rotation.random(random_state=3).as_matrix()
    turned = atoms.copy()
    turned.positions = atoms.positions @ rot.T
    _, (turned_forces,) = tiny_mace.energies_and_forces([turned])
    np.testing.assert_allclose(turned_forces, forces @ rot.T, atol=1e-8)


def test_mace_descriptors_invariant_and_per_atom(tiny_mace):
    atoms = molecule("CH3CH2OH")
    (desc,) = tiny_mace.descriptors([atoms])
    assert desc.shape[0] == len(atoms) and desc.shape[1] > 0
    (turned,) = tiny_mace.descriptors([_rotated(atoms, seed=5)])
    np.testing.assert_allclose(turned, desc, atol=1e-8)
    perm = np.random.default_rng(1).permutation(len(atoms))
    (permuted,) = tiny_mace.descriptors([atoms[perm]])
    np.testing.assert_allclose(permuted, desc[perm], atol=1e-8)
    (first_layer,) = tiny_mace.descriptors([atoms], num_layers=1)
    assert first_layer.shape[1] < desc.shape[1]
    with pytest.raises(ValueError, match="num_layers"):
        tiny_mace.descriptors([atoms], num_layers=5)


def test_mace_never_changes_torch_default_dtype(tiny_mace_file):
    import torch

    before = torch.get_default_dtype()
    for dtype in ("float64", "float32"):
        pot = load_potential(str(tiny_mace_file), device="cpu", dtype=dtype)
        pot.energies_and_forces([molecule("H2O")])
        assert pot.dtype == getattr(torch, dtype)
        assert next(pot.model.parameters()).dtype == getattr(torch, dtype)
    assert torch.get_default_dtype() == before


def test_mace_float32_close_to_float64(tiny_mace_file):
    mols = _molecules()
    e64 = load_potential(str(tiny_mace_file), device="cpu", dtype="float64").energies(mols)
    e32 = load_potential(str(tiny_mace_file), device="cpu", dtype="float32").energies(mols)
    np.testing.assert_allclose(e32, e64, atol=1e-3)


def test_mace_pickles(tiny_mace):
    clone = pickle.loads(pickle.dumps(tiny_mace))
    mols = _molecules()[:3]
    np.testing.assert_allclose(clone.energies(mols), tiny_mace.energies(mols), atol=1e-12)


def test_mace_rejects_uncovered_elements_before_work(tiny_mace):
    bad = [molecule("H2O"), Atoms("HCl", positions=[[0, 0, 0], [0, 0, 1.3]])]
    with pytest.raises(UnsupportedElementError, match=r"structure 1 \(HCl\) contains Cl, which .* does not cover; it covers H, C, N, O, F"):
        tiny_mace.energies(bad)
    with pytest.raises(TypeError, match="single ase.Atoms"):
        tiny_mace.energies(molecule("H2O"))
    nan = molecule("H2O")
    nan.positions[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        tiny_mace.energies([nan])


def test_mace_file_errors(tmp_path):
    import torch

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_potential(str(tmp_path / "missing.model"))
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"this is not a model")
    with pytest.raises(ValueError, match="could not load MACE model file"):
        load_potential(str(corrupt))
    not_mace = tmp_path / "weights.model"
    torch.save({"state_dict": {}}, not_mace)
    with pytest.raises(ValueError, match="is not a MACE model file"):
        load_potential(str(not_mace))
    with pytest.raises(ValueError, match="dtype must be one of"):
        MACEPotential(str(not_mace), dtype="float16")


# --- registry ---------------------------------------------------------------------------------------------------


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown potential 'mace-off'.*'default', 'xtb'"):
        load_potential("mace-off")
    with pytest.raises(TypeError):
        load_potential(3)


def test_potential_passes_through(tiny_mace):
    assert load_potential(tiny_mace) is tiny_mace


def test_shipped_model_is_checked_against_its_card(tmp_path, monkeypatch, tiny_mace_file):
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    with pytest.raises(ModelNotAvailableError, match="no shipped model 'default'"):
        load_potential("default")
    (tmp_path / "default.model").write_bytes(tiny_mace_file.read_bytes())
    card = {"file": "default.model", "sha256": registry.sha256_of(tiny_mace_file)}
    (tmp_path / "default.json").write_text(json.dumps(card))
    pot = load_potential("default", device="cpu")
    assert pot.name == "MACE(default)" and pot.species == frozenset({1, 6, 7, 8, 9})
    card["sha256"] = "0" * 64
    (tmp_path / "default.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="does not match its model card"):
        load_potential("default")


# --- xTB --------------------------------------------------------------------------------------------------------


def test_xtb_relaxed_water_matches_gfn2_reference():
    """GFN2-xTB's optimised water: total energy -5.070544 Eh (the value xtb itself reports)."""
    water = molecule("H2O")
    water.calc = load_potential("xtb").as_calculator()
    BFGS(water, logfile=None).run(fmax=1e-3)
    assert water.get_potential_energy() / Hartree == pytest.approx(-5.070544, abs=2e-6)
    assert water.get_distance(0, 1) == pytest.approx(0.959, abs=2e-3)


def test_xtb_forces_match_finite_differences():
    xtb = load_potential("xtb")
    atoms = molecule("HCOOH")
    atoms.rattle(0.05, seed=1)
    _, (forces,) = xtb.energies_and_forces([atoms])
    h = 1e-4
    for i, k in [(0, 0), (2, 1), (4, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, k] += h
        minus.positions[i, k] -= h
        e_plus, e_minus = xtb.energies([plus, minus])
        assert forces[i, k] == pytest.approx(-(e_plus - e_minus) / (2 * h), abs=2e-3)


def test_xtb_radicals_use_a_doublet_and_gfn1_differs():
    methyl = Atoms("CH3", positions=[[0, 0, 0], [1.08, 0, 0], [-0.54, 0.935, 0], [-0.54, -0.935, 0]])
    assert lowest_multiplicity(methyl.numbers) == 2
    e2 = load_potential("xtb").energies([methyl])[0]
    e1 = load_potential("gfn1-xtb").energies([methyl])[0]
    assert np.isfinite(e2) and np.isfinite(e1) and abs(e1 - e2) > 1.0


def test_xtb_scf_failure_is_catchable():
    xtb = load_potential("xtb", max_iterations=1)
    with pytest.raises(SCFConvergenceError) as info:
        xtb.energies([molecule("H2O"), molecule("C6H6")])
    assert info.value.index == 0


def test_xtb_bad_options():
    with pytest.raises(ValueError, match="unknown xTB method"):
        from molgym.potentials.xtb import XTBPotential

        XTBPotential(method="GFN3")
    with pytest.raises(ValueError, match="max_iterations"):
        load_potential("xtb", max_iterations=0)


# --- PM6 --------------------------------------------------------------------------------------------------------


def test_pm6_water_geometry_and_no_banner(capfd):
    pytest.importorskip("scine_sparrow")
    pm6 = load_potential("pm6")
    water = molecule("H2O")
    water.calc = pm6.as_calculator()
    BFGS(water, logfile=None).run(fmax=1e-3)
    # PM6's water: r(OH) = 0.949 Å, angle(HOH) = 107.5 degrees
    assert water.get_distance(0, 1) == pytest.approx(0.949, abs=3e-3)
    assert water.get_angle(1, 0, 2) == pytest.approx(107.5, abs=1.0)
    assert water.get_potential_energy() / Hartree == pytest.approx(-11.72575, abs=1e-4)
    out, err = capfd.readouterr()
    assert "CONVERGED" not in out and "ITERATIONS" not in out  # Sparrow's banner is silenced


def test_pm6_radical_and_forces():
    pytest.importorskip("scine_sparrow")
    pm6 = load_potential("pm6")
    methyl = Atoms("CH3", positions=[[0, 0, 0], [1.08, 0, 0], [-0.54, 0.935, 0], [-0.54, -0.935, 0.1]])
    energies, (forces,) = pm6.energies_and_forces([methyl])
    h = 1e-4
    plus, minus = methyl.copy(), methyl.copy()
    plus.positions[3, 2] += h
    minus.positions[3, 2] -= h
    e_plus, e_minus = pm6.energies([plus, minus])
    assert forces[3, 2] == pytest.approx(-(e_plus - e_minus) / (2 * h), abs=5e-3)
    assert pickle.loads(pickle.dumps(pm6)).energies([methyl])[0] == pytest.approx(energies[0], abs=1e-8)


def test_torch_descriptors_match_numpy_and_have_gradients(tiny_mace):
    import torch

    mols = [molecule("CH3CH2OH"), molecule("H2O")]
    feats, ptr = tiny_mace.torch_descriptors(mols)
    numpy_feats = tiny_mace.descriptors(mols)
    np.testing.assert_allclose(feats.detach().numpy()[ptr[0] : ptr[1]], numpy_feats[0], atol=1e-10)
    positions = torch.tensor(np.concatenate([m.positions for m in mols]), dtype=torch.float64, requires_grad=True)
    feats, _ = tiny_mace.torch_descriptors(mols, positions=positions)
    loss = (feats**2).sum()
    (grad,) = torch.autograd.grad(loss, positions)
    # compare one component with a finite difference of the same scalar
    h = 1e-6
    shifted = positions.detach().clone()
    shifted[2, 1] += h
    plus = (tiny_mace.torch_descriptors(mols, positions=shifted)[0] ** 2).sum().item()
    shifted[2, 1] -= 2 * h
    minus = (tiny_mace.torch_descriptors(mols, positions=shifted)[0] ** 2).sum().item()
    assert grad[2, 1].item() == pytest.approx((plus - minus) / (2 * h), rel=1e-4, abs=1e-7)
    with pytest.raises(ValueError, match="positions has shape"):
        tiny_mace.torch_descriptors(mols, positions=positions[:3])


def test_provisional_shipped_model_warns(tmp_path, monkeypatch, tiny_mace_file):
    from molgym.potentials.registry import ProvisionalModelWarning

    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    (tmp_path / "default.model").write_bytes(tiny_mace_file.read_bytes())
    card = {"file": "default.model", "sha256": registry.sha256_of(tiny_mace_file), "status": "provisional",
            "status_reason": "test errors above targets"}
    (tmp_path / "default.json").write_text(json.dumps(card))
    with pytest.warns(ProvisionalModelWarning, match="is provisional: its test errors exceed"):
        load_potential("default", device="cpu")
    card["status"] = "release"
    (tmp_path / "default.json").write_text(json.dumps(card))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ProvisionalModelWarning)
        load_potential("default", device="cpu")


def test_xtb_workers_give_the_same_results_and_the_first_failure():
    from molgym.potentials.xtb import XTBPotential

    structures = [molecule(name) for name in ("H2O", "CH4", "C2H6", "NH3", "CH3OH")]
    serial, threaded = XTBPotential(workers=1), XTBPotential(workers=2)
    assert np.array_equal(serial.energies(structures), threaded.energies(structures))
    e1, f1 = serial.energies_and_forces(structures)
    e2, f2 = threaded.energies_and_forces(structures)
    # tblite's gradients differ in the last bit from call to call, threads or not
    assert np.array_equal(e1, e2) and all(np.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(f1, f2))
    failing = XTBPotential(workers=2, max_iterations=1)
    with pytest.raises(SCFConvergenceError) as info:
        failing.energies(structures)
    assert info.value.index == 0
    with pytest.raises(ValueError, match="workers"):
        XTBPotential(workers=0)


