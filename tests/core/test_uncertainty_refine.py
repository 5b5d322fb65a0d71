"""The HAL refinement loop end to end on a tiny dataset and a tiny model: one round, resume, bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from ase import Atoms

from molgym.training.refine import RefineConfig, read_log, refine, select_uncertain


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny GFN2-xTB dataset and a tiny MACE model trained on it for one epoch (mace-torch's trainer)."""
    from molgym.data.dataset import build_dataset
    from molgym.training.mace_train import train_mace

    root = tmp_path_factory.mktemp("refine")
    data = root / "data"
    build_dataset(data, "tiny", workers=1, progress=False)
    train_mace(data, root / "train", architecture="tiny", epochs=1, batch_size=8, threads=1)
    return data, root / "train"


def _config(data, train_dir, **kw) -> RefineConfig:
    base = RefineConfig(data=str(data), train_dir=str(train_dir), rounds=1, formulas=("CH4O",),
                        relaxations_per_formula=1, relax_steps=6, relax_interval=2,
                        generators=("random_search",), samples_per_formula=1, md_starts=2, md_steps=4,
                        md_interval=2, select=4, epochs=1, members=3, threads=1,
                        generator_options={"random_search": {"steps": 3}})
    return replace(base, **kw)


@pytest.mark.slow
def test_one_round_end_to_end_then_resume_without_redoing(tiny_run, tmp_path, monkeypatch):
    data, train_dir = tiny_run
    out = tmp_path / "refine"
    records = refine(_config(data, train_dir, xtb_relax_frames=2), out, progress=False)
    assert len(records) == 1
    r = records[0]
    assert r["round"] == 1 and r["candidates"] > 0
    assert r["sampling"]["generators"] == ["random_search"] and r["sampling"]["formulas"] == ["CH4O"]
    assert 1 <= r["labelled"] <= 4 and r["labelled"] + r["scf_failures"] == r["selected"]
    import ase.io

    sources = {a.info["source"].split(":")[0] for a in ase.io.read(out / "round-01" / "candidates.xyz", index=":")}
    assert sources == {"random_search", "relax", "hal_md"}
    assert r["fresh_sigma_before"]["mean"] > 0 and np.isfinite(r["fresh_sigma_after"]["mean"])
    assert r["new_structure_errors_before_refit"]["n"] == r["labelled"] + r["xtb_relax_frames"]
    assert np.isfinite(r["test_after"]["energy_mae_meV"])
    rdir = out / "round-01"
    for name in ("candidates.xyz", "labelled.xyz", "committee.npz", "round.json", "train/model.model"):
        assert (rdir / name).is_file(), name
    import ase.io

    labelled = ase.io.read(rdir / "labelled.xyz", index=":")
    assert len(labelled) == r["labelled"] + r["xtb_relax_frames"]
    assert r["xtb_relax_frames"] == sum(a.info["source"].endswith(":xtb-relax") for a in labelled)
    assert all("REF_energy" in a.info and a.arrays["REF_forces"].shape == (len(a), 3) for a in labelled)
    assert read_log(out) == records

    # a rerun finds the round finished: no sampling, labelling or training happens again
    import molgym.training.refine as refine_module

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished round was redone")

    monkeypatch.setattr(refine_module, "label_with_xtb", forbidden)
    monkeypatch.setattr(refine_module, "_biased_md", forbidden)
    monkeypatch.setattr(refine_module, "_generator_samples", forbidden)
    monkeypatch.setattr(refine_module, "_relaxation_paths", forbidden)
    again = refine(_config(data, train_dir, xtb_relax_frames=2), out, progress=False)
    assert again == records
    assert json.loads((rdir / "round.json").read_text()) == records[0]


def test_select_skips_clashes_and_duplicates():
    a = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.2]])
    dup = Atoms("CO", positions=[[1, 1, 1], [1, 1, 2.2]])  # same geometry, translated
    clash = Atoms("CO", positions=[[0, 0, 0], [0, 0, 0.3]])
    other = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.6]])
    chosen = select_uncertain([a, dup, clash, other], np.array([3.0, 2.9, 5.0, 1.0]), n=3, min_distance=0.6)
    assert chosen == [0, 3]


def test_bad_inputs_fail_before_any_work(tmp_path, tiny_run):
    data, train_dir = tiny_run
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        _config(tmp_path, train_dir).validate()
    with pytest.raises(FileNotFoundError, match="no mace checkpoint"):
        _config(data, tmp_path).validate()
    with pytest.raises(FileNotFoundError, match="committee file"):
        _config(data, train_dir, committee=str(tmp_path / "none.npz")).validate()
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        _config(data, train_dir, rounds=0).validate()
    with pytest.raises(ValueError, match="members must be an integer >= 2"):
        _config(data, train_dir, members=1).validate()
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        _config(data, train_dir, tau=-1.0).validate()
    with pytest.raises(ValueError, match="tolerance must be in"):
        _config(data, train_dir, tolerance=1.5).validate()
    with pytest.raises(ValueError):
        _config(data, train_dir, formulas=("C2Xx",)).validate()
    with pytest.raises(ValueError, match="nothing to sample"):
        _config(data, train_dir, md_starts=0, samples_per_formula=0, relaxations_per_formula=0).validate()


def test_cli_rejects_bad_inputs_with_a_message(tiny_run, tmp_path, capsys):
    from molgym.cli import main

    data, train_dir = tiny_run
    args = ["potential", "refine", "--data", str(data), "--train-dir", str(train_dir), "--out", str(tmp_path / "o")]
    assert main(args + ["--generator-options", "{not json"]) == 2
    assert "--generator-options is not valid JSON" in capsys.readouterr().err
    assert main(args + ["--select", "0"]) == 2
    assert "select must be an integer >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing was started


def test_xtb_relaxation_frames_follow_generator_molecules_down_to_their_minimum():
    from ase.build import molecule

    from molgym.potentials import load_potential
    from molgym.training.refine import xtb_relaxation_frames

    strained = molecule("CH3OH")
    strained.positions *= 1.08  # every bond 8% too long
    strained.info["source"] = "rl_policy:CH4O"
    prefix = strained[:3].copy()
    prefix.info["source"] = "rl_policy:CH4O:prefix"
    md = strained.copy()
    md.info["source"] = "hal_md:3"
    frames = xtb_relaxation_frames([strained, prefix, md], frames=3, steps=40, generators=("rl_policy",))
    assert len(frames) == 3  # only the generator's final molecule is relaxed
    assert all(f.info["source"] == "rl_policy:CH4O:xtb-relax" for f in frames)
    steps = [f.info["xtb_relax_step"] for f in frames]
    assert steps == sorted(steps) and steps[0] >= 1
    energies, forces = load_potential("xtb").energies_and_forces([strained] + frames)
    assert np.all(np.diff(energies) < 0) and energies[0] - energies[-1] > 0.3  # strain released, step by step
    for frame, e, f in zip(frames, energies[1:], forces[1:], strict=True):  # labelled as the relaxation saw them
        assert frame.info["REF_energy"] == pytest.approx(e, abs=1e-6) and frame.info["category"] == "hal"
        assert np.allclose(frame.arrays["REF_forces"], f, atol=1e-6)
