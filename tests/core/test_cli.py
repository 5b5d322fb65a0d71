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
