"""Bags of atoms for the environments: sampling random bags and checking they can form a closed-shell molecule."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

from molgym.chem import bag_electrons, hill_order, valences

__all__ = ["is_closed_shell_feasible", "bag_contains", "bag_subtract", "sample_bag"]

_MAX_BOND_ORDER = 3


def _degrees_feasible(degrees: list[int]) -> bool:
    """Necessary conditions for a connected molecular graph with these valences and bond orders 1..3.

    Every atom bonds (valence >= 1), the bond-order sum is even (each bond has two ends), there are enough bond
    ends to connect all atoms (sum >= 2(n - 1)), and no atom needs more bond ends than the others can offer
    (``v_i <= sum_{j != i} min(3, v_j)``, which also rules out a quadruple bond in C2).
    """
    n = len(degrees)
    if n < 2 or min(degrees) < 1:
        return False
    total = sum(degrees)
    if total % 2 or total < 2 * (n - 1):
        return False
    capped = [min(_MAX_BOND_ORDER, d) for d in degrees]
    capped_total = sum(capped)
    return all(d <= capped_total - c for d, c in zip(degrees, capped))


def is_closed_shell_feasible(bag: Mapping[str, int]) -> bool:
    """Whether ``bag`` can form a neutral closed-shell molecule: an even electron count and a valence-feasible
    connected graph (see :func:`_degrees_feasible`) for some choice of each atom's neutral valence."""
    counts = {s: int(n) for s, n in bag.items() if n}
    if sum(counts.values()) < 2 or bag_electrons(counts) % 2:
        return False
    choices = []
    for sym, n in counts.items():
        options = valences(sym)
        # Atoms of one element with several valences (P, S): try every multiset of valences.
        choices.append([list(c) for c in itertools.combinations_with_replacement(options, n)])
    for combo in itertools.islice(itertools.product(*choices), 4096):
        if _degrees_feasible([d for part in combo for d in part]):
            return True
    return False


def bag_contains(bag: Mapping[str, int], part: Mapping[str, int]) -> bool:
    """Whether every atom of ``part`` is in ``bag``."""
    return all(bag.get(s, 0) >= n for s, n in part.items())


def bag_subtract(bag: Mapping[str, int], part: Mapping[str, int]) -> dict[str, int]:
    """``bag - part`` (Hill order, zero counts dropped); ``ValueError`` when ``part`` is not in ``bag``."""
    if not bag_contains(bag, part):
        raise ValueError(f"{dict(part)} is not contained in the bag {dict(bag)}")
    return hill_order({s: n - part.get(s, 0) for s, n in bag.items() if n - part.get(s, 0) > 0})


def sample_bag(
    template: Mapping[str, int],
    size_range: tuple[int, int],
    rng: np.random.Generator,
    max_tries: int = 1000,
) -> dict[str, int] | None:
    """A random closed-shell-feasible bag, or ``None`` after ``max_tries`` rejections.

    The size is uniform in ``size_range`` (inclusive) and the composition multinomial with the template's element
    fractions; bags that cannot form a closed-shell molecule are rejected and drawn again.
    """
    symbols = list(template)
    p = np.array([template[s] for s in symbols], dtype=float)
    p /= p.sum()
    lo, hi = size_range
    for _ in range(max_tries):
        n = int(rng.integers(lo, hi + 1))
        counts = rng.multinomial(n, p)
        bag = hill_order({s: int(c) for s, c in zip(symbols, counts) if c})
        if is_closed_shell_feasible(bag):
            return bag
    return None
