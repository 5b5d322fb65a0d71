"""How molgym stores a reference label on a structure: the energy in ``info["REF_energy"]`` (eV) and the forces in
``arrays["REF_forces"]`` (eV/Å), the keys mace-torch is given (``--energy_key``/``--forces_key``). The dataset
builder, the refinement loop and potential evaluation all read and write labels through this module."""

from __future__ import annotations

import numpy as np
from ase import Atoms

__all__ = ["ENERGY_KEY", "FORCES_KEY", "labelled_copy"]

ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"


def labelled_copy(atoms: Atoms, energy: float, forces: np.ndarray, **info) -> Atoms:
    """A copy of ``atoms`` (numbers, positions and ``info``) carrying the label, with ``info`` entries added."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions)
    out.info.update(atoms.info)
    out.info.update(info)
    out.info[ENERGY_KEY] = float(energy)
    out.arrays[FORCES_KEY] = np.asarray(forces, dtype=float)
    return out
