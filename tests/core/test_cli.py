"""Smoke tests of the ``molgym`` command line (run in-process through ``main``, and once as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator

import molgym
from molgym.cli import main
from molgym.io import write_xyz


def test_version_and_help_as_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "molgym", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"molgym {molgym.__version__}"
    out = subprocess.run([sys.executable, "-m", "molgym", "--help"], capture_output=True, text=True, check=True)
    assert "potential" in out.stdout


def test_group_without_command_prints_its_help(capsys):
    assert main(["potential"]) == 2
    assert "evaluate" in capsys.readouterr().out


def test_every_command_help_renders_cleanly():
    """argparse %-formats option help but not descriptions: a ``%%`` in a description shows as is."""
    import argparse

    from molgym.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    seen = list(parsers(build_parser()))
    assert len(seen) > 10
    for parser in seen:
        text = parser.format_help()
        assert "%%" not in text, f"{parser.prog}: a literal %% in its help"


def test_potential_info_xtb(capsys):
    assert main(["potential", "info", "xtb", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "GFN2-xTB" and "C" in info["species"] and len(info["species"]) == 86


def test_potential_info_mace_file(capsys, tiny_mace_file):
    assert main(["potential", "info", str(tiny_mace_file), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "MACEPotential" in out and "H C N O F" in out and "r_max" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["potential", "info", "nonsense"], "unknown potential 'nonsense'"),
        (["potential", "info", "/no/such/file.model"], "does not exist"),
        (["potential", "evaluate", "--potential", "xtb", "--data", "/no/such.xyz"], "does not exist"),
        (["potential", "evaluate", "--potential", "xtb", "--data", "qm9:zero"], "malformed data spec"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_evaluate_against_stored_labels_and_a_reference(tmp_path, capsys, tiny_mace_file):
    from molgym.potentials import load_potential

    xtb = load_potential("xtb")
    structures = []
    for i, name in enumerate(["H2O", "CH4", "NH3", "HCOOH", "CH3OH", "C2H6"]):
        atoms = molecule(name)
        atoms.rattle(0.02, seed=i)
        (energy,), (forces,) = xtb.energies_and_forces([atoms])
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["category"] = "small" if len(atoms) <= 4 else "larger"
        structures.append(atoms)
    data = tmp_path / "labelled.xyz"
    write_xyz(data, structures)

    # xTB against its own stored labels: zero error, which checks the stored-label path end to end
    assert main(["potential", "evaluate", "--potential", "xtb", "--data", str(data), "--out", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert set(result["errors"]) == {"all", "larger", "small"}
    assert result["errors"]["all"]["structures"] == 6
    assert result["errors"]["all"]["energy_mae_meV"] < 1e-3 and result["errors"]["all"]["force_mae_meV_per_A"] < 1e-3

    # an untrained MACE against xTB: large, finite errors
    argv = ["potential", "evaluate", "--potential", str(tiny_mace_file), "--reference", "xtb", "--data", str(data),
            "--device", "cpu", "--out", str(tmp_path / "b")]
    assert main(argv) == 0
    errors = json.loads((tmp_path / "b" / "evaluation.json").read_text())["errors"]["all"]
    assert np.isfinite(errors["energy_mae_meV"]) and errors["energy_mae_meV"] > 1000
    assert "E MAE" in capsys.readouterr().out


def test_evaluate_without_labels_asks_for_a_reference(tmp_path, capsys):
    data = tmp_path / "plain.xyz"
    write_xyz(data, [molecule("H2O")])
    assert main(["potential", "evaluate", "--potential", "xtb", "--data", str(data)]) == 2
    assert "no stored energy" in capsys.readouterr().err


def test_potential_info_json_is_json_only(tiny_mace_file):
    """Third-party import chatter (mace's cuequivariance line) must not reach stdout of a JSON command."""
    import os

    cmd = [sys.executable, "-m", "molgym", "potential", "info", str(tiny_mace_file), "--device", "cpu", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    info = json.loads(out.stdout)
    assert info["backend"] == "MACEPotential" and info["species"] == ["H", "C", "N", "O", "F"]


def test_provisional_warning_is_printed_once_per_run_workers_included(tmp_path, monkeypatch, tiny_mace_file):
    import os
    import warnings

    from molgym.potentials import load_potential, registry

    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    monkeypatch.setenv(registry.WARNED_ENV, "")  # nothing warned yet in this "run"
    (tmp_path / "default.model").write_bytes(tiny_mace_file.read_bytes())
    card = {"file": "default.model", "sha256": registry.sha256_of(tiny_mace_file), "status": "provisional"}
    (tmp_path / "default.json").write_text(json.dumps(card))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            load_potential("default", device="cpu", committee=False)
    assert sum(issubclass(w.category, registry.ProvisionalModelWarning) for w in caught) == 1

    # a worker process of this run (e.g. a `molgym bench` job) inherits the environment and stays quiet ...
    code = ("import pathlib, warnings; from molgym.potentials import registry; warnings.simplefilter('always'); "
            f"registry.MODELS_DIR = pathlib.Path({str(tmp_path)!r}); registry._warn_if_provisional('default')")
    worker = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "provisional" not in worker.stderr
    # ... while a new run warns again
    env = {k: v for k, v in os.environ.items() if k != registry.WARNED_ENV}
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert "is provisional" in fresh.stderr


@pytest.mark.parametrize("method, module, cls", [("simgen", "molgym.agents.simgen", "SiMGen"),
                                                 ("diffusion", "molgym.agents.diffusion", "DiffusionSampler")])
def test_generate_checks_out_before_generating(method, module, cls, tmp_path, capsys, monkeypatch):
    import importlib

    def never(*args, **kwargs):
        raise AssertionError("the generator was built before --out was checked")

    monkeypatch.setattr(importlib.import_module(module), cls, never)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    (tmp_path / "taken.json").mkdir()  # where the summary of taken.xyz would go
    for out, message in [(a_file / "mols.xyz", "is a file"), (tmp_path / "mols.pdb", ".xyz or .extxyz"),
                         (tmp_path / "taken.xyz", "is an existing directory")]:
        assert main(["generate", method, "-n", "2", "--no-progress", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (a_file.parent / "mols.pdb").exists()


def test_generate_runs_every_registered_generator(tmp_path, capsys):
    """`molgym generate NAME` exists for every registered generator; generic ones take --option, check it before
    any work, and refuse to run without a task unless they have an unconditional mode."""
    from molgym.generator import GENERATORS

    for name in GENERATORS:
        with pytest.raises(SystemExit) as done:
            main(["generate", name, "--help"])
        assert done.value.code == 0
        assert "--task" in capsys.readouterr().out
    out = tmp_path / "rs"
    assert main(["generate", "random_search", "--task", "CH4O", "-n", "2", "--potential", "xtb", "--option",
                 "steps=5", "--no-progress", "--out", f"{out}/"]) == 0
    summary = json.loads((out / "molecules.json").read_text())
    assert summary["n"] == 2 and summary["generator"]["settings"]["steps"] == 5 and summary["task"] == "CH4O"
    assert main(["generate", "qm9", "-n", "3", "--no-progress", "--out", str(tmp_path / "q.xyz")]) == 0  # no task
    capsys.readouterr()
    assert main(["generate", "random_search", "-n", "1", "--out", str(tmp_path / "x.xyz")]) == 2
    assert "needs a task: pass --task" in capsys.readouterr().err
    assert main(["generate", "random_search", "--task", "CH4O", "--option", "stepz=3",
                 "--out", str(tmp_path / "y.xyz")]) == 2
    assert "unknown option 'stepz'" in capsys.readouterr().err
    assert not (tmp_path / "x.xyz").exists() and not (tmp_path / "y.xyz").exists()


def test_installed_packages_add_generators_through_entry_points(monkeypatch, capsys):
    """A package's `molgym.generators` entry point makes its generator reachable by name, CLI included."""
    import importlib.metadata

    from molgym.generator import ENTRY_POINT_GROUP, available_generators, get_generator

    plugin = importlib.metadata.EntryPoint("plugin_qm9", "molgym.agents.qm9_reference:QM9Reference", ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [plugin] if kw.get("group") == ENTRY_POINT_GROUP else real(**kw))
    assert available_generators()["plugin_qm9"] == plugin.value
    assert get_generator("plugin_qm9").name == "qm9"
    with pytest.raises(SystemExit):
        main(["generate", "plugin_qm9", "--help"])
    assert "plugin_qm9" in capsys.readouterr().out


def test_generated_molecules_survive_a_failed_write(tmp_path, monkeypatch):
    """If writing fails anyway (disk full, a directory removed meanwhile), the molecules go to a temp file."""
    import tempfile
    from pathlib import Path

    import ase.io

    import molgym.io
    from molgym.cli import CLIError
    from molgym.cli.generate import run_generation

    class Methane:
        name = "methane"
        unconditional = True

        def generate(self, task, n, seed, progress=None):
            return [molecule("CH4") for _ in range(n)]

        def metadata(self):
            return {"name": self.name}

    target = tmp_path / "out" / "mols.xyz"
    real_write = molgym.io.write_xyz

    def full_disk(path, structures):
        if Path(path) == target:
            raise OSError(28, "No space left on device")
        real_write(path, structures)

    monkeypatch.setattr(molgym.io, "write_xyz", full_disk)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with pytest.raises(CLIError, match="No space left on device") as err:
        run_generation(Methane(), 3, 0, str(target), False, "test")
    saved = list((tmp_path / "tmp").glob("*.xyz"))
    assert len(saved) == 1 and str(saved[0]) in str(err.value)
    assert len(ase.io.read(saved[0], index=":")) == 3


def test_best_known_and_reward_gap_are_molgym_commands(tmp_path, capsys):
    """The two former `python -m` side doors: bad input fails before work, a real run writes the table."""
    assert main(["best-known", "--potential", "xtb", "--formulas", "CH4O", "--candidates", "CCO",
                 "--out", str(tmp_path / "t.json")]) == 2
    assert "'CCO' match none of the formulas CH4O" in capsys.readouterr().err
    assert main(["best-known", "--formulas", "C1000"]) == 2  # refused before the potential loads
    assert main(["reward-gap", "--out", str(tmp_path / "gap")]) == 2
    assert "nothing to measure" in capsys.readouterr().err
    assert main(["reward-gap", "--generator", "random_search", "--out", str(tmp_path / "gap")]) == 2

    table = tmp_path / "table.json"
    assert main(["best-known", "--potential", "xtb", "--formulas", "CH4O", "--out", str(table)]) == 0
    entry = json.loads(table.read_text())["entries"][0]
    assert entry["formula"] == "CH4O" and entry["best_smiles"] == "CO"
    assert entry["return"] == pytest.approx(29.5966, abs=1e-3) and entry["command"].startswith("molgym best-known")
