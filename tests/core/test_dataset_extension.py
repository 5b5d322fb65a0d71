"""Growing the reward potential's training data while the held-out files stay byte-identical (issue 22, item 3):
``extra_train_molecules`` (more QM9 train molecules, own random stream, own shards, resumable) and
``extra_train_xyz`` (structures labelled elsewhere, appended to train.xyz). The builds are real (GFN2-xTB)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from ase import Atoms

from molgym.data import dataset as ds
from molgym.data.dataset_shards import plan_shards
from molgym.data.labels import labelled_copy
from molgym.io import write_xyz

HELD_OUT = ("valid", "test", "nonqm9", "isomers")

# sha256 of plan_shards' QM9, isomer and special shards and test ranks, recorded with the code before
# extra_train_molecules existed (the non-QM9 shards are left out: they follow nonqm9_smiles.txt line by line)
PLAN_SHA256 = {
    "tiny": "ba1ed3453d87e78ac73371cc9b1ee44294ce26429c8690debec9a731937eecbe",
    "default": "abc6700b0165ca47dd9861c76d19b94a66d0ef4810bf0fb50ef19fe11d8b1748",
}


def _fingerprint(config) -> str:
    shards, ranks = plan_shards(config)
    kept = [[s.name, s.kind, s.split, list(s.items)] for s in shards if s.kind != "nonqm9"]
    return hashlib.sha256(json.dumps([kept, sorted(ranks.items())]).encode()).hexdigest()


def _read(path):
    import ase.io

    return ase.io.read(path, index=":")


def _tiny(**changes):
    return replace(ds.SIZES["tiny"], **changes)


# --- the plan -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", sorted(PLAN_SHA256))
def test_plan_without_extras_is_unchanged(size):
    """The held-out molecules every model card was measured on are drawn as before."""
    assert _fingerprint(ds.SIZES[size]) == PLAN_SHA256[size]


def test_extra_train_molecules_add_shards_and_change_nothing_else():
    base, base_ranks = plan_shards(_tiny())
    grown, ranks = plan_shards(_tiny(extra_train_molecules=7))
    extra = [s for s in grown if s.name.startswith("qm9-train-extra-")]
    assert [s.name for s in grown[: len(base)]] == [s.name for s in base]
    assert [s.items for s in grown[: len(base)]] == [s.items for s in base] and ranks == base_ranks
    assert grown[len(base):] == extra  # last in the plan, so last in train.xyz
    assert [s.name for s in extra] == ["qm9-train-extra-0000", "qm9-train-extra-0001", "qm9-train-extra-0002"]
    assert all(s.kind == "qm9" and s.split == "train" for s in extra)
    assert [len(s.items) for s in extra] == [3, 3, 1]

    from molgym.data.qm9 import load_qm9

    qm9 = load_qm9()
    rows = [r for s in extra for r in s.items]
    taken = {r for s in base if s.kind in ("qm9", "isomers") for r in s.items}
    assert len(set(rows)) == 7 and not set(rows) & taken
    assert all(ds.split_of(int(qm9.ids[r]), 0) == "train" for r in rows)
    # growing keeps every full extra shard, so a rerun reuses it
    more = [s for s in plan_shards(_tiny(extra_train_molecules=10))[0] if s.name.startswith("qm9-train-extra-")]
    assert [s.items for s in more[:2]] == [s.items for s in extra[:2]]
    assert set(extra[2].items) <= set(more[2].items)


def test_extra_train_molecules_are_checked():
    with pytest.raises(ValueError, match="extra_train_molecules must be >= 0, got -1"):
        _tiny(extra_train_molecules=-1).validate()
    with pytest.raises(ValueError, match=r"extra_train_molecules=10000000 is more than.*maximum "
                                         r"extra_train_molecules=\d+"):
        plan_shards(_tiny(extra_train_molecules=10_000_000))


def test_cli_dataset_rejects_bad_extra_train_molecules(tmp_path, capsys):
    from molgym.cli import main

    out = tmp_path / "never"
    assert main(["potential", "dataset", "--out", str(out), "--size", "tiny", "--extra-train-molecules", "-1"]) == 2
    assert "extra_train_molecules must be >= 0, got -1" in capsys.readouterr().err
    assert main(["potential", "dataset", "--out", str(out), "--size", "tiny",
                 "--extra-train-molecules", "10000000"]) == 2
    assert "maximum extra_train_molecules=" in capsys.readouterr().err
    assert not out.exists()


# --- harvested structures: checked before any work ------------------------------------------------------------
def _labelled(symbols="CH4", **info) -> Atoms:
    atoms = Atoms(symbols, positions=np.random.default_rng(0).normal(size=(len(Atoms(symbols)), 3)) * 1.5)
    return labelled_copy(atoms, -100.0, np.zeros((len(atoms), 3)), **info)


def _bad(kind: str) -> Atoms:
    atoms = _labelled()
    if kind == "no energy":
        del atoms.info["REF_energy"]
    elif kind == "no forces":
        del atoms.arrays["REF_forces"]
    elif kind == "sulfur":
        atoms = _labelled("CH3SH")
    elif kind == "test molecule":
        atoms.info["molecule_id"] = str(next(i for i in range(1, 1000) if ds.split_of(i, 0) == "test"))
    elif kind == "nonqm9":
        atoms.info["molecule_id"] = "nonqm9:caffeine"
    return atoms


@pytest.mark.parametrize("kind, message", [
    ("no energy", "no finite info\\['REF_energy'\\]"),
    ("no forces", "no finite arrays\\['REF_forces'\\]"),
    ("sulfur", "holds S; a dataset allows only H, C, N, O, F"),
    ("test molecule", "which is in the test split"),
    ("nonqm9", "held-out non-QM9 molecule"),
])
def test_bad_harvested_structures_fail_before_any_work(tmp_path, kind, message):
    path = tmp_path / "harvest.xyz"
    write_xyz(path, [_labelled(), _labelled(), _bad(kind)])
    out = tmp_path / "data"
    with pytest.raises(ValueError, match=f"harvest.xyz structure 2 .*{message}"):
        ds.build_dataset(out, "tiny", workers=1, progress=False, extra_train_xyz=[path])
    assert not out.exists()


# --- real builds ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny dataset without extras, built once; tests grow copies of it."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    ds.build_dataset(out, "tiny", workers=2, progress=False)
    return out


def _copy(base, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(base, out)
    return out


def _markers(out) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.json")}


@pytest.mark.slow
def test_extra_train_molecules_grow_train_and_keep_held_out_files(tiny_base, tmp_path):
    out = _copy(tiny_base, tmp_path)
    before = {name: (out / f"{name}.xyz").read_bytes() for name in ("train",) + HELD_OUT}
    base_train = _read(out / "train.xyz")
    finished = _markers(out)

    manifest = ds.build_dataset(out, _tiny(extra_train_molecules=2), workers=2, progress=False)
    for name in HELD_OUT:
        assert (out / f"{name}.xyz").read_bytes() == before[name], name
    assert (out / "train.xyz").read_bytes().startswith(before["train"])
    train = _read(out / "train.xyz")
    for a, b in zip(base_train, train[: len(base_train)], strict=True):
        assert a.info["molecule_id"] == b.info["molecule_id"] and np.array_equal(a.positions, b.positions)
    added = train[len(base_train):]
    per_molecule: dict[str, set] = {}
    for a in added:
        per_molecule.setdefault(a.info["molecule_id"], set()).add(a.info["category"])
        assert a.info["split"] == "train" and a.arrays["REF_forces"].shape == (len(a), 3)
    assert len(per_molecule) == 2
    for cats in per_molecule.values():  # labelled like every other train molecule
        assert cats == {"equilibrium", "thermal", "build", "misplaced", "close_contact"}
    assert manifest["settings"]["extra_train_molecules"] == 2
    assert manifest["counts"]["train"]["total"] == len(train)
    assert manifest["counts"]["train"]["molecules"] == len({a.info["molecule_id"] for a in train})
    assert json.loads((out / "settings.json").read_text())["extra_train_molecules"] == 2
    assert all(_markers(out)[k] == v for k, v in finished.items())  # nothing relabelled ...
    assert set(_markers(out)) - set(finished) == {"qm9-train-extra-0000.json"}  # ... only the new shard

    # grow again: the partly filled extra shard (2 of 3) is labelled again, the rest is reused
    grown = _markers(out)
    ds.build_dataset(out, _tiny(extra_train_molecules=4), workers=2, progress=False)
    now = _markers(out)
    assert {k for k in now if k not in grown or now[k] != grown[k]} == {"qm9-train-extra-0000.json",
                                                                        "qm9-train-extra-0001.json"}
    for name in HELD_OUT:
        assert (out / f"{name}.xyz").read_bytes() == before[name], name
    train = _read(out / "train.xyz")
    assert len({a.info["molecule_id"] for a in train[len(base_train):]}) == 4

    # any other setting still refuses the directory
    with pytest.raises(ValueError, match="only extra_train_molecules may change"):
        ds.build_dataset(out, _tiny(extra_train_molecules=4, train_molecules=7), workers=1, progress=False)
    # back to none: the base train.xyz again
    ds.build_dataset(out, "tiny", workers=1, progress=False)
    assert (out / "train.xyz").read_bytes() == before["train"]


@pytest.mark.slow
def test_cli_appends_harvested_structures_to_train(tiny_base, tmp_path, capsys):
    from molgym.cli import main

    out = _copy(tiny_base, tmp_path)
    before = {name: (out / f"{name}.xyz").read_bytes() for name in ("train",) + HELD_OUT}
    base_train = _read(out / "train.xyz")
    # a refinement round's labelled.xyz keeps its category ("hal"); structures without one become "harvested"
    hal = [labelled_copy(a, a.info["REF_energy"], a.arrays["REF_forces"], category="hal", sigma_selected=0.1)
           for a in base_train if a.info["category"] == "thermal"][:2]
    for a in hal:
        del a.info["molecule_id"]
    bare = _labelled("H2O")  # no category, no molecule id
    refine = tmp_path / "round-01-labelled.xyz"
    other = tmp_path / "random-search.xyz"
    write_xyz(refine, hal)
    write_xyz(other, [bare])

    assert main(["potential", "dataset", "--out", str(out), "--size", "tiny", "--workers", "1",
                 "--extra-train-xyz", str(refine), "--extra-train-xyz", str(other)]) == 0
    assert "train.xyz includes 2 structures of" in capsys.readouterr().out
    for name in HELD_OUT:
        assert (out / f"{name}.xyz").read_bytes() == before[name], name
    assert (out / "train.xyz").read_bytes().startswith(before["train"])
    added = _read(out / "train.xyz")[len(base_train):]
    assert [a.info["category"] for a in added] == ["hal", "hal", "harvested"]
    assert [a.info["molecule_id"] for a in added] == ["harvested:round-01-labelled:0",
                                                      "harvested:round-01-labelled:1", "harvested:random-search:0"]
    assert np.allclose(added[0].arrays["REF_forces"], hal[0].arrays["REF_forces"])
    assert added[0].info["REF_energy"] == pytest.approx(hal[0].info["REF_energy"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra_train_xyz"] == [
        {"path": str(refine), "sha256": hashlib.sha256(refine.read_bytes()).hexdigest(), "structures": 2,
         "categories": {"hal": 2}},
        {"path": str(other), "sha256": hashlib.sha256(other.read_bytes()).hexdigest(), "structures": 1,
         "categories": {"harvested": 1}},
    ]
    assert manifest["counts"]["train"]["hal"] == 2 and manifest["counts"]["train"]["harvested"] == 1
    assert manifest["counts"]["train"]["total"] == len(base_train) + 3
