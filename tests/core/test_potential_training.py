"""The reward potential's pipeline: dataset builder, mace-torch training, evaluation checks, model card.

Everything here is real: GFN2-xTB labels from tblite and mace-torch's own trainer, on a tiny dataset.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from ase import Atoms

from molgym.data import dataset as ds
from molgym.reward import MIN_DISTANCE, placement_problem


def _read(path):
    import ase.io

    return ase.io.read(path, index=":")


# --- geometry generators --------------------------------------------------------------------------------------
def test_build_order_is_bfs_with_hydrogens_after_their_heavy_atom():
    from molgym.data.qm9 import load_qm9

    atoms = load_qm9().atoms(1000)
    order = ds.build_order(atoms, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(atoms)))
    numbers = atoms.numbers[order]
    assert numbers[0] > 1
    pos = atoms.positions[order]
    for k in range(1, len(order)):
        if numbers[k] == 1:  # an H follows its own heavy atom (or a sibling H of it)
            heavy_before = [j for j in range(k) if numbers[j] > 1]
            nearest = min(range(len(atoms)), key=lambda j: np.inf if atoms.numbers[order[j]] == 1
                          else np.linalg.norm(pos[j] - pos[k]))
            assert nearest == heavy_before[-1]
    # same seed, same order; the order depends on nothing else
    assert np.array_equal(order, ds.build_order(atoms, np.random.default_rng(0)))


def test_split_is_by_molecule_and_seeded():
    ids = range(1, 3000)
    splits = [ds.split_of(i, 0) for i in ids]
    assert set(splits) == {"train", "valid", "test"}
    assert 0.05 < splits.count("test") / len(splits) < 0.15
    assert splits == [ds.split_of(i, 0) for i in ids]
    assert splits != [ds.split_of(i, 1) for i in ids]


def test_diatomics_cover_every_pair():
    structures = ds.diatomic_configurations(np.array([0.7, 1.0]))
    assert len(structures) == 2 * 15
    assert {s.info["pair"] for s in structures} >= {"H2", "CH", "F2", "FO"}


def test_nonqm9_smiles_are_outside_qm9():
    from rdkit import Chem

    pairs = ds.read_nonqm9_smiles()
    assert len(pairs) >= 30
    for smiles, name in pairs:
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None, name
        assert 10 <= mol.GetNumHeavyAtoms() <= 16, name  # QM9 has at most 9 heavy atoms
        assert {a.GetSymbol() for a in mol.GetAtoms()} <= set("HCNOF"), name


def test_bad_dataset_settings_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset size 'huge'"):
        ds.build_dataset(tmp_path / "x", "huge")
    with pytest.raises(ValueError, match="alternatives_per_group"):
        ds.build_dataset(tmp_path / "x", replace(ds.SIZES["tiny"], alternatives_per_group=1))
    with pytest.raises(ValueError, match="close_contact_range"):
        replace(ds.SIZES["tiny"], close_contact_range=(0.3, 1.0)).validate()
    with pytest.raises(ValueError, match="workers"):
        ds.build_dataset(tmp_path / "x", "tiny", workers=0)


# --- the tiny dataset ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dataset_files_categories_and_split(tiny_dataset):
    out, manifest = tiny_dataset
    assert manifest["complete"]
    assert manifest["reference_method"].startswith("GFN2-xTB")
    assert "Ramakrishnan" in manifest["source"]["citation"] and manifest["source"]["license"] == "CC BY 4.0"
    train, test = _read(out / "train.xyz"), _read(out / "test.xyz")
    cats = {a.info["category"] for a in train}
    assert {"equilibrium", "thermal", "build", "misplaced", "close_contact", "atoms", "diatomic"} <= cats
    assert {"build", "alternatives", "diatomic"} <= {a.info["category"] for a in test}
    ids = {name: {a.info["molecule_id"] for a in _read(out / f"{name}.xyz")} - {"special"}
           for name in ("train", "valid", "test", "isomers", "nonqm9")}
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not ids[a] & ids[b], f"molecule in both {a} and {b}"
    for a in train:
        assert np.isfinite(a.info["REF_energy"])
        assert a.arrays["REF_forces"].shape == (len(a), 3)
    for a in _read(out / "isomers.xyz"):
        assert a.get_chemical_formula() == "C7H10O2"
    for a in _read(out / "nonqm9.xyz"):
        assert sum(a.numbers > 1) >= 10
    assert manifest["counts"]["train"]["total"] == len(train)


@pytest.mark.slow
def test_dataset_structures_obey_the_env_rules_and_labels_are_xtb(tiny_dataset):
    from molgym.potentials import load_potential

    out, _ = tiny_dataset
    train = _read(out / "train.xyz")
    misplaced = [a for a in train if a.info["category"] == "misplaced"]
    assert misplaced
    for a in misplaced:  # allowed by the environment's placement rules
        assert placement_problem(a[:-1], int(a.numbers[-1]), a.positions[-1]) is None
    for a in (a for a in train if a.info["category"] == "close_contact"):
        d = a.get_all_distances()
        np.fill_diagonal(d, np.inf)
        assert MIN_DISTANCE - 1e-6 <= d.min() <= 1.0 + 1e-6
    radicals = [a for a in train if a.info["category"] == "build" and sum(a.numbers) % 2]
    assert radicals, "build prefixes should include radicals"
    xtb = load_potential("xtb")
    sample = [train[0], misplaced[0], radicals[0]]
    e, f = xtb.energies_and_forces(sample)
    assert np.allclose(e, [a.info["REF_energy"] for a in sample], atol=1e-6)
    assert np.allclose(f[1], sample[1].arrays["REF_forces"], atol=1e-5)


@pytest.mark.slow
def test_dataset_resumes_and_is_deterministic(tiny_dataset):
    out, _ = tiny_dataset
    before = (out / "train.xyz").read_bytes()
    shard = sorted((out / "shards").glob("qm9-train-*.json"))[0]
    shard.unlink()
    shard.with_suffix(".xyz").unlink()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.json")}
    ds.build_dataset(out, "tiny", workers=1, progress=False)
    assert (out / "train.xyz").read_bytes() == before  # the rebuilt shard is identical
    assert shard.is_file()
    for p in (out / "shards").glob("*.json"):  # finished shards were skipped
        if p.name in finished:
            assert p.stat().st_mtime_ns == finished[p.name]
    with pytest.raises(ValueError, match="other settings"):
        ds.build_dataset(out, replace(ds.SIZES["tiny"], seed=5), workers=1, progress=False)


# --- evaluation checks ----------------------------------------------------------------------------------------
def _trajectory():
    mol = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    out = []
    for k in range(1, 4):
        p = mol[:k]
        p.info.update(category="build", trajectory="w", step=k)
        out.append(p)
    return out


def test_build_reward_errors_are_zero_for_the_reference_and_see_a_shift():
    from molgym.potentials.evaluation import build_reward_errors

    structures = _trajectory()
    e_ref = np.array([-102.0, -114.0, -126.5])
    atoms = {1: -10.0, 8: -102.0}
    zero = build_reward_errors(structures, e_ref, e_ref, atoms, atoms)
    assert zero["trajectories"] == 1 and zero["steps"] == 3 and zero["reward_mae_meV"] == 0
    shifted = build_reward_errors(structures, e_ref + np.array([0, 0.03, 0.03]), e_ref, atoms, atoms)
    assert shifted["reward_mae_meV"] == pytest.approx(10.0)  # only step 2 changes, by 30 meV, over 3 steps


def test_rank_checks():
    from molgym.potentials.evaluation import alternatives_rank_test, diatomic_monotonicity, isomer_ranking

    alts = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.1 * k]]) for k in range(6)]
    for a in alts:
        a.info.update(category="alternatives", group="g")
    ref = np.array([1.0, 0.5, 0.2, 0.1, 0.3, 0.9])
    assert alternatives_rank_test(alts, ref * 2, ref)["spearman_mean"] == pytest.approx(1.0)
    assert alternatives_rank_test(alts, -ref, ref)["spearman_mean"] == pytest.approx(-1.0)

    dia = []
    for r in np.linspace(0.5, 1.0, 6):
        a = Atoms("CO", positions=[[0, 0, 0], [0, 0, r]])
        a.info.update(category="diatomic", distance=r, pair="CO")
        dia.append(a)
    rising = 1.0 / np.linspace(0.5, 1.0, 6)
    assert diatomic_monotonicity(dia, rising)["monotonic_pairs"] == 1
    bumpy = rising.copy()
    bumpy[2] = bumpy[0] + 1
    assert diatomic_monotonicity(dia, bumpy)["pairs"]["CO"]["monotonic"] is False

    iso = [Atoms("H") for _ in range(5)]
    for a in iso:
        a.info["category"] = "isomer"
    e = np.array([0.0, 0.1, 0.3, 0.2, 0.5])
    res = isomer_ranking(iso, e + 7.0, e)
    assert res["spearman"] == pytest.approx(1.0) and res["relative_energy_mae_meV"] == pytest.approx(0.0, abs=1e-6)


# --- training ------------------------------------------------------------------------------------------------------
def test_training_arguments_are_checked_before_training(tmp_path, tiny_dataset):
    from molgym.training.mace_train import mace_arguments

    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        mace_arguments(tmp_path, tmp_path / "out")
    data, manifest = tiny_dataset
    with pytest.raises(ValueError, match="unknown architecture 'huge'"):
        mace_arguments(data, tmp_path / "out", architecture="huge")
    with pytest.raises(ValueError, match="dtype"):
        mace_arguments(data, tmp_path / "out", dtype="float16")
    argv = mace_arguments(data, tmp_path / "out", architecture="tiny")
    e0s = eval(argv[argv.index("--E0s") + 1])  # noqa: S307 - our own repr of a dict of floats
    assert e0s == {int(z): e for z, e in manifest["isolated_atom_energies"].items()}
    assert argv[argv.index("--energy_key") + 1] == "REF_energy"
    from mace.tools import build_default_arg_parser

    args = build_default_arg_parser().parse_args(argv)  # mace's own parser accepts every argument
    assert args.restart_latest and args.max_num_epochs == 100 and not args.swa
    with pytest.raises(ValueError, match=r"stage_two_from must be an epoch in \[1, epochs\) = \[1, 10\), got 10"):
        mace_arguments(data, tmp_path / "out", epochs=10, stage_two_from=10)
    with pytest.raises(ValueError, match="stage_two_lr must be > 0"):
        mace_arguments(data, tmp_path / "out", epochs=10, stage_two_from=5, stage_two_lr=0.0)
    args = build_default_arg_parser().parse_args(mace_arguments(data, tmp_path / "out", epochs=10, stage_two_from=5))
    assert args.swa and args.start_swa == 5 and args.swa_energy_weight == 1000.0 and args.swa_lr == 1e-3


@pytest.mark.slow
def test_tiny_training_end_to_end(tmp_path, tiny_dataset):
    """mace-torch trains a tiny model for one epoch; it loads as a molgym potential whose isolated-atom
    energies are xTB's (the E0s), and the evaluation runs on every test set."""
    from molgym.potentials import load_potential
    from molgym.potentials.evaluation import evaluate_dataset
    from molgym.reward import isolated_atom_energies
    from molgym.training.mace_train import train_mace

    data, manifest = tiny_dataset
    model_path = train_mace(data, tmp_path / "train", architecture="tiny", epochs=1, batch_size=8, threads=2)
    assert model_path.is_file()
    settings = json.loads((tmp_path / "train" / "train_settings.json").read_text())
    assert settings["architecture"] == "tiny" and settings["runs"]
    pot = load_potential(model_path, device="cpu")
    assert pot.species == frozenset(ds.ELEMENTS)
    atoms = isolated_atom_energies(pot, ds.ELEMENTS)
    for z, e in manifest["isolated_atom_energies"].items():
        assert atoms[int(z)] == pytest.approx(e, abs=1e-3)
    result = evaluate_dataset(pot, data, device="cpu")
    assert set(result["sets"]) == {"test", "nonqm9", "isomers"}
    test = result["sets"]["test"]
    assert test["errors"]["atoms"]["energy_mae_meV"] < 1.0  # E0s: isolated atoms are exact
    assert "build_rewards" in test and "alternatives" in test and "diatomics" in test
    assert "spearman" in result["sets"]["isomers"]["isomers"]

    # resuming the finished stage-one run straight into stage two (mace alone fails here: KeyError 'swa_lr')
    stage_two = train_mace(data, tmp_path / "train", architecture="tiny", epochs=2, batch_size=8, threads=2,
                           stage_two_from=1)
    assert stage_two.name == "model_stagetwo.model" and stage_two.is_file()
    assert list((tmp_path / "train" / "checkpoints").glob("*_swa.pt"))
    assert load_potential(stage_two, device="cpu").species == frozenset(ds.ELEMENTS)


