"""``molgym train-report``: seeds grouped by setting, medians over seeds, curves, unfinished runs named."""

from __future__ import annotations

import json

import pytest

from agent_helpers import train_args

from molgym.agents.common.run_report import find_runs, group_runs, learning_table
from molgym.cli import main


def _fake_run(folder, seed, fraction, validity, evals, lr=3e-4, formula="CH4O", **settings):
    """A run folder as `molgym train` writes it (only the files the report reads), with chosen figures."""
    folder.mkdir(parents=True)
    config = {"out": str(folder), "agent": "internal", "env_id": "MolGym/SingleBag-v0", "formula": formula,
              "potential": "default", "env_kwargs": {}, "steps": 12000, "seed": seed, "learning_rate": lr,
              "eval_every": 2000, "device": "cpu", "threads": 1, **settings}
    (folder / "config.json").write_text(json.dumps(config))
    final = {"episodes": 4, "mean_return": 10 * fraction, "validity": validity, "mean_fraction_of_optimum": fraction}
    summary = {"final_greedy": final, "final_sampled": dict(final, validity=validity / 2), "held_out": None,
               "s_per_10k_steps": 40.0 + seed, "env_steps_per_s": 250.0 - seed}
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = ["step,mean_return,best_return,validity,mean_fraction_of_optimum,completed"]
    rows += [f"{2000 * (k + 1)},{10 * f},{10 * f},1.0,{f},1.0" for k, f in enumerate(evals)]
    (folder / "eval.csv").write_text("\n".join(rows) + "\n")


def test_table_takes_medians_over_seeds_and_separates_settings(tmp_path):
    _fake_run(tmp_path / "a0", 0, 0.5, 0.0, [0.2, 0.5])
    _fake_run(tmp_path / "a1", 1, 0.9, 1.0, [0.4, 0.95])
    _fake_run(tmp_path / "a2", 2, 0.7, 1.0, [0.91, 0.7], lr_schedule="constant")  # what a config without it meant
    _fake_run(tmp_path / "b0", 0, 0.3, 0.0, [0.3], lr=1e-3)  # another learning rate: its own group
    _fake_run(tmp_path / "d0", 0, 0.6, 1.0, [0.6], lr_schedule="linear")  # another schedule: its own group
    (tmp_path / "c0").mkdir()
    (tmp_path / "c0" / "config.json").write_text("{}")  # started, not finished
    runs, unfinished = find_runs([tmp_path])
    assert unfinished == [tmp_path / "c0"] and len(runs) == 5
    groups = group_runs(runs)
    assert {k: len(v) for k, v in groups.items()} == {("CH4O", 12000, "internal [1]"): 3,
                                                       ("CH4O", 12000, "internal [2]"): 1,
                                                       ("CH4O", 12000, "internal [3]"): 1}
    table = learning_table(groups).splitlines()
    assert table[2] == ("| CH4O | 12,000 | internal [1] | default | 3 | 0.700 [0.500, 0.900] | 100% | 50% | never, "
                        "4,000, 2,000 | 41 | 249 |")
    assert "| 0.300 [0.300, 0.300] | 0% | 0% | never |" in table[3]


