"""The last-layer committee: uncertainties, symmetry, batching, HAL forces, fitting, calibration, files, errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from molgym.potentials import load_potential
from molgym.potentials.committee import (
    CommitteeHeads,
    CommitteeMACEPotential,
    calibrate,
    fit_committee,
    isolated_features,
)


def _molecules() -> list[Atoms]:
    return [molecule(n) for n in ["CH4", "H2O", "CH3CH2OH", "HCOOH", "CH3CN", "NH3", "HCN"]] + [
        Atoms("CF", positions=[[0, 0, 0], [0, 0, 1.3]])
    ]


def random_heads(potential, members: int = 4, seed: int = 0, scale: float = 1.0) -> CommitteeHeads:
    """Committee heads with random (centred) weights for ``potential``'s body: plumbing tests only."""
    n_feat = isolated_features(potential).shape[1]
    width = n_feat * len(potential.z_table)
    w = np.random.default_rng(seed).normal(size=(members, width)) * 0.1
    return CommitteeHeads(z_table=list(potential.z_table), isolated=isolated_features(potential),
                          feature_scale=np.ones(width), weights=w - w.mean(axis=0), scale=scale)


@pytest.fixture(scope="module")
def committee(tiny_mace):
    return CommitteeMACEPotential(tiny_mace.model, random_heads(tiny_mace), device="cpu")


def test_uncertainty_is_nonnegative_and_energies_are_the_models(committee, tiny_mace):
    mols = _molecules()
    energies, sigma = committee.energies_and_uncertainties(mols)
    assert np.all(sigma >= 0) and np.all(sigma[:-1] > 0)  # random heads disagree on every molecule
    np.testing.assert_allclose(energies, tiny_mace.energies(mols), rtol=0, atol=1e-9)
    _, members = committee.committee_energies(mols)
    np.testing.assert_allclose(members.mean(axis=1), energies, atol=1e-8)  # centred on the model
    np.testing.assert_allclose(committee.uncertainties(mols), sigma)


def test_identical_members_and_lone_atoms_have_zero_uncertainty(tiny_mace, committee):
    heads = random_heads(tiny_mace)
    heads.weights = np.zeros_like(heads.weights)
    same = CommitteeMACEPotential(tiny_mace.model, heads, device="cpu")
    assert np.all(same.uncertainties(_molecules()) == 0)
    atoms = [Atoms([z], positions=[[0.0, 0.0, 0.0]]) for z in (1, 6, 7, 8, 9)]
    np.testing.assert_allclose(committee.uncertainties(atoms), 0.0, atol=1e-9)


def test_uncertainty_invariant_to_rotation_translation_permutation(committee):
    mols = _molecules()
    ref = committee.uncertainties(mols)
    moved = []
    for k, atoms in enumerate(mols):
        perm = np.random.default_rng(k).permutation(len(atoms))
        rot = Rotation.random(random_state=k).as_matrix()
        moved.append(Atoms(numbers=atoms.numbers[perm], positions=atoms.positions[perm] @ rot.T + [1.5, -2.0, 4.0]))
    np.testing.assert_allclose(committee.uncertainties(moved), ref, rtol=1e-6, atol=1e-9)


def test_one_batched_pass_equals_one_by_one(committee):
    mols = _molecules()
    energies, members = committee.committee_energies(mols)
    for k, atoms in enumerate(mols):
        e, m = committee.committee_energies([atoms])
        np.testing.assert_allclose(e[0], energies[k], atol=1e-8)
        np.testing.assert_allclose(m[0], members[k], atol=1e-8)


def test_scale_multiplies_the_uncertainty(tiny_mace):
    a = CommitteeMACEPotential(tiny_mace.model, random_heads(tiny_mace, scale=1.0), device="cpu")
    b = CommitteeMACEPotential(tiny_mace.model, random_heads(tiny_mace, scale=3.0), device="cpu")
    np.testing.assert_allclose(b.uncertainties(_molecules()), 3.0 * a.uncertainties(_molecules()), rtol=1e-10)