@pytest.mark.slow
def test_time_limited_training_writes_the_model_and_resumes(tmp_path, tiny_dataset):
    """--time-limit stops between epochs (at least one runs) and writes the model from the newest checkpoint;
    category weights reach mace as config_type weights and the ZBL pair repulsion is accepted."""
    import ase.io

    from molgym.potentials import load_potential
    from molgym.training.mace_train import latest_checkpoint_epoch, train_mace

    data, _ = tiny_dataset
    out = tmp_path / "train"
    options = dict(architecture="tiny", batch_size=8, threads=1, pair_repulsion=True,
                   category_weights={"build": 2.0, "equilibrium": 0.5})
    model = train_mace(data, out, epochs=50, time_limit=1e-3, **options)
    run = json.loads((out / "train_settings.json").read_text())["runs"][-1]
    assert run["stopped_by_time_limit"] and run["newest_checkpoint_epoch"] == latest_checkpoint_epoch(out / "checkpoints")
    assert run["newest_checkpoint_epoch"] < 49 and model.is_file()
    assert "--pair_repulsion" in json.loads((out / "train_settings.json").read_text())["mace_arguments"]
    weighted = ase.io.read(out / "train_weighted.xyz", index=":")
    assert {a.info["config_type"] for a in weighted} == {a.info["category"] for a in weighted}
    assert load_potential(model, device="cpu").species == frozenset(ds.ELEMENTS)
    # a rerun continues from that checkpoint
    train_mace(data, out, epochs=run["newest_checkpoint_epoch"] + 2, **options)
    assert latest_checkpoint_epoch(out / "checkpoints") >= run["newest_checkpoint_epoch"]
    with pytest.raises(ValueError, match="no structure of"):
        train_mace(data, tmp_path / "bad", epochs=1, architecture="tiny", category_weights={"nonsense": 2.0})
    with pytest.raises(ValueError, match="time_limit must be > 0"):
        train_mace(data, tmp_path / "bad", epochs=1, time_limit=0)


