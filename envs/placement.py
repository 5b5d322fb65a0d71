"""Random *valid* placements: a baseline policy, a test helper and the workload of the speed benchmark."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from molgym.reward import placement_problem

__all__ = ["random_valid_action"]


def random_valid_action(env, rng: np.random.Generator, max_tries: int = 100) -> np.ndarray:
    """A random action ``[element_index, x, y, z]`` that ``env`` accepts as a valid placement.

    The element is drawn among those left in the bag; the atom goes 0.95-1.6 Å (hydrogen and fluorine: 0.95-1.2 Å)
    from a random heavy atom of the canvas (any atom while there is no heavy one) in a random direction; draws
    that break a placement rule are repeated (up to ``max_tries``, after which the last draw is returned).
    All randomness comes from ``rng``.
    """
    env = env.unwrapped
    mask = env.action_masks()
    choices = np.flatnonzero(mask)
    if len(choices) == 0:
        raise ValueError("the bag is empty: the episode is over")
    index = int(rng.choice(choices))
    number = int(env.element_numbers[index])
    numbers, positions = env._numbers, env._positions
    canvas = Atoms(numbers=numbers, positions=positions)
    terminal = number in (1, 9)
    heavy = np.flatnonzero(~np.isin(numbers, (1, 9)))
    anchors = heavy if len(heavy) else np.arange(len(numbers))
    lo, hi = (0.95, 1.2) if terminal else (0.95, 1.6)
    limit = env.workspace
    position = np.zeros(3)
    for _ in range(max_tries):
        if len(numbers) == 0:
            position = rng.uniform(-0.5, 0.5, size=3)
        else:
            anchor = positions[int(rng.choice(anchors))]
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction) + 1e-12
            position = anchor + direction * rng.uniform(lo, hi)
        if np.all(np.abs(position) <= limit) and placement_problem(canvas, number, position) is None:
            break
    return np.array([index, *position], dtype=np.float32)
