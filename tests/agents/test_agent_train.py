"""``molgym train`` end to end on a tiny MACE potential (tiny runs: plumbing, not learning)."""

from __future__ import annotations

import csv
import json

import ase.io
import numpy as np
import pytest
from stable_baselines3 import PPO

from agent_helpers import train_args as _args

from molgym.agents.common.train_config import policy_class
from molgym.agents.common.training import evaluation_rank
from molgym.cli import main


@pytest.mark.parametrize("agent", ["covariant", "internal"])
def test_train_run_writes_every_output(agent, tmp_path, tiny_mace_file, capsys):
    out = tmp_path / agent
    assert main(_args(out, tiny_mace_file, agent, 32)) == 0
    assert "final greedy molecules" in capsys.readouterr().out
    for name in ("config.json", "progress.csv", "eval.csv", "model.zip", "molecules.xyz", "summary.json",
                 "checkpoints/latest.zip", "checkpoints/step_16.zip", "checkpoints/step_32.zip"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 32 and summary["agent"] == agent
    assert summary["env_steps_per_s"] > 0
    assert summary["reward_rules"] == {"invalid_reward": -1.0, "min_reward": -1.0, "uncertainty_penalty": 0.0,
                                       "uncertainty_threshold": None, "reference_name": "GFN2-xTB"}
    assert summary["reference"] == "xtb"  # --reference auto: GFN2-xTB corrects a MACE potential's returns
    g, s = summary["final_greedy"], summary["final_sampled"]
    assert g["episodes"] == 1 and s["episodes"] == 2
    assert 0.0 <= s["validity"] <= 1.0 and np.isfinite(s["mean_return"])
    molecules = ase.io.read(out / "molecules.xyz", index=":")
    assert [m.info["mode"] for m in molecules] == ["greedy", "sampled", "sampled"]
    assert all("episode_return" in m.info and "valid" in m.info for m in molecules)
    assert all(m.info["complete"] or not m.info["valid"] for m in molecules)  # valid needs a completed episode
    assert s["validity"] <= s["completed"]
    rows = (out / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("step,mean_return") and len(rows) == 3  # steps 16 and 32
    # the best periodic evaluation's policy is kept: best.json holds its eval.csv row and names its file
    best = json.loads((out / "best.json").read_text())
    assert best == summary["best_evaluation"] and best["file"] == f"best-{best['step']}.zip"
    assert f"{best['step']},{best['mean_return']}," in "\n".join(rows)
    assert sorted(p.name for p in out.glob("best-*.zip")) == [best["file"]]  # an earlier best file is removed
    assert PPO.load(str(out / best["file"]), device="cpu").num_timesteps == best["step"]
    # the checkpoint records every model option, so a later change of a default cannot change the saved policy
    recorded = PPO.load(str(out / "model.zip"), device="cpu").policy_kwargs["model_kwargs"]
    model_class = policy_class(agent).model_class
    given = json.loads((out / "config.json").read_text())["model_kwargs"]
    assert set(recorded) == set(model_class.option_names()) and given and set(given) < set(recorded)
    expected = {**model_class.option_defaults(), **given}
    assert json.loads(json.dumps(recorded)) == json.loads(json.dumps(expected))


def test_stochastic_bag_run_reports_the_held_out_bags(tmp_path, tiny_mace_file, capsys):
    out = tmp_path / "stochastic"
    args = _args(out, tiny_mace_file, "internal", 16)
    i = args.index("--formula")
    args[i + 1] = "none"
    args += ["--env", "MolGym/StochasticBag-v0",
             "--env-kwargs", '{"template": "C2H6O", "size_range": [3, 6], "exclude": ["CH4O", "C2H2"]}']
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "held-out bag C2H2" in printed and "held-out bag CH4O" in printed
    held = json.loads((out / "summary.json").read_text())["held_out"]
    assert sorted(held["bags"]) == ["C2H2", "CH4O"]
    assert held["greedy"]["episodes"] == 2 and held["sampled"]["episodes"] == 2  # 1 greedy + 1 sampled per bag
    assert 0.0 <= held["sampled"]["validity"] <= 1.0 and np.isfinite(held["greedy"]["mean_return"])
    molecules = ase.io.read(out / "molecules.xyz", index=":")
    held_out = [m for m in molecules if m.info["mode"].startswith("held-out")]
    assert sorted(m.info["bag"] for m in held_out) == ["C2H2", "C2H2", "CH4O", "CH4O"]
    # a finished episode holds the bag's atoms (an invalid placement may end it early)
    for m in held_out:
        assert m.info["complete"] is False or m.get_chemical_formula(mode="hill") == m.info["bag"]


def test_resume_continues_to_the_total(tmp_path, tiny_mace_file):
    out = tmp_path / "run"
    assert main(_args(out, tiny_mace_file, "internal", 16)) == 0
    assert main(_args(out, tiny_mace_file, "internal", 16)) == 2  # refuses to overwrite a run
    # a run from before best.json: resuming adopts its best evaluated checkpoint
    best = json.loads((out / "best.json").read_text())
    (out / "best.json").unlink()
    (out / best["file"]).unlink()
    assert main(_args(out, tiny_mace_file, "internal", 32, "--resume")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 32 and summary["trained_this_session"] == 16
    best = summary["best_evaluation"]
    with open(out / "eval.csv", newline="") as fh:
        rows = [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(fh)]
    assert [r["step"] for r in rows] == [16, 32] and (out / best["file"]).is_file()
    assert best["step"] == max(rows, key=evaluation_rank)["step"]  # the step-16 evaluation competes
    # a resumed run must keep its settings
    assert main(_args(out, tiny_mace_file, "internal", 48, "--resume", "--lr", "1e-2")) == 2


def test_linear_learning_rate_decays_to_zero_over_the_run_across_a_resume(tmp_path, tiny_mace_file):
    import csv

    out = tmp_path / "run"
    assert main(_args(out, tiny_mace_file, "internal", 48, "--lr-schedule", "linear", "--lr", "1e-3")) == 0
    with open(out / "progress.csv") as fh:
        first = [float(r["train/learning_rate"]) for r in csv.DictReader(fh) if r.get("train/learning_rate")]
    # one update per 16 steps (n_steps 8 x 2 envs), at the rate 1e-3 (1 - t/48) after step t; SB3 logs each
    # update's figures with the next rollout's, so the last one (at rate 0) is not in the log
    assert first == pytest.approx([1e-3 * (1 - t / 48) for t in (16, 32)])
    assert json.loads((out / "config.json").read_text())["lr_schedule"] == "linear"
    assert main(_args(out, tiny_mace_file, "internal", 80, "--resume", "--lr-schedule", "linear", "--lr", "1e-3")) == 0
    with open(out / "progress.csv") as fh:
        rates = [float(r["train/learning_rate"]) for r in csv.DictReader(fh) if r.get("train/learning_rate")]
    assert rates[len(first):] == pytest.approx([1e-3 * (1 - 64 / 80)])  # the line now ends at the new total
    # the schedule is a setting of the run: resuming without it is refused
    assert main(_args(out, tiny_mace_file, "internal", 96, "--resume", "--lr", "1e-3")) == 2


@pytest.mark.parametrize(
    "change, message",
    [
        (["--agent", "nope"], None),  # argparse choices: exit status 2 via SystemExit
        (["--lr-schedule", "cosine"], None),
        (["--steps", "0"], "steps must be a positive integer"),
        (["--formula", "c2h6"], "malformed formula"),
        (["--env", "MolGym/Nope-v0"], "unknown environment"),
        (["--batch-size", "999"], "exceeds the rollout size"),
        (["--device", "tpu"], "device must be"),
        (["--model-kwargs", "{oops"], "not valid JSON"),
        (["--model-kwargs", '{"max_concentraton": 80}'], "unknown model option(s) 'max_concentraton'; allowed:"),
        (["--model-kwargs", '{"max_concentration": 80}'], "use a finer quadrature"),
        (["--reference", "gfn9"], "unknown reference 'gfn9'"),
        (["--env-kwargs", '{"reference": "xtb"}'], "give the reference with --reference"),
        (["--target-kl", "0"], "target_kl must be a positive number (or none), got 0.0"),
        (["--imitate-relaxed", "-0.5"], "imitation_coef must be a non-negative number (0 turns it off), got -0.5"),
        (["--polish-steps", "-1", "--imitate-relaxed", "0.1"], "polish_steps must be a non-negative integer"),
        (["--polish-steps", "100"], "polish_steps=100 needs relaxed self-imitation (--imitate-relaxed COEF > 0)"),
        (["--polish-steps", "100", "--imitate-relaxed", "0.1", "--env", "MolGym/StochasticBag-v0"],
         "fixed-bag tasks only"),
    ],
)
def test_bad_arguments_fail_before_any_work(change, message, tmp_path, capsys):
    out = tmp_path / "never"
    argv = _args(out, "xtb", "covariant", 16) + change
    if message is None:
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2
    else:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    assert main(_args(tmp_path / "empty", "xtb", "covariant", 16, "--resume")) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as err:
        main(["train", "--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    for option in ("--agent", "--formula", "--steps", "--n-envs", "--seed", "--device", "--resume", "--eval-every"):
        assert option in out


def test_training_validity_is_the_benchmarks_chemical_validity():
    """A completed episode counts as valid only if its molecule is one connected, RDKit-sanitisable molecule."""
    from ase.build import molecule

    from molgym.agents.common.episodes import is_valid as _is_valid

    methanol = molecule("CH3OH")
    assert _is_valid(methanol)
    apart = methanol.copy()
    apart.positions[apart.get_chemical_symbols().index("O")] += [6.0, 0.0, 0.0]  # O (and its H) far away
    assert not _is_valid(apart)


def test_reference_auto_none_and_resume(tmp_path, tiny_mace_file):
    """'auto' is GFN2-xTB for a MACE potential and nothing for xTB itself; a resumed run keeps its reference."""
    from molgym.agents.common.training import resolve_reference

    assert resolve_reference("auto", str(tiny_mace_file)) == "xtb"
    assert resolve_reference("auto", "xtb") is None and resolve_reference("auto", "PM6") is None
    assert resolve_reference("none", "default") is None and resolve_reference("pm6", "default") == "pm6"
    out = tmp_path / "plain"
    assert main(_args(out, tiny_mace_file, "internal", 16, "--reference", "none")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"] is None and summary["reward_rules"]["reference_name"] is None
    # the default (auto -> xtb) differs from the saved run's: resuming must say so instead of mixing rewards
    assert main(_args(out, tiny_mace_file, "internal", 32, "--resume")) == 2
    assert main(_args(out, tiny_mace_file, "internal", 32, "--resume", "--reference", "none")) == 0


def test_best_evaluation_ranks_validity_then_return_and_falls_back_to_checkpoints(tmp_path):
    """The best policy is the most valid evaluation, then the highest return (the first of equals); a run from
    before best.json takes the best evaluated step that has a checkpoint."""
    from molgym.agents.common.training import _adopt_best_checkpoint, best_evaluated_checkpoint

    assert evaluation_rank({"validity": 1.0, "mean_return": 5.0}) > evaluation_rank({"validity": 0.5,
                                                                                      "mean_return": 50.0})
    assert evaluation_rank({"validity": float("nan"), "mean_return": 1.0}) < evaluation_rank({"validity": 0.0,
                                                                                               "mean_return": 0.0})
    run = tmp_path / "old-run"
    (run / "checkpoints").mkdir(parents=True)
    rows = ["step,mean_return,best_return,validity,mean_fraction_of_optimum,completed",
            "10,9.0,9.0,0.0,0.9,1.0", "20,8.0,8.0,1.0,0.8,1.0", "30,8.5,8.5,1.0,0.85,1.0", "40,8.5,8.5,1.0,0.85,1.0",
            "50,9.9,9.9,1.0,0.99,1.0"]
    (run / "eval.csv").write_text("\n".join(rows) + "\n")
    for step in (10, 20, 30, 40):  # step 50, the best, has no checkpoint
        (run / "checkpoints" / f"step_{step}.zip").write_bytes(b"")
    path, row = best_evaluated_checkpoint(run)
    assert path == run / "checkpoints" / "step_30.zip" and row["step"] == 30 and row["mean_return"] == 8.5
    _adopt_best_checkpoint(run)  # what resuming such a run does
    assert json.loads((run / "best.json").read_text()) == {**row, "file": "best-30.zip"}
    assert (run / "best-30.zip").is_file()
    (run / "best.json").write_text(json.dumps({**row, "step": 20, "file": "best-20.zip"}))
    (run / "best-20.zip").write_bytes(b"")
    assert best_evaluated_checkpoint(run)[0] == run / "best-20.zip"  # best.json wins where its file exists
    with pytest.raises(FileNotFoundError, match="no periodic evaluation with a checkpoint"):
        best_evaluated_checkpoint(tmp_path / "nothing")


def test_relaxed_self_imitation_run_keeps_its_buffer_across_a_resume(tmp_path, tiny_mace_file):
    out = tmp_path / "imitation"
    assert main(_args(out, tiny_mace_file, "covariant", 32, "--imitate-relaxed", "0.5", "--target-kl", "0.05")) == 0
    assert PPO.load(str(out / "model.zip"), device="cpu").target_kl == 0.05  # SB3's early stop of an update's epochs
    summary = json.loads((out / "summary.json").read_text())
    first = summary["imitation"]
    assert first["coef"] == 0.5 and json.loads((out / "config.json").read_text())["imitation_coef"] == 0.5
    # at most one relaxation per rollout (two rollouts of 2 environments x 8 steps)
    assert 0 <= first["kept"] <= first["relaxations"] <= 2
    saved = json.loads((out / "imitation.json").read_text())
    assert saved["stats"]["relaxations"] == first["relaxations"] and len(saved["buffer"]) <= first["kept"]
    assert main(_args(out, tiny_mace_file, "covariant", 48, "--imitate-relaxed", "0.5", "--target-kl", "0.05",
                      "--resume")) == 0
    again = json.loads((out / "summary.json").read_text())["imitation"]
    assert again["relaxations"] >= first["relaxations"]  # the counters (and buffer) went on from the saved ones
    assert main(_args(out, tiny_mace_file, "covariant", 64, "--resume")) == 2  # imitation is a resume setting


def test_polish_fits_the_final_policy_and_leaves_the_checkpoints(tmp_path, tiny_mace_file):
    """A finished imitation run resumed with --polish-steps: the final policy (model.zip) is fitted to the buffer's
    best demonstration; the checkpoint a longer run would resume from stays the PPO policy."""
    import torch
    from ase.build import molecule

    from molgym.agents.common.imitation import Demonstration

    out = tmp_path / "polish"
    assert main(_args(out, tiny_mace_file, "covariant", 32, "--imitate-relaxed", "0.5")) == 0
    saved = json.loads((out / "imitation.json").read_text())
    m = molecule("H2CO")
    m = m[np.argsort(m.numbers == 1, kind="stable")]  # heavy atoms first, as the agents build
    saved["buffer"] = [Demonstration(m.numbers, m.positions, 3.0, 2.0, "H2CO").to_json()]  # a known best
    (out / "imitation.json").write_text(json.dumps(saved))
    before = PPO.load(str(out / "checkpoints" / "latest.zip"), device="cpu").policy.state_dict()
    assert main(_args(out, tiny_mace_file, "covariant", 32, "--imitate-relaxed", "0.5", "--polish-steps", "30",
                      "--resume")) == 0
    polish = json.loads((out / "summary.json").read_text())["polish"]
    assert polish["steps"] == 30 and polish["pairs"] == 3 and polish["demonstration_relaxed_return"] == 3.0
    assert polish["last_loss"] < polish["first_loss"]
    assert json.loads((out / "config.json").read_text())["polish_steps"] == 30
    trained = PPO.load(str(out / "checkpoints" / "latest.zip"), device="cpu").policy.state_dict()
    assert all(torch.equal(before[k], trained[k]) for k in before)
    # the polished policy is kept only if its greedy episode ranks at least as high as the PPO policy's
    assert set(polish) >= {"scores", "chosen_step", "kept"} and polish["scores"][0]["step"] == 0
    assert polish["kept"] == (polish["chosen_step"] > 0)
    final = PPO.load(str(out / "model.zip"), device="cpu").policy.state_dict()
    assert any(not torch.equal(final[k], trained[k]) for k in final) == polish["kept"]


def test_mean_of_the_last_checkpoints_is_written_and_named_as_a_policy(tmp_path, tiny_mace_file):
    import torch

    from molgym.agents.common.referee import _policy_source
    from molgym.agents.common.training import average_checkpoints

    out = tmp_path / "run"
    assert main(_args(out, tiny_mace_file, "covariant", 32)) == 0
    path = average_checkpoints(out, 2)
    assert path == out / "mean-2.zip"
    mean = PPO.load(str(path), device="cpu").policy.state_dict()
    ends = [PPO.load(str(out / "checkpoints" / f"step_{s}.zip"), device="cpu").policy.state_dict() for s in (16, 32)]
    changed = 0
    for key, value in mean.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (ends[0][key] + ends[1][key]) / 2)
            changed += int(not torch.equal(ends[0][key], ends[1][key]))
    assert changed > 0  # the two checkpoints differ, so the mean is neither of them
    mtime = path.stat().st_mtime_ns
    assert _policy_source(out, "mean:2") == (path, 32) and path.stat().st_mtime_ns == mtime  # not rewritten
    with pytest.raises(ValueError, match="has 2 checkpoints .16, 32.; cannot average the last 3"):
        average_checkpoints(out, 3)
    with pytest.raises(ValueError, match="must be a positive integer, got 0"):
        average_checkpoints(out, 0)
    with pytest.raises(ValueError, match="or mean:K"):
        _policy_source(out, "mean:x")
