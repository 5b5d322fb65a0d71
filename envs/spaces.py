"""What an agent sees and sends: the observation and action spaces, the padded observation, the parsed action.

Observations are fixed-size (SB3 needs that): a ``Dict`` of ``positions`` ``(max_atoms, 3)`` float32 Å,
``atomic_numbers`` ``(max_atoms,)`` int64, ``mask`` ``(max_atoms,)`` int8 (1 = placed atom) and ``bag``
``(len(elements),)`` int64 (atoms of each element left), padded with 0. An action is ``[element_index, x, y, z]``
(``Box(4,)`` float32) or ``{"element": k, "position": [x, y, z]}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from gymnasium import spaces

__all__ = ["CanvasView", "action_space", "observation", "observation_space", "parse_action"]


def observation_space(max_atoms: int, n_elements: int, max_z: int, workspace: float) -> spaces.Dict:
    """The ``Dict`` observation space (positions bounded by the workspace, atomic numbers by ``max_z``)."""
    w = np.float32(workspace)
    return spaces.Dict(
        {
            "positions": spaces.Box(-w, w, shape=(max_atoms, 3), dtype=np.float32),
            "atomic_numbers": spaces.Box(0, max_z, shape=(max_atoms,), dtype=np.int64),
            "mask": spaces.MultiBinary(max_atoms),
            "bag": spaces.Box(0, max_atoms, shape=(n_elements,), dtype=np.int64),
        }
    )


def action_space(n_elements: int, workspace: float) -> spaces.Box:
    """``Box(4,)``: ``[element_index, x, y, z]`` with the index in ``0..n_elements-1`` and the position in the
    workspace cube."""
    w = np.float32(workspace)
    low = np.array([0.0, -w, -w, -w], dtype=np.float32)
    high = np.array([n_elements - 1, w, w, w], dtype=np.float32)
    return spaces.Box(low, high, dtype=np.float32)


def observation(numbers: np.ndarray, positions: np.ndarray, bag: Mapping[str, int], elements: Sequence[str],
                max_atoms: int) -> dict[str, np.ndarray]:
    """The padded observation of a canvas (``numbers``, ``positions``) and the ``bag`` left."""
    n = len(numbers)
    padded_positions = np.zeros((max_atoms, 3), dtype=np.float32)
    padded_positions[:n] = positions
    padded_numbers = np.zeros(max_atoms, dtype=np.int64)
    padded_numbers[:n] = numbers
    mask = np.zeros(max_atoms, dtype=np.int8)
    mask[:n] = 1
    counts = np.array([bag.get(s, 0) for s in elements], dtype=np.int64)
    return {"positions": padded_positions, "atomic_numbers": padded_numbers, "mask": mask, "bag": counts}


def parse_action(action, elements: Sequence[str], workspace: float) -> tuple[int, np.ndarray] | str:
    """``(element_index, position)`` of an action, or a sentence saying why it is invalid (malformed, non-finite,
    an index outside the vocabulary, a position outside the workspace). Never raises."""
    if isinstance(action, Mapping):
        try:
            index = float(np.asarray(action["element"]).reshape(()))
            position = np.asarray(action["position"], dtype=float).reshape(3)
        except (KeyError, ValueError, TypeError) as err:
            return f"malformed action {action!r}: {err}"
    else:
        try:
            flat = np.asarray(action, dtype=float).reshape(-1)
        except (ValueError, TypeError) as err:
            return f"malformed action: {err}"
        if flat.shape != (4,):
            return f"action must be [element_index, x, y, z], got shape {np.shape(action)}"
        index, position = float(flat[0]), flat[1:].copy()
    if not (math.isfinite(index) and np.isfinite(position).all()):
        return f"action has non-finite values: {[index, *position.tolist()]}"
    k = math.floor(index + 0.5)
    if not 0 <= k < len(elements):
        return f"element index {index} is outside 0..{len(elements) - 1} ({', '.join(elements)})"
    if np.abs(position).max() > workspace + 1e-6:
        w = workspace
        return f"position {position.round(3).tolist()} is outside the workspace [-{w}, {w}]^3 Å"
    return k, position


class CanvasView:
    """The two arrays of a canvas, enough for :func:`molgym.reward.placement_problem` (no ``ase.Atoms`` built)."""

    __slots__ = ("numbers", "positions")

    def __init__(self, numbers: np.ndarray, positions: np.ndarray):
        self.numbers, self.positions = numbers, positions

    def __len__(self) -> int:
        return len(self.numbers)