def test_train_report_over_real_runs(tmp_path, tiny_mace_file, capsys):
    for seed in (3, 4):
        args = train_args(tmp_path / "runs" / f"s{seed}", tiny_mace_file, "internal", 16)
        args[args.index("--seed") + 1] = str(seed)
        assert main(args) == 0
    (tmp_path / "runs" / "unfinished").mkdir()
    (tmp_path / "runs" / "unfinished" / "config.json").write_text("{}")
    capsys.readouterr()
    assert main(["train-report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "unfinished: not finished" in printed
    md = (tmp_path / "report" / "training_report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| CH2O |"))
    assert "| 16 | internal | " in row and " + xtb correction | 2 |" in row  # --reference auto: xtb
    summaries = [json.loads((tmp_path / "runs" / f"s{s}" / "summary.json").read_text()) for s in (3, 4)]
    # a user's model file has no best-known returns: the fraction is n/a, the curves plot the return instead
    assert all(s["final_greedy"]["mean_fraction_of_optimum"] is None for s in summaries)
    assert "| n/a |" in row
    speed = sum(s["env_steps_per_s"] for s in summaries) / 2  # the median of two
    assert row.endswith(f"| {speed:.0f} |")
    assert (tmp_path / "report" / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # judged by GFN2-xTB: a row per group and per checkpoint file, the judgement cached in each run folder
    checkpoint = f"own:CH2O={tmp_path / 'runs' / 's3' / 'model.zip'}"
    assert main(["train-report", str(tmp_path / "runs"), "--out", str(tmp_path / "judged"), "--referee", "xtb",
                 "--checkpoint", checkpoint]) == 0
    judged = (tmp_path / "judged" / "training_report.md").read_text().split("## Judged by xtb")[1]
    assert "| CH2O | 16 | internal | " in judged and "+ xtb correction | 2 |" in judged
    assert "| CH2O | n/a | own | checkpoint | 1 |" in judged
    cache = json.loads((tmp_path / "runs" / "s3" / "referee-xtb.json").read_text())
    assert cache["referee"] == "GFN2-xTB" and len(cache["records"]) == 1  # greedy episodes are identical
    assert "| PoseBusters (mean over seeds) |" in judged and "bond graph kept by the relaxation" in judged
    # a cache written before the records had graph_kept and posebusters is judged again, not read
    from molgym.agents.common.referee import judge_run

    stale = dict(cache, key={k: v for k, v in cache["key"].items() if k != "records"}, records=[])
    (tmp_path / "runs" / "s3" / "referee-xtb.json").write_text(json.dumps(stale))
    again = judge_run(tmp_path / "runs" / "s3", "xtb")
    assert len(again["records"]) == 1 and {"graph_kept", "posebusters"} <= set(again["records"][0])
    assert main(["train-report", str(tmp_path / "runs"), "--out", str(tmp_path / "r2"), "--checkpoint",
                 checkpoint]) == 2  # a checkpoint needs a referee
    # the policy of each run's best periodic evaluation, played in the run's environment, judged the same way
    assert main(["train-report", str(tmp_path / "runs"), "--out", str(tmp_path / "best"), "--referee", "xtb",
                 "--policy", "best"]) == 0
    judged = (tmp_path / "best" / "training_report.md").read_text().split("## Judged by xtb")[1]
    steps = [json.loads((tmp_path / "runs" / f"s{s}" / "best.json").read_text())["step"] for s in (3, 4)]
    assert "best periodic evaluation's policy" in judged
    assert "| CH2O | 16 | internal | " in judged and judged.count(f"| {steps[0]:,}, {steps[1]:,} |") == 1
    cache = json.loads((tmp_path / "runs" / "s3" / "referee-best-xtb.json").read_text())
    assert cache["step"] == steps[0] and len(cache["records"]) == 1 and cache["key"]["source"].startswith("best-")
    assert main(["train-report", str(tmp_path / "runs"), "--out", str(tmp_path / "r3"), "--policy", "best"]) == 2
    # any checkpoint of a run, by its step; a step without one is an error naming those there are
    at16 = judge_run(tmp_path / "runs" / "s3", "xtb", policy="step:16")
    assert at16["step"] == 16 and at16["key"]["source"] == "step_16.zip" and len(at16["records"]) == 1
    assert (tmp_path / "runs" / "s3" / "referee-step-16-xtb.json").is_file()
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 8; it has steps 16$"):
        judge_run(tmp_path / "runs" / "s3", "xtb", policy="step:8")
    # the mean weights of a run's last K checkpoints, written beside them and judged the same way
    mean1 = judge_run(tmp_path / "runs" / "s3", "xtb", policy="mean:1")
    assert mean1["step"] == 16 and mean1["key"]["source"] == "mean-1.zip"
    assert mean1["records"][0]["referee_return"] == pytest.approx(at16["records"][0]["referee_return"], abs=1e-6)
    with pytest.raises(ValueError, match=r"final, best, step:N \(N a checkpoint's step\) or mean:K"):
        judge_run(tmp_path / "runs" / "s3", "xtb", policy="last")


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_train_report_without_runs_is_a_clear_error(make, tmp_path, capsys):
    target = tmp_path / "nothing"
    if make == "empty":
        target.mkdir()
    assert main(["train-report", str(target), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and ("no such run folder" in err or "holds no molgym train run" in err)


def test_referee_judges_return_strain_and_validity():
    """A relaxed methanol is near GFN2-xTB's best-known CH4O return with no strain and passes PoseBusters;
    stretching its C-O bond costs return, releases energy on relaxation (which makes the bond again: the graph
    changed) and breaks validity."""
    from ase.build import molecule
    from ase.optimize import BFGS

    from molgym.agents.common.referee import judge_molecules, summarise_judged
    from molgym.potentials import load_potential

    xtb = load_potential("xtb")
    relaxed = molecule("CH3OH")
    relaxed.calc = xtb.as_calculator()
    BFGS(relaxed, logfile=None).run(fmax=0.01)
    stretched = relaxed.copy()
    stretched.set_distance(0, 1, 1.9, fix=0)  # C-O from 1.42 to 1.9 Å
    good, bad = judge_molecules([relaxed, stretched], xtb)
    assert good["valid"] and good["referee_fraction"] == pytest.approx(1.0, abs=0.01)
    assert good["relax_drop"] == pytest.approx(0.0, abs=0.01) and good["relax_rmsd"] < 0.01
    assert not bad["valid"] and bad["referee_fraction"] < good["referee_fraction"] - 0.03
    assert bad["relax_drop"] > 0.5 and bad["relax_rmsd"] > 0.1
    # the stretched C-O (no bond at 1.9 Å by the distance rule) is a bond again after relaxation
    assert good["graph_kept"] is True and bad["graph_kept"] is False
    assert good["posebusters"] is True
    summary = summarise_judged([good, bad])
    assert summary["valid"] == 0.5 and summary["molecules"] == 2 and summary["graph_kept"] == 0.5


def test_ship_checkpoint_copies_the_median_seed_and_indexes_it(tmp_path, tiny_mace_file):
    from molgym.agents.shipped import ship_checkpoint
    from molgym.potentials.registry import sha256_of

    runs = []
    for seed in (3, 4, 5):
        out = tmp_path / "runs" / f"s{seed}"
        args = train_args(out, tiny_mace_file, "internal", 16)
        args[args.index("--seed") + 1] = str(seed)
        assert main(args) == 0
        runs.append(out)
    fractions = {}
    for out in runs:  # the tiny model has no best-known return: give the runs fractions to rank
        summary = json.loads((out / "summary.json").read_text())
        fractions[out.name] = summary["final_greedy"]["mean_fraction_of_optimum"] = {"s3": 0.9, "s4": 0.5,
                                                                                     "s5": 0.7}[out.name]
        (out / "summary.json").write_text(json.dumps(summary))
    target = tmp_path / "checkpoints"
    target.mkdir()
    entry = ship_checkpoint(runs, target)
    assert entry["seed"] == 5 and entry["seeds_trained"] == 3  # the median of 0.5, 0.7, 0.9
    shipped = target / "internal-CH2O.zip"
    assert shipped.read_bytes() == (tmp_path / "runs" / "s5" / "model.zip").read_bytes()
    index = json.loads((target / "index.json").read_text())
    assert [e["formula"] for e in index["checkpoints"]] == ["CH2O"]
    assert index["checkpoints"][0]["sha256"] == sha256_of(shipped)
    assert entry["reference"] == "xtb" and "--reference xtb" in entry["command"]
    assert entry["potential_sha256"] == sha256_of(tiny_mace_file)  # the model the run's rewards came from
    # the command reproduces the run's PPO settings: the learning rate always, the others where not the default
    assert "--lr 0.001" in entry["command"] and "--n-steps 8 --batch-size 8 --epochs 1" in entry["command"]
    assert "--gamma" not in entry["command"] and "--model-kwargs '{" in entry["command"]
    other = tmp_path / "runs" / "other"
    args = train_args(other, tiny_mace_file, "internal", 16, "--reference", "none")
    assert main(args) == 0
    with pytest.raises(ValueError, match="not seeds of one setting"):
        ship_checkpoint(runs + [other], target)


def test_ship_checkpoint_ships_a_stochastic_bag_run_by_template(tmp_path, tiny_mace_file, monkeypatch, request):
    """A StochasticBag run ships under its template, apart from the per-formula checkpoints, with its held-out bags;
    seeds are ranked by held-out greedy validity (random bags have no best-known return)."""
    import molgym.agents.shipped as shipped

    runs = []
    for seed in (3, 4, 5):
        out = tmp_path / "runs" / f"s{seed}"
        args = train_args(out, tiny_mace_file, "internal", 16)
        args[args.index("--seed") + 1] = str(seed)
        args[args.index("--formula") + 1] = "none"
        args += ["--env", "MolGym/StochasticBag-v0",
                 "--env-kwargs", '{"template": "C2H6O", "size_range": [3, 6], "exclude": ["CH4O", "C2H2"]}']
        assert main(args) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert sorted(summary["held_out"]["bags"]) == ["C2H2", "CH4O"]
        summary["held_out"]["greedy"]["validity"] = {"s3": 1.0, "s4": 0.0, "s5": 0.5}[out.name]
        (out / "summary.json").write_text(json.dumps(summary))
        runs.append(out)
    monkeypatch.setattr(shipped, "CHECKPOINT_DIR", tmp_path / "checkpoints")
    request.addfinalizer(shipped._index.cache_clear)  # the real index again for later tests
    (tmp_path / "checkpoints").mkdir()
    shipped.ship_checkpoint(runs[:1], tmp_path / "checkpoints")
    entry = shipped.ship_checkpoint(runs, tmp_path / "checkpoints")  # replaces the template's entry
    assert entry["seed"] == 5 and entry["seeds_held_out_greedy_validity"] == {"3": 1.0, "4": 0.0, "5": 0.5}
    assert entry["template"] == "C2H6O" and entry["env_kwargs"]["exclude"] == ["CH4O", "C2H2"]
    assert entry["held_out"]["greedy"]["validity"] == 0.5
    assert "--env MolGym/StochasticBag-v0 --formula none --env-kwargs '{" in entry["command"]
    index = json.loads((tmp_path / "checkpoints" / "index.json").read_text())
    assert index["checkpoints"] == [] and [e["template"] for e in index["stochastic"]] == ["C2H6O"]
    assert shipped.shipped_checkpoints() == {}
    path = shipped.shipped_stochastic_checkpoint("OC2H6")  # any spelling of the template; sha256 checked
    assert path.name == "internal-stochastic-C2H6O.zip"
    assert path.read_bytes() == (tmp_path / "runs" / "s5" / "model.zip").read_bytes()
    with pytest.raises(ValueError, match="no shipped stochastic-bag checkpoint for template C7H8N2O2; shipped for: "
                                         "C2H6O"):
        shipped.shipped_stochastic_checkpoint("C7H8N2O2")
    path.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="sha256"):
        shipped.shipped_stochastic_checkpoint("C2H6O")
