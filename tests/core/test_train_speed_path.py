"""The training-speed defaults of `molgym potential train` (no training here; the end-to-end run is in
test_potential_training.py)."""

from __future__ import annotations

import json
import os

import pytest

from molgym.training import mace_train
from molgym.training.mace_train import idle_cores, mace_arguments, training_threads


@pytest.fixture
def fake_dataset(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"isolated_atom_energies": {"1": -10.7, "6": -48.8}}))
    for split in ("train", "valid"):
        (data / f"{split}.xyz").write_text("")
    return data


def _value(argv, flag):
    return argv[argv.index(flag) + 1]


def test_cpu_defaults_keep_the_trajectory_and_drop_the_end_of_run_plot(fake_dataset, tmp_path):
    argv = mace_arguments(fake_dataset, tmp_path / "out")
    assert _value(argv, "--eval_interval") == "1"  # the plateau scheduler sees a fresh validation loss every epoch
    assert _value(argv, "--num_workers") == "0"
    assert _value(argv, "--pin_memory") == "False"
    assert _value(argv, "--plot") == "False"
    assert "--restart_latest" in argv
    assert _value(mace_arguments(fake_dataset, tmp_path / "out", device="cuda"), "--pin_memory") == "True"

    from mace.tools import build_default_arg_parser

    args = build_default_arg_parser().parse_args(
        mace_arguments(fake_dataset, tmp_path / "out", eval_interval=3, num_workers=1, plot=True))
    assert (args.eval_interval, args.num_workers, args.pin_memory, args.plot) == (3, 1, False, True)


def test_bad_speed_options_fail_before_training(fake_dataset, tmp_path):
    with pytest.raises(ValueError, match="eval_interval"):
        mace_arguments(fake_dataset, tmp_path / "out", eval_interval=0)
    with pytest.raises(ValueError, match="num_workers"):
        mace_arguments(fake_dataset, tmp_path / "out", num_workers=-1)


def test_threads_follow_the_idle_cores_unless_asked(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert training_threads(3, default=2) == (3, "requested")
    monkeypatch.setattr(mace_train, "idle_cores", lambda interval=0.5: 0.9)
    assert training_threads(None, default=2)[0] == 1  # one core busy with another job: one thread
    monkeypatch.setattr(mace_train, "idle_cores", lambda interval=0.5: 1.8)
    assert training_threads(None, default=2)[0] == 2
    monkeypatch.setattr(mace_train, "idle_cores", lambda interval=0.5: 0.0)
    assert training_threads(None, default=2)[0] == 1
    monkeypatch.setattr(mace_train, "idle_cores", lambda interval=0.5: 7.9)
    assert training_threads(None, default=2)[0] == 2  # never more than torch's default
    monkeypatch.setattr(mace_train, "idle_cores", lambda interval=0.5: None)
    assert training_threads(None, default=2)[0] == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert training_threads(None, default=1) == (1, "OMP_NUM_THREADS")


def test_idle_cores_is_a_fraction_of_the_machine():
    idle = idle_cores(0.05)
    if idle is not None:  # Linux
        assert 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9
