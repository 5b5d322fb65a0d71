"""What a potential can do, declared on the base class and asked with ``supports``; the counting wrapper's surface
is the base class's; the tolerant batch (energies, and energies with forces) lives once in
``molgym.potentials.batching``."""

from __future__ import annotations

import inspect
import pickle
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from molgym.potentials import CAPABILITIES, Potential, PotentialError, UnsupportedCapabilityError
from molgym.potentials.committee import CommitteeHeads, CommitteeMACEPotential, isolated_features
from molgym.potentials.counting import CountingPotential
from molgym.potentials.xtb import XTBPotential


def _molecules() -> list[Atoms]:
    return [molecule(n) for n in ["CH4", "H2O", "CH3CH2OH", "HCN"]]


@pytest.fixture(scope="module")
def committee(tiny_mace) -> CommitteeMACEPotential:
    n_feat = isolated_features(tiny_mace).shape[1]
    width = n_feat * len(tiny_mace.z_table)
    w = np.random.default_rng(0).normal(size=(3, width)) * 0.1
    heads = CommitteeHeads(z_table=list(tiny_mace.z_table), isolated=isolated_features(tiny_mace),
                           feature_scale=np.ones(width), weights=w - w.mean(axis=0), scale=2.0)
    return CommitteeMACEPotential(tiny_mace.model, heads, device="cpu")


class _Plain(Potential):
    """The smallest potential: energies and forces only (what a new backend starts from)."""

    name, species = "plain", frozenset({1, 6, 7, 8})

    def energies_and_forces(self, structures):
        return np.zeros(len(structures)), [np.zeros((len(a), 3)) for a in structures]


def test_capabilities_of_each_backend(tiny_mace, committee):
    xtb = XTBPotential(workers=1)  # no tblite call: asking is free
    assert xtb.capabilities == _Plain().capabilities == frozenset({"energies", "forces"})
    assert tiny_mace.capabilities == frozenset({"energies", "forces", "descriptors"})
    assert committee.capabilities == frozenset(CAPABILITIES)
    for pot in (xtb, tiny_mace, committee):
        assert all(pot.supports(c) == (c in pot.capabilities) for c in CAPABILITIES)
        assert pot.supports("committee") == ("committee" in pot.capabilities)
    assert not tiny_mace.supports("committee") and committee.supports("committee")
    with pytest.raises(ValueError, match="unknown potential capability 'descriptor'.*descriptors"):
        tiny_mace.supports("descriptor")


def test_a_missing_capability_is_a_clear_error(tiny_mace):
    plain, mols = _Plain(), _molecules()
    calls = {
        "descriptors": lambda p: p.descriptors(mols),
        "uncertainties": lambda p: p.uncertainties(mols),
        "committee": lambda p: p.committee_energies(mols),
    }
    for capability, call in calls.items():
        with pytest.raises(UnsupportedCapabilityError) as info:
            call(plain)
        err = info.value
        assert isinstance(err, NotImplementedError) and not isinstance(err, PotentialError)
        assert err.potential == "plain" and err.capability == capability
        assert str(err).startswith(f"potential 'plain' does not provide {capability}: ")
    with pytest.raises(UnsupportedCapabilityError, match="descriptors come from MACE models"):
        plain.descriptors(mols)
    with pytest.raises(UnsupportedCapabilityError, match="uncertainties: use load_potential\\('default'\\)"):
        tiny_mace.energies_and_uncertainties(mols)
    with pytest.raises(UnsupportedCapabilityError, match="committee"):
        tiny_mace.require("committee")
    tiny_mace.require("descriptors")
    # the committee's attributes are absent, not merely failing: hasattr and getattr with a default say so
    for attribute in ("committee_size", "uncertainty_scale"):
        assert not hasattr(tiny_mace, attribute) and getattr(plain, attribute, None) is None
        with pytest.raises(UnsupportedCapabilityError, match="does not provide committee"):
            getattr(tiny_mace, attribute)


def test_committee_attributes(committee):
    assert committee.committee_size == committee.heads.members == 3
    assert committee.uncertainty_scale == 2.0
    energies, members = committee.committee_energies(_molecules())
    assert members.shape == (len(_molecules()), committee.committee_size)