def test_hal_bias_forces_are_minus_the_gradient_of_e_minus_tau_sigma(committee):
    atoms = molecule("CH3CH2OH")
    tau = 2.0
    e, forces, sigma = committee.biased_energies_and_forces([atoms], tau)
    e_plain, s_plain = committee.energies_and_uncertainties([atoms])
    np.testing.assert_allclose(e[0], e_plain[0] - tau * s_plain[0], atol=1e-8)
    np.testing.assert_allclose(sigma, s_plain, atol=1e-10)
    h = 1e-4
    for i, j in [(0, 0), (3, 2), (8, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, j] += h
        minus.positions[i, j] -= h
        ep = committee.biased_energies_and_forces([plus], tau)[0][0]
        em = committee.biased_energies_and_forces([minus], tau)[0][0]
        assert forces[0][i, j] == pytest.approx(-(ep - em) / (2 * h), rel=1e-4, abs=1e-6)


def test_fit_recovers_a_linear_residual_and_calibration_matches_rms_error(tiny_mace):
    mols = _molecules() * 3
    rng = np.random.default_rng(1)
    for k, atoms in enumerate(mols):
        atoms = atoms.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        mols[k] = atoms
    probe = CommitteeMACEPotential(tiny_mace.model, random_heads(tiny_mace), device="cpu")
    true_w = rng.normal(size=probe.heads.weights.shape[1]) * 0.01
    reference = tiny_mace.energies(mols) + probe.structure_features(mols) @ true_w
    heads = fit_committee(tiny_mace, mols, reference, members=5, ridge=1e-3, seed=0)
    assert heads.members == 5 and np.allclose(heads.weights.mean(axis=0), 0)
    pot = CommitteeMACEPotential(tiny_mace.model, heads, device="cpu")
    noisy = reference + rng.normal(scale=0.1, size=len(reference))
    scale = calibrate(pot, mols, noisy)
    energies, sigma = pot.energies_and_uncertainties(mols)
    assert scale > 0
    np.testing.assert_allclose(np.sqrt(np.mean(sigma**2)), np.sqrt(np.mean((noisy - energies) ** 2)), rtol=1e-8)


def test_heads_file_round_trip_and_load_potential_option(tiny_mace, tiny_mace_file, tmp_path):
    heads = random_heads(tiny_mace, scale=2.5)
    heads.meta = {"note": "test"}
    path = tmp_path / "heads.npz"
    heads.save(path)
    loaded = CommitteeHeads.load(path)
    assert loaded.scale == 2.5 and loaded.meta == {"note": "test"}
    np.testing.assert_array_equal(loaded.weights, heads.weights)
    pot = load_potential(str(tiny_mace_file), device="cpu", dtype="float64", committee=str(path))
    assert pot.supports("committee")
    ref = CommitteeMACEPotential(tiny_mace.model, heads, device="cpu")
    np.testing.assert_allclose(pot.uncertainties(_molecules()), ref.uncertainties(_molecules()), rtol=1e-10)


def test_clear_errors(tiny_mace, tmp_path):
    with pytest.raises(NotImplementedError, match="does not provide uncertainties"):
        tiny_mace.uncertainties(_molecules())
    assert not tiny_mace.supports("committee")
    with pytest.raises(FileNotFoundError, match="committee file"):
        CommitteeHeads.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a molgym committee file"):
        CommitteeHeads.load(tmp_path / "junk.npz")
    bad = random_heads(tiny_mace)
    bad.weights = bad.weights[:, :-1]
    with pytest.raises(ValueError, match="do not fit this model"):
        CommitteeMACEPotential(tiny_mace.model, bad, device="cpu")
    one = random_heads(tiny_mace, members=1)
    with pytest.raises(ValueError, match="at least 2 members"):
        CommitteeMACEPotential(tiny_mace.model, one, device="cpu")
    with pytest.raises(ValueError, match="members must be >= 2"):
        fit_committee(tiny_mace, _molecules(), np.zeros(len(_molecules())), members=1)
    with pytest.raises(ValueError, match="one reference energy per structure"):
        fit_committee(tiny_mace, _molecules(), np.zeros(3))


def test_xtb_has_no_uncertainty():
    xtb = load_potential("xtb")
    assert not xtb.supports("committee")
    with pytest.raises(NotImplementedError, match="does not provide uncertainties"):
        xtb.uncertainties([molecule("H2O")])


def test_reward_gap_return_is_the_sum_of_the_build_rewards(tiny_mace, committee):
    from molgym.reward import isolated_atom_energies, prefix_rewards
    from molgym.training.reward_gap import returns, reward_gaps, summarise

    mol = molecule("CH3CH2OH")
    prefixes = [mol[: k + 1] for k in range(len(mol))]
    atom_e = isolated_atom_energies(tiny_mace, mol.numbers)
    rewards = prefix_rewards(tiny_mace.energies(prefixes), [atom_e[int(z)] for z in mol.numbers])
    assert returns(tiny_mace, [mol])[0] == pytest.approx(rewards.sum(), abs=1e-8)
    rows = reward_gaps(committee, [mol], reference=tiny_mace)  # same energies: zero gap, sigma reported
    assert rows[0]["gap_eV"] == pytest.approx(0.0, abs=1e-8) and rows[0]["sigma_eV"] > 0
    fake = [{"gap_eV": g, "sigma_eV": 0.1, "min_distance_A": 1.0} for g in (0.05, -2.0, 0.3, float("nan"))]
    s = summarise(fake)
    assert s["unlabelled"] == 1 and s["over_1eV"] == 1 and s["median_abs_gap_eV"] == pytest.approx(0.3)
    assert s["max_abs_gap_eV"] == pytest.approx(2.0)


def test_hal_calculator_drives_ase(committee):
    from molgym.potentials.committee import HALCalculator

    atoms = molecule("H2O")
    atoms.calc = HALCalculator(committee, tau=0.5)
    e = atoms.get_potential_energy()
    plain, sigma = committee.energies_and_uncertainties([atoms])
    assert e == pytest.approx(plain[0] - 0.5 * sigma[0], abs=1e-8)
    assert atoms.calc.results["sigma"] == pytest.approx(sigma[0], abs=1e-10)
    assert atoms.get_forces().shape == (3, 3)


def test_corrected_energies_add_the_fitted_mean_and_forces_follow(tiny_mace):
    heads = random_heads(tiny_mace)
    with pytest.raises(ValueError, match="needs committee heads with fitted mean weights"):
        CommitteeMACEPotential(tiny_mace.model, heads, correct=True, device="cpu")
    heads.mean = np.random.default_rng(3).normal(size=heads.weights.shape[1]) * 0.01
    pot = CommitteeMACEPotential(tiny_mace.model, heads, correct=True, device="cpu")
    mols = _molecules()
    phi = pot.structure_features(mols)
    np.testing.assert_allclose(pot.energies(mols), tiny_mace.energies(mols) + phi @ heads.mean, atol=1e-8)
    _, members = pot.committee_energies(mols)
    np.testing.assert_allclose(members.mean(axis=1), pot.energies(mols), atol=1e-8)
    atoms = molecule("CH3CN")
    _, forces = pot.energies_and_forces([atoms])
    h = 1e-4
    for i, j in [(0, 0), (2, 1), (4, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, j] += h
        minus.positions[i, j] -= h
        fd = -(pot.energies([plus])[0] - pot.energies([minus])[0]) / (2 * h)
        assert forces[0][i, j] == pytest.approx(fd, rel=1e-4, abs=1e-6)
    lone = [Atoms([z], positions=[[0.0, 0.0, 0.0]]) for z in (1, 6, 7, 8, 9)]
    np.testing.assert_allclose(pot.energies(lone), tiny_mace.energies(lone), atol=1e-9)  # E0s stay exact
