"""The settings every task shares, their defaults and their checks (bad values raise ``ValueError`` naming them).

:data:`molgym.envs.base.SHARED_SETTINGS` and :func:`molgym.envs.base.check_settings` stay beside
:class:`~molgym.envs.base.MolecularEnv`: they are read off its signature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from molgym.chem import element

__all__ = [
    "DEFAULT_INVALID_REWARD",
    "DEFAULT_MIN_REWARD",
    "DEFAULT_WORKSPACE",
    "check_elements",
    "check_reset_options",
    "check_reward_settings",
    "task_vocabulary",
]

#: Reward of an invalid placement (eV); the episode ends with it.
DEFAULT_INVALID_REWARD = -1.0
#: Floor of a valid placement's reward (eV), as in MolGym: a step that scores worse gets this and ends the
#: episode. Equal to the invalid reward, so that no placement scores worse than an invalid one.
DEFAULT_MIN_REWARD = -1.0
#: Half-width (Å) of the cube ``[-w, w]^3`` in which atoms may be placed.
DEFAULT_WORKSPACE = 8.0


def check_reward_settings(workspace: float, invalid_reward: float, min_reward: float | None) -> float | None:
    """Validate ``workspace`` (> 0 Å), ``invalid_reward`` (finite) and ``min_reward`` (finite or ``None``); return
    the floor as a float (or ``None`` for no floor)."""
    if not np.isfinite(workspace) or workspace <= 0:
        raise ValueError(f"workspace must be a positive number of Å, got {workspace!r}")
    if not np.isfinite(invalid_reward):
        raise ValueError(f"invalid_reward must be a finite number, got {invalid_reward!r}")
    if min_reward is None:
        return None
    try:
        floor = float(min_reward)
    except (TypeError, ValueError):
        floor = math.nan
    if not math.isfinite(floor):
        raise ValueError(f"min_reward must be a finite number of eV or None (no floor), got {min_reward!r}")
    return floor


def check_elements(elements: Sequence[str]) -> tuple[str, ...]:
    """The action's element vocabulary as canonical symbols: non-empty and distinct (unknown symbols raise)."""
    symbols = [element(s).symbol for s in elements]  # raises for unknown symbols
    if len(set(symbols)) != len(symbols) or not symbols:
        raise ValueError(f"elements must be a non-empty list of distinct symbols, got {symbols}")
    return tuple(symbols)


def task_vocabulary(elements: Sequence[str] | None, needed: Sequence[str], what: str) -> list[str]:
    """A task's element vocabulary: ``elements`` when given (it must hold every element ``what`` needs, else
    ``ValueError``), otherwise the ``needed`` elements in their order."""
    vocabulary = list(elements) if elements is not None else list(needed)
    missing = [s for s in needed if s not in vocabulary]
    if missing:
        raise ValueError(f"elements={vocabulary} misses {missing}, which {what} needs")
    return vocabulary


def check_reset_options(options: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming any ``reset(options=...)`` key the environment does not understand."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(
            f"unknown reset option(s) {sorted(unknown)}; allowed: {', '.join(repr(a) for a in allowed)}"
        )
