"""SiMGen: priors, hydrogens, relaxation, determinism, conditioning, errors, registry and CLI.

The descriptor model here is the tiny *untrained* MACE of tests/conftest.py: it exercises the real code path
(autograd through MACE's descriptors, batching, caching) but its chemistry is meaningless, so these tests check
mechanics and contracts; the chemistry figures come from the trained model (docs/simgen.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

from molgym.agents.simgen import (
    GaussianPrior,
    LinePrior,
    PointCloudPrior,
    RingPrior,
    SiMGen,
    parse_prior,
)
from molgym.agents.simgen import hydrogens
from molgym.agents.simgen.generator import PIECE_CUTOFF, PIECE_TARGET, cohesion_moves, fire_relax, pieces
from molgym.agents.simgen.reference import REFERENCE_FILE, load_reference_molecules, skeleton


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory):
    """The first 24 molecules of the shipped reference file (keeps descriptor computation fast)."""
    from molgym.io import write_xyz

    path = tmp_path_factory.mktemp("ref") / "ref.xyz"
    write_xyz(path, load_reference_molecules()[:24])
    return path


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLGYM_CACHE_DIR", str(tmp_path / "cache"))


def _gen(tiny_mace, small_reference, **kw) -> SiMGen:
    options = dict(model=tiny_mace, potential=tiny_mace, reference=small_reference, particles=1, steps=4,
                   relax_steps=3, n_atoms=4)
    options.update(kw)
    return SiMGen(**options)


# --- priors ---------------------------------------------------------------------------------------------------
def test_parse_prior_specs():
    assert isinstance(parse_prior("gaussian"), GaussianPrior)
    assert np.allclose(parse_prior("gaussian:sigma=1.5").widths(), 1.5)
    assert np.allclose(parse_prior("gaussian:sigmas=3,1,0.5").widths(), [3, 1, 0.5])
    ring = parse_prior("ring:radius=3")
    assert isinstance(ring, RingPrior) and ring.radius == 3.0
    assert ring.n_atoms() == round(2 * np.pi * 3 / 1.4)
    line = parse_prior("line:length=5.6")
    assert isinstance(line, LinePrior) and line.n_atoms() == 5


def test_point_cloud_prior_from_file(tmp_path):
    from molgym.io import write_xyz

    mol = load_reference_molecules()[0]
    write_xyz(tmp_path / "shape.xyz", [mol])
    prior = parse_prior(f"points:{tmp_path / 'shape.xyz'}")
    assert isinstance(prior, PointCloudPrior)
    assert prior.n_atoms() == int((mol.numbers > 1).sum())
    assert np.allclose(prior.points(), mol.positions[mol.numbers > 1])


@pytest.mark.parametrize("spec, words", [
    ("ring:radius=-1", ["radius", "-1", "positive"]),
    ("ring:radius=0", ["radius", "positive"]),
    ("line:length=abc", ["length", "abc"]),
    ("gaussian:sigmas=1,2", ["sigmas", "3"]),
    ("blob", ["blob", "gaussian", "ring"]),
    ("ring:diameter=3", ["diameter", "radius"]),
    ("points:/no/such/file.xyz", ["/no/such/file.xyz", "does not exist"]),
])
def test_bad_prior_specs_name_the_value(spec, words):
    with pytest.raises(ValueError) as err:
        parse_prior(spec)
    for word in words:
        assert word in str(err.value)


def test_empty_point_cloud_is_rejected():
    with pytest.raises(ValueError, match=r"non-empty \(m, 3\)"):
        PointCloudPrior(np.zeros((0, 3)))


def test_prior_energies_vanish_on_the_shape():
    import torch

    phi = np.linspace(0, 2 * np.pi, 7)[:-1]
    on_ring = np.stack([2.0 * np.cos(phi), 2.0 * np.sin(phi), np.zeros(6)], axis=1)
    assert float(RingPrior(radius=2.0).energy(torch.tensor(on_ring[None]))) < 1e-10
    off = on_ring * 1.5
    assert float(RingPrior(radius=2.0).energy(torch.tensor(off[None]))) == pytest.approx(0.5 * 6 * 1.0**2)
    on_line = np.array([[-2.0, 0, 0], [0.0, 0, 0], [2.0, 0, 0]])
    assert float(LinePrior(length=4.0).energy(torch.tensor(on_line[None]))) < 1e-10
    cloud = PointCloudPrior(on_ring, width=0.05)
    assert float(cloud.energy(torch.tensor(on_ring[None]))) < 0.01


# --- hydrogens --------------------------------------------------------------------------------------------------
def test_hydrogens_rebuild_reference_molecules():
    """Strip the hydrogens of real QM9 molecules, rebuild them from the skeleton: valid, mostly the same."""
    from molgym.metrics.chemistry import perceive

    molecules = load_reference_molecules()[:40]
    valid = same = 0
    for mol in molecules:
        skel = skeleton(mol)
        orders = hydrogens.assign_bond_orders(skel.numbers, skel.positions)
        assert orders is not None
        full = hydrogens.add_hydrogens(skel, hydrogens.hydrogen_counts(skel.numbers, orders))
        p = perceive(full)
        valid += p.valid
        same += p.valid and p.smiles == perceive(mol).smiles
    assert valid == len(molecules)
    assert same >= 0.85 * len(molecules)


def test_hydrogens_keep_clear_of_other_atoms():
    """A crowded skeleton (a diffusion sample): the default VSEPR orientation would put a hydrogen within bonding
    distance of a second atom; the group is turned instead, so every hydrogen has exactly one neighbour."""
    from molgym.metrics.bonds import connectivity
    from molgym.metrics.chemistry import perceive

    skel = Atoms(numbers=[6, 6, 6, 6, 8, 6, 6, 6], positions=[
        [-1.936, -0.16, 1.81], [0.118, 0.469, 0.683], [-2.012, -0.275, -0.584], [-1.111, 0.014, 0.611],
        [0.286, 1.381, 1.769], [0.627, -1.198, -1.673], [2.645, 0.257, -1.522], [1.383, -0.487, -1.093]])
    whole = hydrogens.hydrogenate(skel)
    bonded = connectivity(whole)
    assert (bonded[whole.numbers == 1].sum(axis=1) == 1).all()
    assert perceive(whole).valid
    # without turning (one orientation tried) this skeleton gets a hydrogen bonded to two atoms
    import molgym.agents.simgen.hydrogens as module

    saved = module.CLEARANCE
    module.CLEARANCE = -1.0
    try:
        plain = hydrogens.hydrogenate(skel)
    finally:
        module.CLEARANCE = saved
    assert (connectivity(plain)[plain.numbers == 1].sum(axis=1) > 1).any()


def test_bond_orders_respect_a_hydrogen_target():
    # benzene's carbons: a ring of 6 at 1.39 Å takes 3 double bonds for 6 hydrogens
    phi = np.arange(6) * np.pi / 3
    ring = np.stack([1.39 * np.cos(phi), 1.39 * np.sin(phi), np.zeros(6)], axis=1)
    orders = hydrogens.assign_bond_orders(np.full(6, 6), ring, n_hydrogens=6)
    assert orders is not None and sorted(orders.values()) == [1, 1, 1, 2, 2, 2]
    assert hydrogens.hydrogen_counts(np.full(6, 6), orders).tolist() == [1] * 6
    # without a target, aromatic-length bonds alternate rather than becoming a cumulene ring (C1=C=C=C=C=C1)
    free = hydrogens.assign_bond_orders(np.full(6, 6), ring)
    assert sorted(free.values()) == [1, 1, 1, 2, 2, 2]
    # a linear C-C-C with short bonds may carry two double bonds (allene)
    allene = np.array([[-1.31, 0, 0], [0, 0, 0], [1.31, 0, 0]])
    assert sorted(hydrogens.assign_bond_orders(np.full(3, 6), allene).values()) == [2, 2]
    # an over-bonded carbon (5 neighbours at bonding distance) has no assignment
    star = np.array([[0, 0, 0], [1.5, 0, 0], [-1.5, 0, 0], [0, 1.5, 0], [0, -1.5, 0], [0, 0, 1.5]], dtype=float)
    assert hydrogens.assign_bond_orders(np.full(6, 6), star) is None


# --- relaxation ----------------------------------------------------------------------------------------------
def test_fire_relax_lowers_the_energy_and_keeps_fixed_atoms(tiny_mace):
    mol = load_reference_molecules()[1].copy()
    mol.positions += np.random.default_rng(0).normal(scale=0.1, size=mol.positions.shape)
    e0 = tiny_mace.energies([mol])[0]
    relaxed, energies = fire_relax(tiny_mace, [mol], steps=15, fmax=1e-3, n_fixed=2)
    assert energies[0] < e0
    assert np.allclose(relaxed[0].positions[:2], mol.positions[:2])
    assert not np.allclose(relaxed[0].positions[2:], mol.positions[2:])


# --- the generator -------------------------------------------------------------------------------------------
def test_deterministic_for_a_seed(tiny_mace, small_reference):
    a = _gen(tiny_mace, small_reference).generate(None, 2, seed=3)
    b = _gen(tiny_mace, small_reference).generate(None, 2, seed=3)
    c = _gen(tiny_mace, small_reference).generate(None, 2, seed=4)
    assert len(a) == 2
    for x, y in zip(a, b):
        assert np.array_equal(x.numbers, y.numbers)
        assert np.array_equal(x.positions, y.positions)
    assert not all(np.allclose(x.positions[:4], z.positions[:4]) for x, z in zip(a, c))
    for mol in a:
        assert int((mol.numbers > 1).sum()) == 4
        assert set(mol.numbers.tolist()) <= {1, 6, 7, 8, 9}
        assert "simgen_score" in mol.info


def test_elements_are_restricted(tiny_mace, small_reference):
    mols = _gen(tiny_mace, small_reference, elements=["C", "O"], n_atoms=5).generate(None, 2, seed=0)
    for mol in mols:
        assert set(mol.numbers[mol.numbers > 1].tolist()) <= {6, 8}


def test_fragment_stays_fixed(tiny_mace, small_reference):
    frag = Atoms("CCO", positions=[[0, 0, 0], [1.52, 0, 0], [2.1, 1.2, 0]])
    gen = _gen(tiny_mace, small_reference, fragment=frag, n_atoms=3, relax_steps=5)
    centred = frag.positions - frag.positions.mean(axis=0)
    for mol in gen.generate(None, 2, seed=1):
        assert mol.numbers[:3].tolist() == [6, 6, 8]
        assert np.allclose(mol.positions[:3], centred)
        assert int((mol.numbers > 1).sum()) == 6


def test_ring_prior_places_heavy_atoms_on_the_ring(tiny_mace, small_reference):
    gen = _gen(tiny_mace, small_reference, prior="ring:radius=2.5", n_atoms=None, relax_steps=0, steps=8)
    prior = RingPrior(radius=2.5)
    assert gen.prior.n_atoms() == prior.n_atoms()
    for mol in gen.generate(None, 2, seed=0):
        heavy = mol.positions[mol.numbers > 1]
        assert len(heavy) == prior.n_atoms()
        rho = np.linalg.norm(heavy[:, :2], axis=1)
        distance = np.sqrt((rho - 2.5) ** 2 + heavy[:, 2] ** 2)
        assert distance.mean() <= 0.5


def test_registry_and_formula_task(tiny_mace, small_reference):
    from molgym.benchmark import get_generator, get_task

    gen = get_generator("simgen", model=tiny_mace, potential=tiny_mace, reference=small_reference, particles=1,
                        steps=3, relax_steps=2)
    assert isinstance(gen, SiMGen)
    (mol,) = gen.generate(get_task("C3H8O"), 1, seed=0)
    heavy = sorted(mol.numbers[mol.numbers > 1].tolist())
    assert heavy == [6, 6, 6, 8]
    meta = gen.metadata()
    assert meta["name"] == "simgen" and meta["descriptor_calls"] > 0


def test_progress_moves_within_one_molecule(tiny_mace, small_reference):
    """Progress is reported during the work (diffusion steps, element rounds, relaxation steps), not only when a
    batch ends: for n=1 it is called many times, never goes back, stays below 1 until the molecule is done."""
    calls = []
    gen = _gen(tiny_mace, small_reference, particles=2, steps=6, relax_steps=4)
    (mol,) = gen.generate(None, 1, seed=0, progress=calls.append)
    assert len(calls) >= 6 + 2  # at least one per integration step, and more for the later phases
    assert calls == sorted(calls) and len(set(calls)) == len(calls)
    assert calls[-1] == 1 and isinstance(calls[-1], int)
    assert all(0 < c < 1 for c in calls[:-1])
    assert max(calls[:-1]) > 0.5  # the relaxation phase reports too


def test_benchmark_generate_takes_an_optional_progress(tiny_mace, small_reference):
    from molgym.benchmark import get_task

    gen = _gen(tiny_mace, small_reference)
    task = get_task("C3H8O")
    (a,) = gen.generate(task, 1, seed=2)  # the benchmark's call, unchanged
    calls = []
    (b,) = gen.generate(task, 1, 2, progress=calls.append)
    assert np.array_equal(a.numbers, b.numbers) and np.allclose(a.positions, b.positions)
    assert calls and calls[-1] == 1


def test_several_candidates_per_relaxation_round_choose_the_same(tiny_mace, small_reference):
    """With few molecules left, a round relaxes several candidates of each; the choice is the one of relaxing
    them one per round."""
    from molgym.agents.simgen import relaxation as gen_mod

    def run(round_min):
        gen = _gen(tiny_mace, small_reference, particles=4, relax_steps=3)
        rounds = []
        relax = gen._relax_batch
        gen._relax_batch = lambda mols, callback=None: rounds.append(len(mols)) or relax(mols, callback)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(gen_mod, "RELAX_ROUND_MIN", round_min)
            (mol,) = gen.generate(None, 1, seed=5)
        return mol, rounds

    a, one_by_one = run(1)  # one candidate per molecule and round: the old rule
    b, together = run(8)
    # the untrained model's candidates are poor, so the old rule takes several rounds of one; now one round
    assert len(one_by_one) > 1 and set(one_by_one) == {1}
    assert len(together) == 1 and together[0] >= len(one_by_one)
    assert np.array_equal(a.numbers, b.numbers)
    assert np.allclose(a.positions, b.positions, atol=1e-6)
    assert a.info["simgen_score"] == b.info["simgen_score"]


def test_pieces_and_cohesion_join_separate_pieces():
    chain = np.array([[0.0, 0, 0], [1.4, 0, 0], [2.8, 0, 0]])
    lone = np.array([[2.8, 4.0, 0.0]])  # 4 Å from the chain's end: its own piece
    x = np.concatenate([chain, lone])[None]
    labels, _d = pieces(x)
    assert labels.tolist() == [[0, 0, 0, 3]]
    # a connected structure is not moved
    assert not cohesion_moves(x[:, :3], 0, 0.5, 0.25).any()
    move = cohesion_moves(x, 0, 0.5, 0.25)
    assert not move[0, :3].any()  # the main (largest) piece stays
    assert np.allclose(move[0, 3], [0, -0.25, 0])  # the lone atom goes straight to the nearest atom, capped
    # a two-atom piece moves rigidly (keeps its own bond)
    pair = np.concatenate([chain, [[2.8, 4.0, 0.0], [2.8, 5.2, 0.0]]])[None]
    move = cohesion_moves(pair, 0, 0.5, 0.25)
    assert np.allclose(move[0, 3], move[0, 4]) and move[0, 3, 1] < 0
    # applied repeatedly the pieces join, at the target distance (a bond), and stay joined
    for _ in range(200):
        x = x + np.concatenate([np.zeros((1, 0, 3)), cohesion_moves(x, 0, 0.5, 0.25)], axis=1)
    assert pieces(x)[0].max() == 0
    assert PIECE_TARGET <= np.linalg.norm(x[0, 3] - x[0, 2]) < PIECE_CUTOFF
    # with a fixed fragment (first atoms), the fragment's piece is the main one even when smaller
    y = np.array([[[0.0, 0, 0], [5, 0, 0], [6.4, 0, 0], [7.8, 0, 0]]])
    move = cohesion_moves(y, 1, 0.5, 0.25)
    assert move.shape == (1, 3, 3) and np.allclose(move[0, :, 0], -0.25)


def test_cohesion_joins_pieces_in_the_dynamics(tiny_mace, small_reference):
    """Same starts and noise with and without cohesion: with it, the atoms end in fewer pieces (the untrained
    model's kernel pushes atoms apart, so they do not all join in 12 steps)."""
    def separate(cohesion):
        gen = _gen(tiny_mace, small_reference, n_atoms=6, cohesion=cohesion, cohesion_start=0.0, steps=12,
                   prior="gaussian:sigma=2.5")
        starts = np.stack([gen.prior.sample(6, np.random.default_rng(k)) for k in range(8)])
        end = gen._diffuse(starts, gen.prior, np.random.default_rng(0))
        return sum(len(set(labels)) for labels in pieces(end)[0].tolist())

    before, after = separate(0.0), separate(0.5)
    assert before >= 6 * 6  # spread-out starts: mostly lone atoms without the pull
    assert after < 0.7 * before


def test_piece_penalty_scores_against_elements_that_leave_pieces(tiny_mace, small_reference):
    """An F 1.5 Å from a C is not bonded (C-F cutoff 1.45 Å) but a C is: with the penalty, the element search's
    score puts the F assignment (two pieces: HF beside the rest) a penalty below; default on with a fragment."""
    per_atom = np.zeros(3)
    chain = np.array([[0.0, 0, 0], [1.5, 0, 0], [3.0, 0, 0]])
    ccc, ccf = Atoms("CCC", positions=chain), Atoms("CCF", positions=chain)
    off = _gen(tiny_mace, small_reference)
    assert off.piece_penalty == 0.0 and off._score(ccf, per_atom) == off._score(ccc, per_atom)
    on = _gen(tiny_mace, small_reference, piece_penalty=50.0)
    assert on._score(ccc, per_atom) == 0.0 and on._score(ccf, per_atom) == -50.0
    frag = Atoms("CC", positions=[[0, 0, 0], [1.52, 0, 0]])
    grown = _gen(tiny_mace, small_reference, fragment=frag)
    assert grown.piece_penalty == 50.0 and grown.metadata()["settings"]["piece_penalty"] == 50.0
    with pytest.raises(ValueError, match="piece_penalty"):
        _gen(tiny_mace, small_reference, piece_penalty=-1.0)


def test_reference_descriptors_are_computed_once(tiny_mace, small_reference, monkeypatch):
    """Generators on the same model share the reference descriptors: a second generator (and a second run)
    computes none."""
    from molgym.agents.simgen import reference as ref_mod

    first = _gen(tiny_mace, small_reference)
    first.generate(None, 1, seed=0)

    def boom(*_args, **_kw):
        raise AssertionError("reference descriptors recomputed")

    monkeypatch.setattr(ref_mod, "_compute", boom)
    second = _gen(tiny_mace, small_reference)
    second.generate(None, 1, seed=1)
    assert second.reference() is first.reference()


def test_reference_descriptors_cached_on_disk(tiny_mace, small_reference, tmp_path):
    from molgym.agents.simgen import reference as ref_mod

    ref_mod._MEMORY.clear()  # earlier tests computed them in memory
    first = ref_mod.reference_descriptors(tiny_mace, small_reference, cache=True)
    files = list((tmp_path / "cache" / "simgen").glob("reference_*.npz"))
    assert len(files) == 1
    ref_mod._MEMORY.clear()
    again = ref_mod.reference_descriptors(tiny_mace, small_reference, cache=True)
    assert np.array_equal(first.blind, again.blind)
    assert first.blind.shape[0] == sum(int((m.numbers > 1).sum()) for m in load_reference_molecules(small_reference))


@pytest.mark.parametrize("kwargs, words", [
    (dict(elements=["C", "Xx"]), ["Xx", "not an element"]),
    (dict(elements=["C", "Cl"]), ["Cl", "covers"]),
    (dict(elements=[]), ["elements", "empty"]),
    (dict(n_atoms=65), ["65", "1..64"]),
    (dict(n_atoms=0), ["n_atoms", "0"]),
    (dict(particles=0), ["particles", "0"]),
    (dict(prior="ring:radius=-2"), ["radius", "-2"]),
    (dict(noise=(-1.0, 0.1)), ["noise", "non-negative"]),
])
def test_bad_options_raise_clear_errors(tiny_mace, small_reference, kwargs, words):
    with pytest.raises(ValueError) as err:
        _gen(tiny_mace, small_reference, **kwargs).generate(None, 1, seed=0)
    for word in words:
        assert word in str(err.value)


def test_more_atoms_than_the_potential_handles(tiny_mace_model, small_reference):
    from molgym.potentials.mace import MACEPotential

    small = MACEPotential(tiny_mace_model, device="cpu", max_atoms_per_batch=30)
    with pytest.raises(ValueError, match=r"max_atoms_per_batch=30"):
        SiMGen(model=small, potential=small, reference=small_reference, n_atoms=9).generate(None, 1, seed=0)


def test_descriptor_model_must_be_mace():
    with pytest.raises(ValueError, match="MACE"):
        SiMGen(model="xtb").descriptor_model()


# --- CLI ----------------------------------------------------------------------------------------------------------
def test_cli_generate_simgen(tiny_mace_file, small_reference, tmp_path, capsys):
    import ase.io

    from molgym.cli import main

    out = tmp_path / "mols.xyz"
    rc = main(["generate", "simgen", "-n", "2", "--atoms", "3", "--model", str(tiny_mace_file), "--reference",
               str(small_reference), "--steps", "2", "--relax-steps", "2", "--particles", "1", "--prior",
               "ring:radius=1.5", "--out", str(out), "--no-progress"])
    assert rc == 0
    frames = ase.io.read(out, index=":")
    assert len(frames) == 2 and all(int((f.numbers > 1).sum()) == 3 for f in frames)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n"] == 2 and summary["generator"]["settings"]["prior"] == "ring:radius=1.5"
    assert "wrote 2 molecules" in capsys.readouterr().out


def test_cli_bad_prior_is_one_line_error(tmp_path, capsys):
    from molgym.cli import main

    rc = main(["generate", "simgen", "-n", "1", "--prior", "ring:radius=-3", "--out", str(tmp_path / "x.xyz")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "radius" in err and "-3" in err and "Traceback" not in err


def test_cli_help_lists_simgen(capsys):
    from molgym.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--help"])
    assert exit_.value.code == 0
    assert "simgen" in capsys.readouterr().out


def test_shipped_reference_file_is_qm9():
    mols = load_reference_molecules(REFERENCE_FILE)
    assert len(mols) >= 100
    assert all("qm9_id" in m.info for m in mols)
    assert set(np.concatenate([m.numbers for m in mols]).tolist()) <= {1, 6, 7, 8, 9}


def test_cli_task_option_uses_the_task_bag(tiny_mace_file, small_reference, tmp_path):
    import ase.io

    from molgym.cli import main

    out = tmp_path / "task.xyz"
    rc = main(["generate", "simgen", "-n", "1", "--task", "C2H6O", "--model", str(tiny_mace_file), "--reference",
               str(small_reference), "--steps", "2", "--relax-steps", "0", "--particles", "1", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    (mol,) = ase.io.read(out, index=":")
    assert sorted(mol.numbers[mol.numbers > 1].tolist()) == [6, 6, 8]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["task"] == "C2H6O" and "novelty" in summary


def test_cli_progress_bar_takes_fractions(capsys):
    """The CLI's bar accepts SiMGen's fractional progress and ends at the whole count."""
    from molgym.cli.generate import sample_with_progress

    class Fractions:
        name = "fractions"

        def generate(self, task, n, seed, progress=None):
            for k in (0.1, 0.2, 0.30000000000000004, 1, 1.5, 2):
                progress(k)
            return [Atoms("C")] * n

    molecules, _seconds = sample_with_progress(Fractions(), 2, 0, progress=True)
    assert len(molecules) == 2
    err = capsys.readouterr().err
    assert "2/2" in err and "0.30000000000000004" not in err
