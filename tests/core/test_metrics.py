"""Metrics reproduce known values on QM9 and catch deliberately broken structures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms

from molgym.metrics import bonds, chemistry, physics, shape, stats
from molgym.chem import parse_formula
from molgym.metrics.evaluate import evaluate, molecule_records, summarize_records

# One OpenMP thread for xTB: on a loaded 2-core machine the default thread count makes each call ~40x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def qm9_sample():
    from molgym.data.qm9 import load_qm9

    return load_qm9().sample(300, seed=11)


def _methanol() -> Atoms:
    from molgym.data.qm9 import load_qm9

    qm9 = load_qm9()
    row = int(np.nonzero(qm9.smiles == "CO")[0][0])
    return qm9.atoms(row)


def test_qm9_stability_and_validity_match_published_values(qm9_sample):
    # EDM reports 99.0 % atom and 95.2 % molecule stability for QM9 itself.
    atom = np.concatenate([bonds.atom_stability(a) for a in qm9_sample])
    mol = np.mean([bonds.is_stable(a) for a in qm9_sample])
    assert atom.mean() >= 0.99
    assert mol >= 0.90
    perceived = [chemistry.perceive(a) for a in qm9_sample]
    assert np.mean([p.valid for p in perceived]) >= 0.95
    assert np.mean([p.connected for p in perceived]) >= 0.99
    # QM9's own molecules are (almost) never novel against QM9
    assert chemistry.novelty([p.smiles for p in perceived]) <= 0.03


def test_perceived_smiles_of_known_molecules():
    m = chemistry.perceive(_methanol())
    assert m.valid and m.connected and m.smiles == "CO"
    assert bonds.bond_order_matrix(_methanol()).sum() == 2 * 5  # C-O + 3 C-H + O-H


def test_removed_atom_is_caught(qm9_sample):
    caught_stab = caught_valid = 0
    for atoms in qm9_sample[:40]:
        h = int(np.nonzero(atoms.numbers == 1)[0][0])
        broken = atoms[[i for i in range(len(atoms)) if i != h]]
        assert not bonds.is_stable(broken)  # the atom that lost its H has a valence short by one
        caught_stab += bonds.atom_stability(broken).mean() < 1
        caught_valid += not chemistry.perceive(broken).valid  # odd electron count: a radical
    assert caught_stab == 40
    assert caught_valid == 40


def test_squeezed_atoms_are_caught(qm9_sample):
    for atoms in qm9_sample[:20]:
        squeezed = atoms.copy()
        squeezed.positions *= 0.6
        assert not bonds.is_stable(squeezed)
        assert bonds.atom_stability(squeezed).mean() < 0.9
    # two atoms pushed onto each other
    methanol = _methanol()
    clash = methanol.copy()
    clash.positions[1] = clash.positions[0] + np.array([0.3, 0.0, 0.0])
    assert not bonds.is_stable(clash)
    assert not chemistry.perceive(clash).valid


def test_fragments_are_not_connected():
    a, b = _methanol(), _methanol()
    b.positions += np.array([8.0, 0.0, 0.0])
    p = chemistry.perceive(a + b)
    assert p.valid and not p.connected and p.fragments == 2 and p.smiles == "CO.CO"


def test_uniqueness_novelty_diversity():
    assert chemistry.uniqueness(["CO", "CO", "CCO", None]) == pytest.approx(2 / 3)
    assert chemistry.uniqueness([None]) is None
    assert chemistry.novelty(["CO", "CCO"]) == 0.0
    assert chemistry.novelty(["CCCCCCCCCCC", "CO"]) == 0.5  # undecane has 11 heavy atoms: not in QM9
    assert chemistry.diversity(["CO", "CO"]) is None
    d_similar = chemistry.diversity(["CCCCCCO", "CCCCCCCO"])
    d_different = chemistry.diversity(["CCCCCCO", "c1ccncc1"])
    assert 0 <= d_similar < d_different <= 1


def test_shape_distance_is_invariant_and_discriminates():
    from molgym.benchmark.tasks import get_task

    ring = get_task("shape-ring").target_array
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = ring[rng.permutation(6)] @ q.T + np.array([3.0, -1.0, 2.0])
    assert shape.shape_distance(moved, ring) < 1e-3
    line = get_task("shape-line").target_array
    assert shape.shape_distance(line, ring) > 0.3
    atoms = Atoms("C6H6", positions=np.vstack([moved, moved * 1.8]))
    assert shape.shape_distance(atoms, ring) < 1e-3  # hydrogens are ignored


def test_kabsch_rmsd():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    assert physics.kabsch_rmsd(x, x @ q.T + 1.0) < 1e-8
    y = x.copy()
    y[0] += 1.0
    assert physics.kabsch_rmsd(x, y) > 0.1


def test_confidence_intervals():
    lo, hi = stats.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    lo, hi = stats.mean_interval([1.0, 2.0, 3.0])  # t_{0.975,2} = 4.303, sd/sqrt(3) = 0.577
    assert (lo, hi) == (pytest.approx(2 - 2.4841, abs=1e-3), pytest.approx(2 + 2.4841, abs=1e-3))
    s = stats.summarize([True, False, None, True], binary=True)
    assert s["n"] == 3 and s["mean"] == pytest.approx(2 / 3)
    assert stats.summarize([None])["mean"] is None


def test_best_known_return_lookup_and_absence(tmp_path):
    from molgym.potentials import load_potential

    xtb, gfn1 = load_potential("xtb"), load_potential("gfn1-xtb")
    assert physics.best_known_return("CH4O", xtb, tmp_path / "missing.json") is None
    table = {"format": 1, "entries": [{"formula": "CH4O", "return": 20.5, "potential": "GFN2-xTB",
                                       "model_sha256": None, "method": "test", "date": "2026-01-01"}]}
    (tmp_path / "best_known.json").write_text(json.dumps(table))
    assert physics.best_known_return("CH4O", xtb, tmp_path / "best_known.json") == 20.5
    assert physics.best_known_return("CH4O", gfn1, tmp_path / "best_known.json") is None  # other potential
    assert physics.best_known_return("C3H8O", xtb, tmp_path / "best_known.json") is None


def test_energy_and_relaxation_metrics_with_xtb():
    from molgym.potentials import load_potential

    xtb = load_potential("xtb")
    methanol = _methanol()
    distorted = methanol.copy()
    distorted.positions += np.random.default_rng(2).normal(scale=0.03, size=distorted.positions.shape)
    result = evaluate([methanol, distorted], xtb, formula="CH4O", best_known=None, relax_steps=100)
    rec0, rec1 = result["molecules"]
    assert rec0["matches_task"] and rec0["return"] > 15  # atomisation energy of methanol, eV
    assert rec1["energy"] > rec0["energy"]
    assert rec1["relax_energy_drop"] > 0.01 > abs(rec0["relax_energy_drop"])
    assert rec1["relax_rmsd"] > rec0["relax_rmsd"]
    summary = summarize_records(result["molecules"])
    assert summary["valid"]["mean"] == 1.0 and summary["uniqueness"]["mean"] == 0.5


def test_import_molgym_metrics_stays_light():
    code = (
        "import sys, molgym, molgym.metrics, molgym.benchmark; "
        "bad = [m for m in ('torch', 'rdkit') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_empty_and_partial_structures_are_scored_not_crashed():
    """RL episodes can end early: an empty canvas or a lone atom must get (invalid) metrics, strict JSON."""
    from molgym.potentials import load_potential

    xtb = load_potential("xtb")
    structures = [Atoms(), Atoms("C"), _methanol()]
    result = evaluate(structures, xtb, bags=[parse_formula("CH4O")] * 3, target=np.zeros((2, 3)), referee=xtb,
                      referee_sample=3, relax_steps=3)
    empty, lone, good = result["molecules"]
    assert not empty["valid"] and empty.get("energy") is None and empty["shape_distance"] is None
    assert not lone["valid"] and lone["return"] == pytest.approx(0.0, abs=1e-6)
    assert good["valid"] and good["matches_task"] and not empty["matches_task"]
    json.dumps(result, allow_nan=False)  # no NaN/Infinity in results files


def test_referee_fraction_of_the_best_known_return():
    """The referee's return over its own best-known return, for molecules of the task's formula only."""
    from molgym.metrics.physics import best_known_return
    from molgym.potentials import load_potential

    xtb = load_potential("xtb")
    best = best_known_return("CH4O", xtb)
    assert best == pytest.approx(29.596566)  # the GFN2-xTB entry of molgym/data/best_known.json
    structures = [_methanol(), Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]])]
    records = molecule_records(structures, None, bags=[parse_formula("CH4O")] * 2, referee=xtb, referee_sample=2,
                               referee_best_known=best)
    methanol, co = records
    expected = methanol["referee_return_per_atom"] * 6 / best
    assert methanol["referee_fraction_best_known"] == pytest.approx(expected)
    assert 0.9 < methanol["referee_fraction_best_known"] <= 1.0 + 1e-3  # an embedded methanol: near the best known
    assert "referee_fraction_best_known" not in co  # not the task's formula: no fraction


def test_fused_atoms_are_implausible_and_get_no_energy_score(tiny_mace):
    """The plausibility gate: fused atoms (random search's 0.01-0.13 Å contacts) are counted, never scored."""
    methanol = _methanol()
    fused = methanol.copy()
    fused.positions[2] = fused.positions[0] + [0.3, 0.0, 0.0]  # an H 0.3 Å from the C
    triple = Atoms("C2H2", positions=[[0, 0, 0], [1.20, 0, 0], [-1.06, 0, 0], [2.26, 0, 0]])  # acetylene
    assert physics.implausibility(methanol) is None and physics.implausibility(triple) is None
    assert "fused atoms: C0 and H2 are 0.30 Å apart" in physics.implausibility(fused)
    carbons = Atoms("CC", positions=[[0, 0, 0], [0.85, 0, 0]])  # above 0.6 Å, below 0.6 x (0.76 + 0.76)
    assert "plausible from 0.91 Å" in physics.implausibility(carbons)
    good, bad = molecule_records([methanol, fused], tiny_mace, relax_steps=0)
    assert good["plausible"] and good["energy"] is not None and good["return"] is not None
    assert not bad["plausible"] and "energy" not in bad and "return" not in bad
    assert summarize_records([good, bad])["plausible"]["mean"] == 0.5


def _embedded(smiles: str, seed: int = 1) -> Atoms:
    """An RDKit ETKDG conformer of ``smiles`` (hydrogens explicit) as ASE atoms."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    return Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=mol.GetConformer().GetPositions())


def _methyl_radical() -> Atoms:
    """CH3, planar: perceivable bonds but a radical, so not a valid molecule."""
    angles = np.radians([0, 120, 240])
    return Atoms("CH3", positions=[[0, 0, 0]] + [[1.08 * np.cos(a), 1.08 * np.sin(a), 0] for a in angles])


def test_posebusters_checks_pass_good_geometry_and_catch_bad_angles():
    from molgym.metrics.posebusters_checks import posebusters_checks

    from scipy.spatial.transform import Rotation

    good = _embedded("CCO")
    bent = good.copy()
    # close the C-C-O angle to 70 degrees by turning the OH group about C1 (C0 and O stay 1.7 Å apart: no new bond)
    c0, c1, o = bent.positions[:3]
    angle = np.degrees(np.arccos(np.dot(c0 - c1, o - c1) / np.linalg.norm(c0 - c1) / np.linalg.norm(o - c1)))
    normal = np.cross(o - c1, c0 - c1)
    turn = Rotation.from_rotvec(np.radians(angle - 70) * normal / np.linalg.norm(normal))
    hydroxyl = [2] + [i for i in range(3, len(bent)) if bent.get_distance(2, i) < 1.2]
    bent.positions[hydroxyl] = turn.apply(bent.positions[hydroxyl] - c1) + c1
    assert bent.get_angle(0, 1, 2) == pytest.approx(70, abs=0.1)
    mols = [chemistry.perceive(a).mol for a in (good, bent)] + [None]
    assert mols[1] is not None, "the folded amide must still be perceivable for the geometry checks to run"
    checks = posebusters_checks(mols)
    assert all(checks[0].values()) and {"bond_angles", "internal_energy", "sanitization"} <= set(checks[0])
    assert not checks[1]["bond_angles"]
    assert checks[2] is None


def test_posebusters_metric_counts_invalid_molecules_as_failing():
    records = molecule_records([_embedded("CCO"), _methyl_radical()])
    ethanol, radical = records
    assert ethanol["posebusters"] and all(ethanol["posebusters_checks"].values())
    assert not radical["valid"] and radical["posebusters"] is False and "posebusters_checks" not in radical
    summary = summarize_records(records)
    assert summary["posebusters"]["mean"] == 0.5
    assert summary["posebusters_checks"]["bond_lengths"]["n"] == 1  # per-check rates: valid molecules only
    assert summary["distinct_valid"]["mean"] == 1


def test_referee_relaxation_reports_strain_rmsd_and_graph():
    from molgym.potentials import load_potential

    xtb = load_potential("xtb")
    ethanol = _embedded("CCO")
    strained = ethanol.copy()
    strained.positions += np.random.default_rng(0).normal(scale=0.08, size=strained.positions.shape)
    relaxed = physics.referee_relaxation(xtb_relaxed := physics.relax(ethanol, xtb, fmax=0.01, steps=300)[0], xtb)
    assert relaxed["referee_relax_energy"] == pytest.approx(0.0, abs=0.1)  # kcal/mol: already a minimum
    result = physics.referee_relaxation(strained, xtb)
    assert result["referee_relax_energy"] > 1.0 and result["referee_graph_kept"]
    assert 0.01 < result["referee_relax_rmsd"] < 0.5 and result["referee_relax_steps"] > 0
    expected = (float(xtb.energies([strained])[0]) - float(xtb.energies([xtb_relaxed])[0])) / physics.KCAL_PER_MOL
    assert result["referee_relax_energy"] == pytest.approx(expected, abs=0.5)
    assert "not converged" in physics.referee_relaxation(strained, xtb, steps=1)["referee_relax_failed"]
    fused = ethanol.copy()
    fused.positions[3] = fused.positions[0] + [0.2, 0, 0]
    assert "fused atoms" in physics.referee_relaxation(fused, xtb)["referee_relax_failed"]


def test_relax_holds_fixed_atoms_in_place_and_releases_less_than_a_free_relaxation():
    from molgym.potentials import load_potential

    xtb = load_potential("xtb")
    strained = _embedded("CCO")
    strained.positions += np.random.default_rng(1).normal(scale=0.08, size=strained.positions.shape)
    heavy = [i for i, z in enumerate(strained.numbers) if z > 1]
    free = physics.relax(strained, xtb, fmax=0.05, steps=300)
    held = physics.relax(strained, xtb, fmax=0.05, steps=300, fixed=heavy)
    np.testing.assert_array_equal(held.atoms.positions[heavy], strained.positions[heavy])
    moved = [i for i in range(len(strained)) if i not in heavy]
    assert np.abs(held.atoms.positions[moved] - strained.positions[moved]).max() > 1e-3
    assert 0 < held.start_energy - held.energy < free.start_energy - free.energy
    assert held.start_energy == pytest.approx(free.start_energy)
    assert np.abs(held.forces[heavy]).max() == 0.0  # fixed atoms' forces are zeroed, so fmax concerns the others


def test_referee_relaxation_samples_valid_molecules_and_summaries_give_median_and_p90():
    from molgym.potentials import load_potential

    xtb = load_potential("xtb")
    structures = [_embedded("CCO", seed=s) for s in range(3)] + [_methyl_radical()]
    records = molecule_records(structures, None, referee=xtb, referee_sample=3, referee_relax_steps=200,
                               posebusters=False)
    relaxed = [r for r in records if "referee_relax_energy" in r]
    assert len(relaxed) == 3 and all(r["valid"] for r in relaxed)  # the invalid radical is never sampled
    summary = summarize_records(records)["referee_relax_energy"]
    values = sorted(r["referee_relax_energy"] for r in relaxed)
    assert summary["median"] == pytest.approx(values[1]) and values[1] <= summary["p90"] <= values[2]
    assert "posebusters" not in records[0]
