"""Trained agent checkpoints that ship with molgym, so the benchmark can roll out an agent without training first.

The checkpoints live in ``agents/checkpoints/`` (installed as package data of ``molgym.agents``), one SB3 ``.zip``
per formula task, listed in ``checkpoints/index.json`` with how each was made: agent, formula, potential (and the
sha256 of the MACE model its rewards came from), steps, seed, the ``molgym train`` command, the measured greedy
fraction of the best-known return and validity, and the file's sha256. A checkpoint is checked against that
sha256 before SB3 unpickles it.

The benchmark's ``rl_policy`` generator uses them with ``checkpoint="shipped"``
(``molgym bench --option rl_policy.checkpoint=shipped``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

__all__ = ["CHECKPOINT_DIR", "shipped_checkpoints", "shipped_checkpoint"]

#: Where the shipped checkpoints and their index live.
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


@lru_cache(maxsize=1)
def shipped_checkpoints() -> dict[str, dict]:
    """The index of shipped checkpoints: formula (Hill order) -> its entry (``file``, ``sha256``, provenance)."""
    index = CHECKPOINT_DIR / "index.json"
    if not index.is_file():
        return {}
    return {entry["formula"]: entry for entry in json.loads(index.read_text())["checkpoints"]}


def shipped_checkpoint(formula: str) -> Path:
    """Path of the shipped checkpoint for ``formula``, after checking its sha256.

    Raises:
        ValueError: no checkpoint ships for ``formula`` (the message lists those that do), or the file does not
            match the sha256 in the index.
    """
    from molgym.chem import format_formula, parse_formula
    from molgym.potentials.registry import check_sha256

    key = format_formula(parse_formula(formula))
    entries = shipped_checkpoints()
    if key not in entries:
        available = ", ".join(sorted(entries)) or "none"
        raise ValueError(
            f"no shipped agent checkpoint for {key}; shipped for: {available}. Train one with "
            f"`molgym train --formula {key} --out DIR` and pass checkpoint=DIR/model.zip"
        )
    entry = entries[key]
    path = CHECKPOINT_DIR / entry["file"]
    if not path.is_file():
        raise ValueError(f"shipped checkpoint {path} is missing from this installation")
    return check_sha256(path, entry["sha256"], "shipped checkpoint", "its index")
