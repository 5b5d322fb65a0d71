"""benchmarks/skeleton_bonds.py on a real GFN2-xTB: a stretched C=C and the script's refusals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "skeleton_bonds.py"


def _script():
    spec = importlib.util.spec_from_file_location("skeleton_bonds", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_stretched_double_bond_reads_long_against_its_minimum():
    """Ethylene with its C=C placed at 1.50 Å: the row says C=C, the relaxed length is a double bond's, and the
    two-carbon canvas the second carbon was placed on prefers a shorter bond than 1.50 Å."""
    import numpy as np
    from ase.build import molecule

    from molgym.potentials import load_potential

    ethylene = molecule("C2H4")  # C, C, then the four H
    axis = ethylene.positions[1] - ethylene.positions[0]
    axis /= np.linalg.norm(axis)
    shift = (1.50 - ethylene.get_distance(0, 1)) * axis
    for i in (1, 4, 5):  # the second carbon and its hydrogens
        ethylene.positions[i] += shift
    assert ethylene.get_distance(0, 1) == pytest.approx(1.50)
    rows = _script().bond_rows(ethylene, load_potential("xtb"))
    assert [r["type"] for r in rows] == ["C=C"]
    row = rows[0]
    assert row["placed"] == pytest.approx(1.50)
    assert 1.29 < row["relaxed"] < 1.37
    assert 0.9 <= row["preferred"] < 1.45


def test_refuses_missing_files_and_files_without_a_greedy_frame(tmp_path, capsys):
    from ase.build import molecule
    from ase.io import write

    script = _script()
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "nowhere.xyz")])
    assert "no such file" in capsys.readouterr().err
    sampled = molecule("CH4")
    sampled.info["mode"] = "sampled"
    write(tmp_path / "sampled.xyz", sampled, format="extxyz")
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "sampled.xyz")])
    assert "mode=greedy" in capsys.readouterr().err
