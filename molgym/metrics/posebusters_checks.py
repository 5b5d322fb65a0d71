"""PoseBusters' molecule checks on generated 3D molecules (the ``posebusters`` package, config ``"mol"``).

PoseBusters is the check set that 3D-generation papers now report beside validity: loading, RDKit sanitisation,
InChI conversion, all atoms connected, no radicals, bond lengths, bond angles and internal steric clashes
against RDKit's distance-geometry bounds, aromatic ring flatness, non-aromatic ring non-flatness, double-bond
flatness, and the internal energy against an ETKDG/UFF conformer ensemble (PoseBusters seeds it: the result
is deterministic).

Convention: the checks run on molgym's own perceived molecule (:func:`molgym.metrics.chemistry.perceive`:
bonds from distances, bond orders from RDKit for a neutral molecule, hydrogens explicit with their 3D
positions). A structure that molgym cannot perceive as a valid molecule has no bond orders to check: it
counts as failing PoseBusters as a whole, and is left out of the per-check pass rates, which are over the valid
molecules. So the all-checks rate (``posebusters``) is over every generated molecule and never above validity.

``posebusters`` and pandas are imported inside the function, so importing this module is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["CONFIG", "posebusters_checks"]

#: PoseBusters configuration of the checks (the molecule-only set, with the internal-energy check).
CONFIG = "mol"


def posebusters_checks(mols: Sequence) -> list[dict[str, bool] | None]:
    """PoseBusters' checks for each RDKit molecule in ``mols`` (``None`` entries: not perceivable, no checks).

    Each dict maps PoseBusters' check name (``"bond_lengths"``, ``"internal_energy"``, ...) to whether it
    passed; a check that PoseBusters could not evaluate counts as failed. All molecules go through PoseBusters
    in one call.
    """
    present = [m for m in mols if m is not None]
    if not present:
        return [None] * len(mols)
    import logging
    import sys

    import rdkit
    from posebusters import PoseBusters

    logging.getLogger("posebusters").setLevel(logging.ERROR)
    # PoseBusters routes RDKit's log through the Python handler ``rdkit.log_handler`` and points it back at the
    # sys.stderr of the moment after each check. If that stream has since been closed (a replaced stderr, as under
    # pytest's capture), its next ``setStream`` flushes the closed stream, raises, and the InChI and energy checks
    # fail. Point it at the current stderr first, by assignment (``setStream`` would flush the closed one).
    handler = getattr(rdkit, "log_handler", None)
    if handler is not None:
        handler.stream = sys.stderr
    frame = PoseBusters(config=CONFIG).bust(list(present))
    if len(frame) != len(present):
        raise RuntimeError(f"PoseBusters returned {len(frame)} rows for {len(present)} molecules")
    rows = iter(frame.to_dict(orient="records"))
    return [None if m is None else {str(k): _passed(v) for k, v in next(rows).items()} for m in mols]


def _passed(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(value)