def test_counting_potential_has_the_base_surface_and_counts_every_evaluation(tiny_mace, committee):
    assert "__getattr__" not in vars(CountingPotential)
    public = {n for n, _ in inspect.getmembers(Potential) if not n.startswith("_")}
    assert public <= {n for n, _ in inspect.getmembers(CountingPotential) if not n.startswith("_")}
    # every declared evaluation is overridden (forwarded and counted), not inherited from the base
    for method in ("energies", "energies_and_forces", "descriptors", "uncertainties", "energies_and_uncertainties",
                   "committee_energies", "committee_size", "uncertainty_scale", "capabilities"):
        assert method in vars(CountingPotential), method

    mols = _molecules()
    counted = CountingPotential(committee)
    assert counted.capabilities == committee.capabilities and counted.supports("committee")
    assert counted.committee_size == 3 and counted.uncertainty_scale == 2.0
    np.testing.assert_array_equal(counted.energies(mols), committee.energies(mols))
    for got, want in zip(counted.committee_energies(mols), committee.committee_energies(mols)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(counted.uncertainties(mols), committee.uncertainties(mols))
    np.testing.assert_array_equal(counted.energies_and_uncertainties(mols)[1], committee.uncertainties(mols))
    counted.energies_and_forces(mols)
    first = counted.descriptors(mols, num_layers=1)
    assert [d.shape for d in first] == [d.shape for d in committee.descriptors(mols, num_layers=1)]
    assert counted.calls == 6 * len(mols) and counted.batches == 6

    plain = CountingPotential(tiny_mace)
    assert plain.capabilities == tiny_mace.capabilities and not plain.supports("committee")
    with pytest.raises(UnsupportedCapabilityError, match=re.escape(f"potential '{tiny_mace.name}' does not pr")):
        plain.uncertainties(mols)
    assert not hasattr(plain, "committee_size") and not hasattr(plain, "heads")
    assert not hasattr(plain, "r_max")  # backend attributes are not forwarded: unwrap with .inner
    assert plain.inner.r_max == tiny_mace.r_max
    again = pickle.loads(pickle.dumps(CountingPotential(_Plain())))
    assert again.capabilities == _Plain.capabilities and again.calls == 0


class _Picky(Potential):
    """Fails (``PotentialError``) on any structure of more than three atoms; records the size of each call."""

    name, species = "picky", frozenset({1, 6})

    def __init__(self):
        self.calls = []

    def energies_and_forces(self, structures):
        self.calls.append(len(structures))
        if any(len(a) > 3 for a in structures):
            raise PotentialError("no SCF convergence")
        return np.array([-float(len(a)) for a in structures]), [np.full((len(a), 3), len(a)) for a in structures]


def test_tolerant_energies_and_forces():
    from molgym.potentials.batching import energies_and_forces_or_nan

    small, big = Atoms("CH2", positions=np.eye(3)), Atoms("CH4", positions=np.arange(15.0).reshape(5, 3))
    picky = _Picky()
    energies, forces, reasons = energies_and_forces_or_nan(picky, [small, big, small])
    assert picky.calls == [3, 1, 1, 1]
    assert energies[0] == energies[2] == -3.0 and np.isnan(energies[1])
    assert forces[1] is None and forces[0].shape == (3, 3) and reasons == ["", "no SCF convergence", ""]
    picky.calls.clear()
    energies, forces, reasons = energies_and_forces_or_nan(picky, [small, small])
    assert picky.calls == [2] and energies.tolist() == [-3.0, -3.0] and reasons == ["", ""]
    assert energies_and_forces_or_nan(picky, [])[0].shape == (0,)


def test_the_tolerant_batch_does_not_swallow_a_missing_capability():
    from molgym.potentials.batching import evaluate_batch, evaluate_one

    with pytest.raises(UnsupportedCapabilityError):
        evaluate_batch(_Plain(), _molecules(), committee=True)
    with pytest.raises(UnsupportedCapabilityError):
        evaluate_one(_Plain(), _molecules()[0], committee=True)
    assert [e for e, _, _ in evaluate_batch(_Plain(), _molecules())] == [0.0] * len(_molecules())


def test_model_evaluation_uses_the_tolerant_batch():
    from molgym.potentials.evaluation import predict

    small, big = Atoms("CH2", positions=np.eye(3)), Atoms("CH4", positions=np.arange(15.0).reshape(5, 3))
    picky = _Picky()
    energies, forces = predict(picky, [small, big, small, small], batch_size=3)
    assert picky.calls == [3, 1, 1, 1, 1]
    assert np.isnan(energies[1]) and forces[1] is None and energies[3] == -3.0 and forces[3].shape == (3, 3)


def test_batched_evaluation_isolates_failing_structures():
    """One call for the batch; when it fails, one by one, so only the failing structure loses its energy."""
    from molgym.potentials.batching import energies_or_nan, evaluate_batch

    small, big = Atoms("CH2", positions=np.eye(3)), Atoms("CH4", positions=np.vstack([np.zeros(3), np.eye(3) * 1.1,
                                                                                     [[-1.1, 0, 0]]]))
    picky = _Picky()
    assert energies_or_nan(picky, [small, small]).tolist() == [-3.0, -3.0] and picky.calls == [2]
    picky.calls.clear()
    energies = energies_or_nan(picky, [small, big, small])
    assert energies[0] == energies[2] == -3.0 and np.isnan(energies[1]) and picky.calls == [3, 1, 1, 1]
    assert evaluate_batch(picky, [big])[0] == (None, "no SCF convergence", None)
    assert evaluate_batch(picky, []) == []