# --- user models --------------------------------------------------------------------------------------------------
def test_user_model_without_an_element_of_the_task_fails_clearly(tmp_path):
    import torch

    from molgym.potentials import UnsupportedElementError, load_potential
    from molgym.potentials.mace_arch import build_untrained_mace

    model = build_untrained_mace("tiny", atomic_numbers=(1, 6, 8), dtype="float64")
    path = tmp_path / "cho.model"
    torch.save(model, path)
    pot = load_potential(str(path), device="cpu")
    assert pot.species == frozenset({1, 6, 8})
    pot.energies([Atoms("CH4", positions=np.random.default_rng(0).normal(size=(5, 3)))])
    with pytest.raises(UnsupportedElementError, match=r"contains N, which .* covers H, C, O"):
        pot.energies([Atoms("NH3", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])])


def test_cli_dataset_rejects_unknown_size(capsys):
    from molgym.cli import main

    assert main(["potential", "dataset", "--out", "/tmp/never", "--size", "huge"]) == 2
    assert "unknown dataset size 'huge'" in capsys.readouterr().err


def test_repulsive_wall_check_starts_at_the_reference_minimum():
    from molgym.potentials.evaluation import diatomic_monotonicity

    grid = np.linspace(0.5, 1.0, 11)
    structures = []
    for r in grid:
        a = Atoms("H2", positions=[[0, 0, 0], [0, 0, r]])
        a.info.update(category="diatomic", distance=r, pair="H2")
        structures.append(a)
    morse = (1 - np.exp(-2.0 * (grid - 0.75))) ** 2  # minimum at 0.75 Å, inside the window
    assert diatomic_monotonicity(structures, morse)["monotonic_pairs"] == 0
    wall = diatomic_monotonicity(structures, morse, reference_energies=morse)
    assert wall["monotonic_pairs"] == 1 and wall["pairs"]["H2"]["points"] == 6


def test_model_card_from_evaluation(tmp_path, tiny_dataset):
    """The card's file/sha256 are what the registry checks, and its status says 'provisional' with reasons when
    the targets are missed (an untrained model misses them all)."""
    import torch

    from molgym.potentials.card import write_model_card
    from molgym.potentials.mace_arch import build_untrained_mace
    from molgym.potentials.registry import sha256_of

    data, _ = tiny_dataset
    model = tmp_path / "untrained.model"
    torch.save(build_untrained_mace("tiny", dtype="float64"), model)
    paths = write_model_card(model, data, out=tmp_path / "card", name="trial", notes=["a test card"])
    card = json.loads((tmp_path / "card" / "trial.json").read_text())
    assert card["file"] == "trial.model" and card["sha256"] == sha256_of(paths[0])
    assert card["status"] == "provisional" and "QM9 test energy MAE" in card["status_reason"]
    assert card["data"]["license"] == "CC BY 4.0"
    assert set(card["evaluation"]["sets"]) == {"test", "nonqm9", "isomers"}
    text = (tmp_path / "card" / "trial.md").read_text()
    assert "a test card" in text and "**not met**" in text
