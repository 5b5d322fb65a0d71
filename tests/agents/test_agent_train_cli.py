"""``molgym train``: the progress log across resumed sessions, whole-rollout step counts, and option checks."""

from __future__ import annotations

import csv
import json

from agent_helpers import train_args as _args

from molgym.cli import main


def _logged_steps(path) -> list[int]:
    with open(path, newline="") as fh:
        return [int(float(row["time/total_timesteps"])) for row in csv.DictReader(fh)]


def test_resume_appends_to_progress_and_rounded_steps_are_stated(tmp_path, tiny_mace_file, capsys):
    out = tmp_path / "run"
    assert main(_args(out, tiny_mace_file, "internal", 20)) == 0  # PPO rollouts: n_steps 8 x 2 envs = 16 steps
    assert "this run trains to 32 steps" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["steps"] == 32
    assert _logged_steps(out / "progress.csv") == [16, 32]

    assert main(_args(out, tiny_mace_file, "internal", 40, "--resume")) == 0  # 32 + one rollout
    assert "this run trains to 48 steps" in capsys.readouterr().out
    assert _logged_steps(out / "progress.csv") == [16, 32, 48]  # the first session's rows are kept
    lines = (out / "progress.csv").read_text().splitlines()
    assert lines.count(lines[0]) == 1  # one header


def test_progress_log_of_a_resumed_run_keeps_one_header_when_columns_change(tmp_path):
    from molgym.agents.common.progress_log import progress_logger as _progress_logger

    path = tmp_path / "progress.csv"
    # rows past the checkpoint the run resumes from (step 32) belong to updates it redoes; "64" was cut off by a kill
    path.write_text("time/total_timesteps,train/loss\n16,0.5\n32,0.25\n48,0.125\n64\n")
    logger = _progress_logger(tmp_path, ["csv"], resume_step=32)
    assert path.read_text() == "time/total_timesteps,train/loss\n16,0.5\n32,0.25\n"
    logger.record("time/total_timesteps", 48)
    logger.record("train/loss", 0.2)
    logger.record("eval/mean_return", -1.5)
    logger.dump(48)
    logger.close()
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [["time/total_timesteps", "train/loss", "eval/mean_return"], ["16", "0.5", ""], ["32", "0.25", ""],
                    ["48", "0.2", "-1.5"]]


def test_unknown_env_kwargs_and_huge_formulas_fail_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(_args(out, "xtb", "covariant", 16, "--env-kwargs", '{"bogus": 1}')) == 2
    err = capsys.readouterr().err
    assert "'bogus'" in err and "workspace" in err and "min_reward" in err and "Traceback" not in err
    assert main(_args(out, "xtb", "covariant", 16, "--formula", "C1000")) == 2
    assert "at most 100 atoms" in capsys.readouterr().err
    assert not out.exists()
