"""Energy-based diffusion sampler: model symmetries, preconditioning, sampler, training/resume, generator, CLI,
and the shipped QM9 checkpoint. Tiny models built here keep the whole file fast on a CPU."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from molgym.agents.diffusion.checkpoint import load_checkpoint, save_checkpoint
from molgym.agents.diffusion.data import MoleculeSet, encode_elements, qm9_split, size_distribution
from molgym.agents.diffusion.model import (
    ELEMENT_SCALE,
    ELEMENTS,
    EnergyDenoiser,
    ModelConfig,
    Preconditioning,
    center,
    fully_connected_edges,
)
from molgym.agents.diffusion.sampler import SamplerSettings, heun_sample, noise_levels

TINY = ModelConfig(channels=8, radial_mlp=(8,), num_bessel=4)


@pytest.fixture(scope="module", autouse=True)
def _fast_small_torch():
    """One thread and no TorchScript optimisation passes for these tiny models. TorchScript's optimising executor
    (e3nn's compiled modules) pays off only over many evaluations of one shape, and these tests run a few
    evaluations of many shapes; a second thread on a busy 2-core machine made tiny evaluations ~100x slower."""
    previous = torch._C._get_graph_executor_optimize(), torch.get_num_threads()
    torch._C._set_graph_executor_optimize(False)
    torch.set_num_threads(1)
    yield
    torch._C._set_graph_executor_optimize(previous[0])
    torch.set_num_threads(previous[1])


@pytest.fixture(scope="module")
def tiny_model() -> EnergyDenoiser:
    torch.manual_seed(0)
    return EnergyDenoiser(TINY).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("diffusion") / "tiny.pt"
    sizes = np.zeros(8)
    sizes[[4, 6, 7]] = [0.25, 0.5, 0.25]
    save_checkpoint(path, {"config": TINY.as_dict(), "model": tiny_model.state_dict(),
                           "ema": tiny_model.state_dict(), "size_distribution": sizes.tolist(), "step": 0,
                           "epoch": 0.0, "seconds": 0.0})
    return path


def _molecule_batch(sizes=(4, 6), seed=0):
    gen = torch.Generator().manual_seed(seed)
    edge_index, batch = fully_connected_edges(torch.tensor(sizes))
    x = center(torch.randn(sum(sizes), 3, generator=gen), batch, len(sizes))
    h = torch.randn(sum(sizes), len(ELEMENTS), generator=gen) * 0.3
    return x, h, edge_index, batch


def test_fully_connected_edges_have_every_ordered_pair_once():
    edge_index, batch = fully_connected_edges(torch.tensor([3, 2]))
    pairs = set(map(tuple, edge_index.T.tolist()))
    expected = {(i, j) for i in range(3) for j in range(3) if i != j} | {(3, 4), (4, 3)}
    assert pairs == expected and edge_index.shape[1] == len(expected)
    assert batch.tolist() == [0, 0, 0, 1, 1]


def test_energy_is_invariant_and_denoiser_equivariant(tiny_model):
    from e3nn import o3

    x, h, edge_index, batch = _molecule_batch()
    sigma = torch.tensor([0.3, 1.5])
    d_x, d_h, energy = tiny_model(x, h, sigma, edge_index, batch)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        rot = o3.rand_matrix()
    assert torch.det(rot) == pytest.approx(1.0, abs=1e-5)
    d_x_rot, d_h_rot, energy_rot = tiny_model(x @ rot.T, h, sigma, edge_index, batch)
    assert torch.allclose(energy, energy_rot, atol=1e-4)
    assert torch.allclose(d_x @ rot.T, d_x_rot, atol=1e-4)  # the score rotates with the molecule
    assert torch.allclose(d_h, d_h_rot, atol=1e-4)  # element denoising is invariant
    # translation: the energy only sees relative positions
    _, _, energy_shift = tiny_model(x + torch.tensor([1.0, -2.0, 0.5]), h, sigma, edge_index, batch)
    assert torch.allclose(energy, energy_shift, atol=1e-4)
    # permuting the atoms of a molecule permutes the output
    perm = torch.tensor([2, 0, 3, 1, 4, 5, 6, 7, 8, 9])
    d_x_perm, _, energy_perm = tiny_model(x[perm], h[perm], sigma, edge_index, batch)
    assert torch.allclose(energy, energy_perm, atol=1e-4)
    assert torch.allclose(d_x[perm], d_x_perm, atol=1e-4)


def test_denoiser_force_is_minus_energy_gradient(tiny_model):
    x, h, edge_index, batch = _molecule_batch(sizes=(5,))
    sigma = torch.tensor([0.7])
    pre = tiny_model.pre_x
    d_x, _, _ = tiny_model(x, h, sigma, edge_index, batch)
    x_in = (pre.c_in(0.7) * x).requires_grad_(True)
    h_in = tiny_model.pre_h.c_in(0.7) * h
    energy = tiny_model.energy(x_in, h_in, torch.full((5,), math.log(0.7) / 4), edge_index, batch, 1)
    (grad,) = torch.autograd.grad(energy.sum(), x_in)
    assert torch.allclose(d_x, pre.c_skip(0.7) * x - pre.c_out(0.7) * grad, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.002, 0.1, 1.3, 10.0])
def test_preconditioning_identities(sigma):
    pre = Preconditioning(1.3)
    sd = 1.3
    assert math.isclose(pre.c_in(sigma) ** 2 * (sigma ** 2 + sd ** 2), 1.0)
    assert math.isclose(pre.loss_weight(sigma) * pre.c_out(sigma) ** 2, 1.0)
    # the network target (y - c_skip (y + n)) / c_out has unit variance for y ~ N(0, sd^2), n ~ N(0, sigma^2)
    variance = ((1 - pre.c_skip(sigma)) ** 2 * sd ** 2 + pre.c_skip(sigma) ** 2 * sigma ** 2) / pre.c_out(sigma) ** 2
    assert math.isclose(variance, 1.0, rel_tol=1e-9)
    assert math.isclose(Preconditioning.c_noise(sigma), math.log(sigma) / 4)


def test_preconditioning_limits_and_bad_sigma_data():
    pre = Preconditioning(0.5)
    assert pre.c_skip(1e-6) == pytest.approx(1.0) and pre.c_out(1e-6) == pytest.approx(0.0, abs=1e-5)
    assert pre.c_skip(1e3) == pytest.approx(0.0, abs=1e-6) and pre.c_out(1e3) == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(ValueError, match="sigma_data"):
        Preconditioning(0.0)


def test_noise_levels_schedule():
    settings = SamplerSettings(steps=6, sigma_min=0.01, sigma_max=5.0)
    sigmas = noise_levels(settings).tolist()
    assert len(sigmas) == 7 and sigmas[-1] == 0.0
    assert sigmas[0] == pytest.approx(5.0) and sigmas[-2] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    with pytest.raises(ValueError, match="sigma_min"):
        SamplerSettings(sigma_min=2.0, sigma_max=1.0).check()


@pytest.mark.parametrize("churn", [0.0, 5.0])
def test_sampler_is_seeded_and_shapes_are_right(tiny_model, churn):
    settings = SamplerSettings(steps=3, s_churn=churn)
    runs = [heun_sample(tiny_model, [4, 6, 3], torch.Generator().manual_seed(s), settings) for s in (7, 7, 8)]
    (x, z, b), (x2, z2, b2), (x3, _, _) = runs
    assert x.shape == (13, 3) and z.shape == (13,) and b.tolist() == [0] * 4 + [1] * 6 + [2] * 3
    assert torch.allclose(x, x2, atol=1e-4) and torch.equal(z, z2)
    assert not torch.allclose(x, x3, atol=1e-2)
    assert set(z.tolist()) <= set(ELEMENTS)
    assert torch.allclose(center(x, b, 3), x, atol=1e-4)  # zero centre of mass per molecule
    assert torch.isfinite(x).all()


def test_sampler_with_fixed_elements_keeps_them(tiny_model):
    numbers = [6, 6, 8, 1, 1, 1, 1, 1, 1]
    fixed = encode_elements(numbers)
    _, z, _ = heun_sample(tiny_model, [9], torch.Generator().manual_seed(0), SamplerSettings(steps=3),
                          fixed_h=fixed)
    assert z.tolist() == numbers
    with pytest.raises(ValueError, match="fixed_h"):
        heun_sample(tiny_model, [4], torch.Generator().manual_seed(0), SamplerSettings(steps=3), fixed_h=fixed)


def test_encode_elements_and_errors():
    h = encode_elements([1, 9, 6])
    assert h.shape == (3, 5) and torch.equal(h.argmax(1), torch.tensor([0, 4, 1]))
    assert float(h.max()) == ELEMENT_SCALE
    with pytest.raises(ValueError, match="16"):
        encode_elements([6, 16])


def test_qm9_split_sizes_match_edm():
    split = qm9_split(130_831)
    assert [len(split[k]) for k in ("train", "valid", "test")] == [100_000, 17_748, 13_083]
    assert not set(split["train"]) & set(split["test"])
    assert size_distribution(np.array([2, 3, 3])).tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3])


def test_training_runs_and_resume_matches_uninterrupted_run(tmp_path):
    from molgym.agents.diffusion.training import TrainSettings, train

    train_data = MoleculeSet.from_split("train")
    valid = MoleculeSet(train_data.qm9, MoleculeSet.from_split("valid").rows[:8])

    def settings(steps):
        return TrainSettings(batch_size=4, max_steps=steps, log_every=1, valid_every=2, checkpoint_every=1,
                             valid_molecules=8, train_subset=16, warmup_steps=1, snapshot_every=2)

    train(tmp_path / "a", settings(2), TINY, progress=False, valid_data=valid, train_data=train_data)
    snapshots = sorted(p.name for p in (tmp_path / "a" / "snapshots").iterdir())
    assert snapshots == ["model-0000002.pt"]  # settings(): a snapshot every 2 steps
    assert load_checkpoint(tmp_path / "a" / "snapshots" / snapshots[0])["step"] == 2
    first = train(tmp_path / "b", settings(1), TINY, progress=False, valid_data=valid, train_data=train_data)
    assert first["step"] == 1 and (tmp_path / "b" / "model.pt").is_file()
    with pytest.raises(ValueError, match="--resume"):
        train(tmp_path / "b", settings(2), TINY, progress=False, valid_data=valid, train_data=train_data)
    resumed = train(tmp_path / "b", settings(2), TINY, resume=True, progress=False, valid_data=valid,
                    train_data=train_data)
    assert resumed["step"] == 2
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5), key
    curve = (tmp_path / "b" / "learning_curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,epoch") and len(curve) == 3
    assert curve[2].split(",")[6] != ""  # step 2 has a validation loss
    assert math.isfinite(float(curve[-1].split(",")[3]))


def test_training_settings_are_checked_before_work(tmp_path):
    from molgym.agents.diffusion.training import TrainSettings, train

    with pytest.raises(ValueError, match="batch size"):
        train(tmp_path, TrainSettings(batch_size=0, max_steps=1), TINY)
    with pytest.raises(ValueError, match="never stops"):
        train(tmp_path, TrainSettings(), TINY)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tmp_path, TrainSettings(max_steps=1), TINY, resume=True)
    with pytest.raises(ValueError, match="snapshot"):
        train(tmp_path, TrainSettings(max_steps=1, snapshot_every=0), TINY)


def test_generator_returns_seeded_molecules(tiny_checkpoint):
    from ase import Atoms

    from molgym.benchmark import get_generator, get_task

    gen = get_generator("diffusion", model=str(tiny_checkpoint), steps=3, batch_size=3)
    molecules = gen.generate(None, 5, seed=1)
    assert len(molecules) == 5 and all(isinstance(m, Atoms) for m in molecules)
    assert all(len(m) in (4, 6, 7) for m in molecules)  # sizes drawn from the checkpoint's distribution
    assert all(set(m.numbers.tolist()) <= {1, 6, 7, 8, 9} for m in molecules)
    again = gen.generate(None, 5, seed=1)
    assert all(np.allclose(a.positions, b.positions, atol=1e-4) for a, b in zip(molecules, again))
    formula = gen.generate(get_task("C3H8O"), 2, seed=0)
    assert [m.get_chemical_formula() for m in formula] == ["C3H8O", "C3H8O"]
    unconditional = gen.generate(get_task("qm9-unconditional"), 3, seed=0)
    sizes = [sum(b.values()) for b in get_task("qm9-unconditional").bags(3, 0)]
    assert [len(m) for m in unconditional] == sizes
    assert gen.metadata()["settings"]["steps"] == 3


def test_generator_rejects_bad_input(tiny_checkpoint):
    from molgym.agents.diffusion import DiffusionSampler
    from molgym.benchmark import get_task

    with pytest.raises(FileNotFoundError, match="nope"):
        DiffusionSampler(model="/nope/model.pt")
    with pytest.raises(ValueError, match="n_atoms"):
        DiffusionSampler(model=str(tiny_checkpoint), n_atoms=0)
    with pytest.raises(ValueError, match="steps"):
        DiffusionSampler(model=str(tiny_checkpoint), steps=0)
    gen = DiffusionSampler(model=str(tiny_checkpoint), steps=2)
    with pytest.raises(ValueError, match="CH4S"):
        gen.generate(get_task("CH4S"), 1, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        gen.generate(None, -1, seed=0)


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a molgym diffusion checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_score_analysis_rows(tiny_model):
    from molgym.agents.diffusion.analysis import format_table, score_analysis
    from molgym.data.qm9 import load_qm9

    qm9 = load_qm9()
    rows = score_analysis(tiny_model, [qm9.atoms(i) for i in (10, 20, 30)], sigmas=(10.0, 0.05))
    assert [r["sigma"] for r in rows] == [10.0, 0.05]
    # at high noise the preconditioned score is the Gaussian restoring force whatever the network says
    assert rows[0]["cos_restoring"] > 0.95
    assert rows[0]["cos_potential_forces"] is None
    assert all(-1 <= r["cos_denoising_direction"] <= 1 for r in rows)
    assert format_table(rows).count("\n") == 3
    with pytest.raises(ValueError, match="positive"):
        score_analysis(tiny_model, [qm9.atoms(1)], sigmas=(0.0,))


def test_cli_rejects_bad_input(tmp_path, capsys):
    from molgym.cli import main

    assert main(["diffusion", "train", "--out", str(tmp_path)]) == 2
    assert "--max-steps" in capsys.readouterr().err
    assert main(["diffusion", "train", "--out", str(tmp_path), "--max-steps", "1", "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert main(["diffusion", "train", "--out", str(tmp_path), "--max-steps", "1"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["diffusion", "train", "--out", str(tmp_path / "new"), "--max-steps", "1", "--device",
                 "cuda:7"]) == 2
    assert "cuda" in capsys.readouterr().err
    assert main(["diffusion", "analyse", "--out", str(tmp_path), "--model", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["diffusion", "train", "--out", str(tmp_path), "--time-limit", "soon"])
    assert "duration" in capsys.readouterr().err


def test_cli_generate_diffusion_writes_molecules(tmp_path, tiny_checkpoint):
    from molgym.cli import main

    out = tmp_path / "gen.xyz"
    assert main(["generate", "diffusion", "-n", "2", "--steps", "2", "--model", str(tiny_checkpoint),
                 "--out", str(out), "--no-progress"]) == 0
    import ase.io

    assert len(ase.io.read(out, index=":")) == 2
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n"] == 2 and summary["generator"]["name"] == "diffusion"


def test_shipped_checkpoints_load_and_sample():
    from molgym.agents.diffusion import DiffusionSampler
    from molgym.agents.diffusion.checkpoint import SHIPPED_MODELS

    sizes = {"default": 10, "explicit-h": 30}  # QM9: up to 9 heavy atoms, up to 29 atoms with hydrogens
    for name, path in SHIPPED_MODELS.items():
        state = load_checkpoint(name)
        assert state["step"] > 0 and len(state["size_distribution"]) == sizes[name]
        assert state["config"].get("hydrogens", True) == (name == "explicit-h")
        card = json.loads(path.with_suffix(".json").read_text())
        for key in ("training", "split", "metrics", "learning_curve", "sha256"):
            assert key in card, (name, key)
        molecules = DiffusionSampler(model=name, steps=4).generate(None, 3, seed=0)
        if name == "explicit-h":
            assert len(molecules) == 3 and all(1 <= len(m) <= 29 for m in molecules)
        else:  # up to 9 heavy atoms, completed by valence rules (4 steps leave loose skeletons: many hydrogens)
            assert len(molecules) == 3 and all(1 <= (m.numbers > 1).sum() <= 9 for m in molecules)
            assert all("skeleton_valid" in m.info for m in molecules)
        assert all(set(m.numbers.tolist()) <= {1, 6, 7, 8, 9} for m in molecules)
    with pytest.raises(ValueError, match="unknown shipped diffusion model 'nope'"):
        from molgym.agents.diffusion.checkpoint import shipped_model_path

        shipped_model_path("nope")


HEAVY = ModelConfig(channels=8, radial_mlp=(8,), num_bessel=4, hydrogens=False, avg_num_neighbors=8.0)


def _heavy_checkpoint(tmp_path):
    """An untrained heavy-atom model (seeded) saved as a checkpoint drawing 3 or 4 heavy atoms per molecule."""
    torch.manual_seed(0)
    model = EnergyDenoiser(HEAVY).eval()
    sizes = np.zeros(10)
    sizes[[3, 4]] = 0.5
    path = tmp_path / "heavy.pt"
    save_checkpoint(path, {"config": HEAVY.as_dict(), "model": model.state_dict(), "ema": model.state_dict(),
                           "size_distribution": sizes.tolist(), "step": 0, "epoch": 0.0, "seconds": 0.0})
    return model, path


def test_heavy_atom_data_drop_hydrogens_and_training_checks_the_match(tmp_path):
    from molgym.agents.diffusion.training import TrainSettings, train

    full = MoleculeSet.from_split("valid").subset(5)
    heavy = MoleculeSet(full.qm9, full.rows, hydrogens=False)
    batch = heavy.batch(np.arange(5))
    q = full.qm9
    expected = [int((q.numbers[q.offsets[r]:q.offsets[r + 1]] > 1).sum()) for r in full.rows]
    assert batch.sizes.tolist() == expected == heavy.sizes.tolist()
    assert float(batch.h[:, ELEMENTS.index(1)].abs().sum()) == 0.0  # no hydrogen left
    assert (heavy.sizes <= 9).all() and (full.sizes > heavy.sizes).all()
    with pytest.raises(ValueError, match="hydrogens"):
        train(tmp_path, TrainSettings(max_steps=1), HEAVY, progress=False, train_data=full, valid_data=full)


def test_heavy_atom_model_samples_skeletons_and_completes_them_by_valence(tmp_path):
    from molgym.agents.diffusion import DiffusionSampler
    from molgym.benchmark import get_task
    from molgym.chem import parse_formula

    model, path = _heavy_checkpoint(tmp_path)
    x, z, batch = heun_sample(model, [5, 4], torch.Generator().manual_seed(0), SamplerSettings(steps=3),
                              heavy_only=True)
    assert (z > 1).all()  # the empty H channel is never decoded
    gen = DiffusionSampler(model=str(path), steps=3, threads=1)
    molecules = gen.generate(None, 4, seed=0)
    for m in molecules:
        heavy = int((m.numbers > 1).sum())
        assert heavy in (3, 4) and m.info["hydrogens"] == "valence rules"
        if m.info["skeleton_valid"]:  # rules found bond orders: hydrogens were added
            assert (m.numbers == 1).sum() > 0 or heavy == 0
        else:
            assert (m.numbers == 1).sum() == 0
    # a formula fixes the heavy elements; the skeleton gets the formula's hydrogens where the valences allow it
    for m in gen.generate(get_task("C2H6O"), 3, seed=1):
        assert sorted(m.numbers[m.numbers > 1].tolist()) == [6, 6, 8]
        if m.info["skeleton_valid"] and (m.numbers == 1).sum() == 6:
            assert parse_formula(m.get_chemical_formula(mode="hill")) == parse_formula("C2H6O")
    with pytest.raises(ValueError, match="relax_steps"):
        DiffusionSampler(model=str(path), relax_steps=-1)


def test_evaluate_scores_raw_and_relaxed_samples_side_by_side(tmp_path, tiny_mace_file, capsys):
    """`molgym diffusion evaluate --relax-steps N` scores the same samples before and after the last stage."""
    import json

    from molgym.cli import main

    _model, path = _heavy_checkpoint(tmp_path)
    out = tmp_path / "eval"
    assert main(["diffusion", "evaluate", "--model", str(path), "-n", "3", "--steps", "2", "--relax-steps", "2",
                 "--potential", str(tiny_mace_file), "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["metrics"]["molecules"] == result["relaxed"]["metrics"]["molecules"] == 3
    assert result["relaxed"]["relax_steps"] == 2 and (out / "molecules-relaxed.xyz").is_file()
    assert "-- raw samples" in capsys.readouterr().out
    for bad, message in [(["--relax-steps", "-1"], "--relax-steps must be 0"),
                         (["--relax-steps", "2", "--molecules-from", str(out / "molecules.xyz")], "scores a file")]:
        assert main(["diffusion", "evaluate", "--model", str(path), "--out", str(tmp_path / "x"), *bad]) == 2
        assert message in capsys.readouterr().err


def test_diffusion_relaxed_is_the_sampler_with_its_last_stage_on(tmp_path, tiny_mace):
    from molgym.generator import get_generator

    _model, path = _heavy_checkpoint(tmp_path)
    raw = get_generator("diffusion", model=str(path), steps=2, threads=1).generate(None, 2, seed=0)
    gen = get_generator("diffusion_relaxed", model=str(path), steps=2, threads=1, potential=tiny_mace, relax_steps=3)
    relaxed = gen.generate(None, 2, seed=0)
    assert get_generator("diffusion_relaxed", model=str(path)).relax_steps == 100  # on by default
    assert gen.metadata()["name"] == "diffusion_relaxed" and gen.potential_calls > 0
    for a, b in zip(raw, relaxed):  # the same samples, then relaxed
        assert a.get_chemical_formula() == b.get_chemical_formula()
        assert b.info.get("relaxed") or len(b) == 1


def test_hydrogenate_rebuilds_a_qm9_molecule_from_its_heavy_atoms():
    from molgym.agents.simgen.hydrogens import hydrogenate
    from molgym.data.qm9 import load_qm9
    from molgym.metrics.chemistry import perceive

    qm9 = load_qm9()
    row = int(np.nonzero(qm9.smiles == "CC(=O)C")[0][0]) if (qm9.smiles == "CC(=O)C").any() else 30
    mol = qm9.atoms(row)
    skeleton = mol[mol.numbers > 1]
    whole = hydrogenate(skeleton, n_hydrogens=int((mol.numbers == 1).sum()))
    assert whole is not None and perceive(whole).smiles == perceive(mol).smiles
    from ase import Atoms

    methane = hydrogenate(Atoms("C"))  # a lone carbon gets four hydrogens
    assert methane is not None and perceive(methane).smiles == "C"
    directions = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], dtype=float)
    five = Atoms("C6", positions=np.vstack([[0, 0, 0], 1.5 * directions]))  # a carbon with five C neighbours
    assert hydrogenate(five) is None
