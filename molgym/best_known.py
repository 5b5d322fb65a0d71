"""Best-known returns: the return of the best known isomer of a formula, under a given potential.

The return of a whole episode telescopes: with ``r_k = -[E(canvas_k) - E(canvas_{k-1}) - E(atom_k)]`` and an
empty canvas of energy 0, the undiscounted return of building a molecule is its atomisation energy

    R = sum_i E(atom_i) - E(molecule)        (eV, under the potential that gives the rewards)

so the best return known for a formula is ``sum_i E(atom_i) - min E(isomer)`` over the isomers we know. The values
ship in ``molgym/data/best_known.json``, each with its provenance (potential name, model sha256 where the potential
is a model file, method, date, software versions). They are computed by :func:`compute_best_known` /
``molgym best-known --potential SPEC --formulas F1 F2 ...``:

1. take every QM9 molecule with the formula (QM9's B3LYP geometries), plus any candidate SMILES given
   (embedded in 3D with RDKit; QM9 stops at 9 heavy atoms, so larger formulas such as C7H8N2O2 need them);
2. evaluate them all with the potential (one batched call);
3. relax the ``top_k`` lowest in energy with ASE's BFGS on the potential (``fmax``, ``steps``);
4. the best relaxed energy gives the best-known return.

A value is only valid for the potential it was computed with: lookups match MACE models by the sha256 of the
model file and other potentials by name, and return ``None`` (unknown) otherwise, e.g. for an untrained in-memory
model or a potential nobody has run the computation for yet.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from molgym.chem import format_formula, parse_formula

__all__ = [
    "BEST_KNOWN_PATH",
    "BestKnown",
    "potential_identity",
    "best_known",
    "load_table",
    "compute_best_known",
    "update_table",
    "candidate_formula",
]

#: The shipped table of best-known returns.
BEST_KNOWN_PATH = Path(__file__).parent / "data" / "best_known.json"
_FORMAT = 1


@dataclass(frozen=True)
class BestKnown:
    """A best-known return and where it comes from."""

    formula: str
    value: float  # eV: the undiscounted episode return of the best known isomer
    potential: str
    model_sha256: str | None
    method: str
    date: str
    provenance: dict

    def as_info(self) -> dict:
        """A flat summary for ``info`` dicts."""
        return {
            "value": self.value,
            "potential": self.potential,
            "model_sha256": self.model_sha256,
            "method": self.method,
            "date": self.date,
        }


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def potential_identity(potential) -> tuple[str, str | None] | None:
    """``(name, model_sha256)`` identifying a potential's energies, or ``None`` when it cannot be identified.

    MACE potentials are identified by the sha256 of their model file (an in-memory model has no identity);
    xTB and PM6 by their method name (sha256 ``None``).
    """
    from molgym.potentials.registry import sha256_of

    path = getattr(potential, "path", None)
    if hasattr(potential, "model") and hasattr(potential, "r_max"):  # a MACEPotential
        if not path or not Path(path).is_file():
            return None
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_size, int(stat.st_mtime_ns))
        if key not in _SHA_CACHE:
            _SHA_CACHE[key] = sha256_of(path)
        return potential.name, _SHA_CACHE[key]
    name = getattr(potential, "name", None)
    if type(potential).__name__ in ("XTBPotential", "PM6Potential") and name:
        return str(name), None
    return None


def load_table(path: str | Path = BEST_KNOWN_PATH) -> list[dict]:
    """All entries of a best-known table (an empty list when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if data.get("format") != _FORMAT:
        raise ValueError(f"{path} has format {data.get('format')!r}; this molgym reads format {_FORMAT}")
    return list(data.get("entries", []))


@lru_cache(maxsize=4)
def _cached_table(path: str, mtime_ns: int) -> tuple[dict, ...]:
    return tuple(load_table(path))


def _matches(entry: dict, identity: tuple[str, str | None]) -> bool:
    name, sha = identity
    if sha is not None:
        return entry.get("model_sha256") == sha
    return entry.get("model_sha256") is None and entry.get("potential") == name


def best_known(formula: str, potential, path: str | Path = BEST_KNOWN_PATH) -> BestKnown | None:
    """The best-known return of ``formula`` under ``potential``, or ``None`` when none is known for it."""
    identity = potential_identity(potential)
    if identity is None:
        return None
    path = Path(path)
    if not path.is_file():
        return None
    key = format_formula(parse_formula(formula))
    for entry in _cached_table(str(path), path.stat().st_mtime_ns):
        if entry.get("formula") == key and _matches(entry, identity):
            return BestKnown(
                formula=key,
                value=float(entry["return"]),
                potential=entry["potential"],
                model_sha256=entry.get("model_sha256"),
                method=entry["method"],
                date=entry["date"],
                provenance=dict(entry),
            )
    return None


def _qm9_isomers(formula: str) -> list:
    from molgym.chem import bag_from_numbers
    from molgym.data.qm9 import load_qm9

    target = parse_formula(formula)
    qm9 = load_qm9()
    size = sum(target.values())
    rows = np.nonzero(qm9.sizes == size)[0]
    isomers = []
    for i in rows:
        lo, hi = qm9.offsets[i], qm9.offsets[i + 1]
        if bag_from_numbers(qm9.numbers[lo:hi]) == target:
            isomers.append(qm9.atoms(int(i)))
    return isomers


def _embed_candidates(formula: str, smiles: Sequence[str], seed: int = 0) -> list:
    """3D structures (RDKit ETKDG + MMFF, seeded) of candidate SMILES, each checked to have ``formula``."""
    from ase import Atoms
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from molgym.chem import bag_from_numbers

    target = parse_formula(formula)
    out = []
    for text in smiles:
        mol = Chem.MolFromSmiles(text)
        if mol is None:
            raise ValueError(f"candidate {text!r} is not a valid SMILES string")
        mol = Chem.AddHs(mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = seed
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise ValueError(f"RDKit could not embed candidate {text!r} in 3D")
        AllChem.MMFFOptimizeMolecule(mol)
        atoms = Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=mol.GetConformer().GetPositions())
        if bag_from_numbers(atoms.numbers) != target:
            raise ValueError(f"candidate {text!r} is {format_formula(bag_from_numbers(atoms.numbers))}, not {formula}")
        atoms.info.update(qm9_id=-1, smiles=text)
        out.append(atoms)
    return out


def _label(atoms) -> str:
    qm9_id = atoms.info.get("qm9_id", -1)
    return f"qm9 {qm9_id}" if qm9_id >= 0 else f"candidate {atoms.info.get('smiles')}"


def compute_best_known(
    formula: str,
    potential,
    top_k: int = 16,
    fmax: float = 0.05,
    steps: int = 300,
    progress: bool = True,
    candidates: Sequence[str] = (),
) -> dict:
    """Compute the best-known return of ``formula`` under ``potential`` from QM9's isomers (see module doc).

    Returns a table entry (a JSON-ready dict with provenance). Raises ``ValueError`` when QM9 has no isomer of
    the formula or the potential cannot be identified (its values could never be looked up again).
    """
    from ase.optimize import BFGS

    from molgym import __version__
    from molgym.potentials import load_potential
    from molgym.reward import isolated_atom_energies

    key = format_formula(parse_formula(formula))
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    potential = load_potential(potential)
    identity = potential_identity(potential)
    if identity is None:
        raise ValueError(
            f"cannot identify potential {potential!r} (an in-memory model has no file sha256); "
            "best-known returns are only stored for model files, xTB and PM6"
        )
    isomers = _qm9_isomers(key)
    n_qm9 = len(isomers)
    isomers += _embed_candidates(key, candidates)
    if not isomers:
        raise ValueError(
            f"QM9 has no isomer of {key} and no candidate SMILES were given; no best-known return can be computed"
        )
    if progress:
        print(f"[best-known] {key}: {n_qm9} QM9 isomers + {len(isomers) - n_qm9} candidates, single points with "
              f"{potential.name}", flush=True)
    from molgym.potentials.batching import energies_or_nan

    energies = np.nan_to_num(energies_or_nan(potential, isomers), nan=np.inf)  # failures sort last
    order = [int(i) for i in np.argsort(energies) if np.isfinite(energies[i])][:top_k]
    relaxed = []
    for rank, i in enumerate(order):
        atoms = isomers[i].copy()
        atoms.calc = potential.as_calculator()
        try:
            opt = BFGS(atoms, logfile=None)
            converged = bool(opt.run(fmax=fmax, steps=steps))
            energy = float(potential.energies([atoms])[0])
        except Exception as err:  # a failed relaxation drops this candidate, it does not stop the run
            if progress:
                print(f"[best-known]   {_label(isomers[i])}: relaxation failed ({err})", flush=True)
            continue
        relaxed.append((energy, i, converged, int(opt.nsteps)))
        if progress:
            print(
                f"[best-known]   {rank + 1}/{len(order)} {_label(isomers[i])}: "
                f"{energies[i]:.3f} -> {energy:.3f} eV ({opt.nsteps} steps, converged={converged})",
                flush=True,
            )
    if not relaxed:
        raise RuntimeError(f"no isomer of {key} could be relaxed with {potential.name}")
    energy, best, converged, nsteps = min(relaxed)
    numbers = isomers[best].numbers
    atom_energies = isolated_atom_energies(potential, numbers)
    value = float(sum(atom_energies[int(z)] for z in numbers) - energy)
    software = {"molgym": __version__}
    try:
        import importlib.metadata as md

        for dist in ("ase", "tblite", "mace-torch", "torch", "scine-sparrow"):
            try:
                software[dist] = md.version(dist)
            except md.PackageNotFoundError:
                pass
    except ImportError:
        pass
    return {
        "formula": key,
        "return": round(value, 6),
        "potential": identity[0],
        "model_sha256": identity[1],
        "method": (
            f"{n_qm9} QM9 isomers + {len(isomers) - n_qm9} RDKit-embedded candidate SMILES: single points of all "
            f"{len(isomers)}, BFGS relaxation (fmax={fmax} eV/A, max {steps} steps) of the {len(order)} lowest; "
            "return = sum E(atom) - min E(relaxed)"
        ),
        "candidates": list(candidates),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "best_qm9_id": int(isomers[best].info["qm9_id"]) if isomers[best].info["qm9_id"] >= 0 else None,
        "best_smiles": str(isomers[best].info["smiles"]),
        "best_energy": round(energy, 6),
        "best_relaxation_converged": converged,
        "best_relaxation_steps": nsteps,
        "n_isomers": len(isomers),
        "n_qm9_isomers": n_qm9,
        "n_relaxed": len(relaxed),
        "software": software,
        "command": (
            f"compute_best_known({key!r}, {identity[0]!r}, top_k={top_k}, fmax={fmax}, steps={steps}, "
            f"candidates={list(candidates)!r})"
        ),
    }


def update_table(entries: list[dict], path: str | Path = BEST_KNOWN_PATH) -> None:
    """Merge ``entries`` into the table at ``path`` (replacing same formula + potential), written atomically."""
    from molgym.io import write_json

    table = load_table(path)
    for new in entries:
        identity = (new["potential"], new.get("model_sha256"))
        table = [e for e in table if not (e.get("formula") == new["formula"] and _matches(e, identity))]
        table.append(new)
    table.sort(key=lambda e: (e["potential"], str(e.get("model_sha256")), e["formula"]))
    write_json(path, {"format": _FORMAT, "description": __doc__.strip().splitlines()[0], "entries": table})
    _cached_table.cache_clear()


def candidate_formula(smiles: str) -> str | None:
    """The molgym formula (Hill order) of a candidate SMILES; ``None`` for a charged species; ``ValueError`` for
    a string RDKit rejects."""
    from rdkit import Chem
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"candidate {smiles!r} is not a valid SMILES string")
    try:
        return format_formula(parse_formula(CalcMolFormula(mol)))
    except ValueError:  # charged species ("C7H8N2O2+") are not molgym formulas
        return None
