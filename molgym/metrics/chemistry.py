"""Chemistry metrics through RDKit: bond perception, validity, connectivity, SMILES, uniqueness, novelty,
diversity.

Definitions (each is computed per molecule or per set, and documented where it is computed):

- **bond perception** (:func:`to_rdkit`): connectivity from interatomic distances (two atoms are bonded when
  closer than their standard single-bond length + 0.10 Å, :func:`molgym.metrics.bonds.connectivity_cutoff`), then
  bond orders and formal charges from RDKit's ``rdDetermineBonds.DetermineBondOrders`` for a total charge of 0.
- **valid**: perception succeeds and ``Chem.SanitizeMol`` accepts the molecule, every fragment has net formal
  charge 0 (so a detached proton cannot balance an anion) and no atom has radical electrons (charge-separated
  forms such as nitro groups and QM9's zwitterions are allowed).
- **connected**: the perceived bond graph is one fragment.
- **SMILES**: RDKit canonical SMILES of the heavy-atom graph, without stereochemistry (so that conformers and
  enantiomers of one molecule count as the same molecule).
- **uniqueness**: distinct SMILES / valid molecules.
- **novelty**: fraction of valid molecules whose SMILES is not the SMILES of any QM9 molecule (all 130,831,
  canonicalised the same way, cached on disk).
- **diversity**: mean pairwise Tanimoto distance (1 - similarity) of Morgan fingerprints (radius 2, 2048 bits)
  among the distinct valid molecules.

RDKit is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from ase import Atoms

from molgym.metrics.bonds import connectivity

__all__ = [
    "Perception",
    "perceive",
    "to_rdkit",
    "canonical_smiles",
    "smiles_from_string",
    "uniqueness",
    "novelty",
    "qm9_smiles",
    "diversity",
]

_QM9_SMILES_VERSION = 1
#: Bound on RDKit's bond-order search, so a pathological structure is declared invalid instead of hanging.
_MAX_BOND_ORDER_ITERATIONS = 200_000


def _quiet_rdkit() -> None:
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")


def _connectivity_mol(atoms: Atoms):
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    mol = Chem.RWMol()
    for z in atoms.numbers:
        mol.AddAtom(Chem.Atom(int(z)))
    for i, j in zip(*np.nonzero(np.triu(connectivity(atoms)))):
        mol.AddBond(int(i), int(j), Chem.BondType.SINGLE)
    conf = Chem.Conformer(len(atoms))
    for i, p in enumerate(atoms.positions):
        conf.SetAtomPosition(i, Point3D(float(p[0]), float(p[1]), float(p[2])))
    mol.AddConformer(conf, assignId=True)
    return mol.GetMol()


def to_rdkit(atoms: Atoms):
    """An RDKit molecule (explicit H, 3D conformer, bond orders) for ``atoms``, or ``None`` if not valid.

    See the module docstring for the perception rule.
    """
    return perceive(atoms).mol


class Perception:
    """Result of perceiving one structure: ``mol`` (or ``None``), ``valid``, ``connected``, ``fragments``,
    ``smiles`` (``None`` unless valid) and ``error`` (why it is invalid)."""

    __slots__ = ("mol", "valid", "connected", "fragments", "smiles", "error")

    def __init__(self, mol, valid: bool, connected: bool, fragments: int, smiles: str | None, error: str | None):
        self.mol = mol
        self.valid = valid
        self.connected = connected
        self.fragments = fragments
        self.smiles = smiles
        self.error = error


def perceive(atoms: Atoms) -> Perception:
    """Perceive bonds, check validity and connectivity, and compute the canonical SMILES of one structure."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    _quiet_rdkit()
    if len(atoms) == 0:
        return Perception(None, False, False, 0, None, "empty structure")
    mol = _connectivity_mol(atoms)
    fragments = len(Chem.GetMolFrags(mol))
    try:
        rdDetermineBonds.DetermineBondOrders(mol, charge=0, embedChiral=False, maxIterations=_MAX_BOND_ORDER_ITERATIONS)
        Chem.SanitizeMol(mol)
    except Exception as err:  # RDKit raises ValueError, AtomValenceException, ... for impossible bonding
        return Perception(None, False, fragments == 1, fragments, None, f"{type(err).__name__}: {err}")
    if any(Chem.GetFormalCharge(f) != 0 for f in Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)):
        return Perception(None, False, fragments == 1, fragments, None, "a fragment has a net formal charge")
    if any(atom.GetNumRadicalElectrons() for atom in mol.GetAtoms()):
        return Perception(None, False, fragments == 1, fragments, None, "radical (unpaired electrons)")
    return Perception(mol, True, fragments == 1, fragments, canonical_smiles(mol), None)


def canonical_smiles(mol) -> str:
    """Canonical SMILES of an RDKit molecule: hydrogens implicit, no stereochemistry."""
    from rdkit import Chem

    text = Chem.MolToSmiles(mol, isomericSmiles=False)
    # Round trip through the parser so that SMILES from 3D structures and from strings are canonicalised alike.
    return smiles_from_string(text) or text


def smiles_from_string(smiles: str) -> str | None:
    """Canonicalise a SMILES string the same way as :func:`canonical_smiles`; ``None`` if RDKit rejects it."""
    from rdkit import Chem

    _quiet_rdkit()
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


def uniqueness(smiles: Sequence[str | None]) -> float | None:
    """Distinct SMILES / valid molecules (``None`` entries are invalid molecules and are skipped)."""
    valid = [s for s in smiles if s is not None]
    return len(set(valid)) / len(valid) if valid else None


@lru_cache(maxsize=1)
def qm9_smiles() -> frozenset[str]:
    """Canonical SMILES of all of QM9, computed once (~10 s) and cached under :func:`molgym.data.qm9.cache_dir`."""
    from molgym.data.qm9 import cache_dir, load_qm9
    from molgym.io import write_text

    path = Path(cache_dir()) / f"qm9_canonical_smiles_v{_QM9_SMILES_VERSION}.txt"
    if path.is_file():
        lines = path.read_text().splitlines()
        if lines and lines[0] == f"# molgym qm9 canonical smiles v{_QM9_SMILES_VERSION}":
            return frozenset(lines[1:])
    canon = {smiles_from_string(s) for s in load_qm9().smiles}
    canon.discard(None)
    write_text(path, f"# molgym qm9 canonical smiles v{_QM9_SMILES_VERSION}\n" + "\n".join(sorted(canon)) + "\n")
    return frozenset(canon)


def novelty(smiles: Sequence[str | None], reference: frozenset[str] | None = None) -> float | None:
    """Fraction of valid molecules whose SMILES is not in ``reference`` (default: all of QM9)."""
    valid = [s for s in smiles if s is not None]
    if not valid:
        return None
    reference = qm9_smiles() if reference is None else reference
    return float(np.mean([s not in reference for s in valid]))


def diversity(smiles: Sequence[str | None]) -> float | None:
    """Mean pairwise Tanimoto distance of Morgan fingerprints (r=2, 2048 bits) over distinct valid SMILES.

    ``None`` when fewer than two distinct valid molecules exist.
    """
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    _quiet_rdkit()
    distinct = sorted({s for s in smiles if s is not None})
    mols = [m for m in (Chem.MolFromSmiles(s) for s in distinct) if m is not None]
    if len(mols) < 2:
        return None
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [gen.GetFingerprint(m) for m in mols]
    dists = []
    for i in range(1, len(fps)):
        sims = DataStructs.BulkTanimotoSimilarity(fps[i], fps[:i])
        dists.extend(1.0 - s for s in sims)
    return float(np.mean(dists))
