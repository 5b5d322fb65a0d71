"""The reward potential's learning-curve study (molgym.training.study): log parsing, fits, data subsets, and one
real (tiny-budget) study run on the tiny dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from molgym.training import study


def test_learning_curve_reads_mace_logs_once_per_epoch(tmp_path):
    log = tmp_path / "model_run-0.log"
    log.write_text(
        "2026-12-02 10:00:00.000 INFO: Initial: head: Default, loss=1.0, MAE_E_per_atom=900.00 meV, MAE_F=800.00 meV / A\n"
        "2026-12-02 10:00:30.500 INFO: Epoch 0: head: Default, loss=0.5, MAE_E_per_atom=90.50 meV, MAE_F=300.00 meV / A\n"
        "2026-12-02 10:01:00.000 INFO: something else\n"
        "2026-12-02 10:01:00.000 INFO: Epoch 1: head: Default, loss=0.4, MAE_E_per_atom=   60.00 meV, MAE_F=  200.00 meV / A\n"
        "2026-12-02 10:01:00.000 INFO: Epoch 1: head: Default, loss=0.4, MAE_E_per_atom=60.00 meV, MAE_F=200.00 meV / A\n"
    )
    curve = study.learning_curve(log)
    assert [p["epoch"] for p in curve] == [0, 1]
    assert curve[0]["seconds"] == pytest.approx(30.5) and curve[1]["seconds"] == pytest.approx(60.0)
    assert curve[1]["energy_mae_per_atom_meV"] == 60.0 and curve[1]["force_mae_meV_per_A"] == 200.0


def test_power_law_fit_recovers_exponent_and_predicts():
    t = np.linspace(10, 600, 30)
    fit = study.fit_power_law(t, 50.0 * t ** -0.4)
    assert fit["b"] == pytest.approx(0.4, rel=1e-6) and fit["a"] == pytest.approx(50.0, rel=1e-6)
    assert study.predict(fit, 3600.0) == pytest.approx(50.0 * 3600 ** -0.4, rel=1e-6)
    assert study.fit_power_law([1.0, 2.0], [3.0, 2.0]) is None  # too few points
    assert study.fit_power_law([10.0, 20.0, 400.0], [9.0, 7.0, 3.0])["points"] == 3  # every point when the tail has 1
    assert study.predict(None, 10.0) is None


def test_variants_are_named_and_bad_names_fail():
    assert [v.name for v in study.parse_variants("base,zbl")] == ["base", "zbl"]
    assert len(study.parse_variants(None)) == len(study.VARIANTS)
    with pytest.raises(ValueError, match="unknown study variant 'huge'; allowed: base"):
        study.parse_variants("base,huge")
    base = study.VARIANTS_BY_NAME["base"]
    from molgym.potentials.mace_arch import ARCHITECTURES

    assert base.architecture() == ARCHITECTURES["cpu"]  # the shipped configuration
    assert study.VARIANTS_BY_NAME["L1"].architecture().hidden_irreps == "32x0e + 32x1o"


def test_subset_keeps_whole_molecules_and_special_structures(tmp_path, tiny_dataset):
    import ase.io

    data, manifest = tiny_dataset
    sub = study.subset_dataset(data, tmp_path / "sub", molecules=3, seed=1)
    train = ase.io.read(sub / "train.xyz", index=":")
    ids = {a.info["molecule_id"] for a in train if study._is_qm9_molecule(a)}
    assert len(ids) == 3
    full = ase.io.read(data / "train.xyz", index=":")
    assert sum(1 for a in full if a.info["molecule_id"] in ids or not study._is_qm9_molecule(a)) == len(train)
    assert (sub / "valid.xyz").read_bytes() == (data / "valid.xyz").read_bytes()
    assert json.loads((sub / "manifest.json").read_text())["subset_of"]["train_molecules"] == 3
    with pytest.raises(ValueError, match=r"train_molecules must be in \[1, 6\]"):
        study.subset_dataset(data, tmp_path / "bad", molecules=50)


def test_bad_study_settings_fail_before_training(tmp_path, tiny_dataset):
    data, _ = tiny_dataset
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        study.run_study(tmp_path, tmp_path / "out", [study.VARIANTS[0]], budget=5)
    for kwargs, message in (({"budget": 0}, "budget"), ({"budget": 5, "parallel": 0}, "parallel"),
                            ({"budget": 5, "cpu_hours": -1}, "cpu_hours")):
        with pytest.raises(ValueError, match=message):
            study.run_study(data, tmp_path / "out", [study.VARIANTS[0]], **kwargs)


@pytest.mark.slow
def test_study_runs_evaluates_summarises_and_resumes(tmp_path, tiny_dataset):
    """Two real variants (a data subset and ZBL) trained for a few seconds each in child processes, evaluated
    per category, summarised with a plot; a rerun skips them."""
    data, _ = tiny_dataset
    variants = [study.VARIANTS_BY_NAME["zbl"],
                study.replace(study.VARIANTS_BY_NAME["build_weighted"], name="weighted3", train_molecules=3)]
    messages = []
    summary = study.run_study(data, tmp_path / "study", variants, budget=1.0, parallel=2, progress=messages.append)
    assert summary["failed"] == []
    assert [r["variant"] for r in summary["rows"]] == ["zbl", "weighted3"]
    for row in summary["rows"]:
        assert row["epochs"] >= 1 and row["structures_per_second"] > 0 and row["parameters"] > 0
        for cat in study.CATEGORIES:
            assert math.isfinite(row[f"test_{cat}_E_meV"])
        assert row["build_reward_mae_meV"] > 0 and row["train_sample_E_meV_per_atom"] > 0
    assert summary["rows"][1]["train_structures"] < summary["rows"][0]["train_structures"]
    assert (tmp_path / "study" / "learning_curves.png").stat().st_size > 1000
    assert "| zbl | ZBL pair repulsion |" in (tmp_path / "study" / "summary.md").read_text()
    messages.clear()
    study.run_study(data, tmp_path / "study", variants[:1], budget=1.0, progress=messages.append)
    assert messages[0].startswith("study: 1 of 1 variants finished; running none")


def test_shipped_training_curve_and_scores():
    long_run = study.shipped_training_curve()
    assert long_run["epochs"] == 45 and long_run["curve"][0]["epoch"] == 0  # the shipped card's 45 epochs
    assert long_run["curve"][-1]["seconds"] == pytest.approx(45 * long_run["seconds_per_epoch"])
    rows = [{"variant": "base", "predicted_valid_E_meV_per_atom": 20.0, "predicted_valid_F_meV_per_A": 100.0},
            {"variant": "energy", "predicted_valid_E_meV_per_atom": 10.0, "predicted_valid_F_meV_per_A": 300.0},
            {"variant": "short", "predicted_valid_E_meV_per_atom": None, "predicted_valid_F_meV_per_A": None}]
    study._score(rows)
    assert [r["score"] for r in rows] == [1.0, pytest.approx(1.75), None]  # (0.5 + 3) / 2: forces count too
