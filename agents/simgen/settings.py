"""SiMGen's settings: the limits on what it makes, the checks every setting passes before any work (each error
names the bad value and what is allowed), and the fragment a molecule is grown from."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from molgym.chem import element

#: Heavy elements SiMGen chooses from by default (QM9's).
DEFAULT_ELEMENTS: tuple[str, ...] = ("C", "N", "O", "F")

#: Largest number of heavy atoms one molecule may have (the kernel and the search are sized for small molecules).
MAX_HEAVY_ATOMS = 64

#: The element search's penalty per separate piece when growing from a fragment (``piece_penalty=None``).
FRAGMENT_PIECE_PENALTY = 50.0


def check_settings(*, n_atoms, elements: tuple[str, ...] | None, kernel_width, noise, repulsion, particles, steps,
                   batch_size, relax_steps, assignment_rounds, step_size, max_step, assignment_width, relax_fmax,
                   threads, element_prior, quench, prior_strength, cohesion, piece_penalty, cohesion_start) -> None:
    """Raise ``ValueError`` naming the first bad setting of :class:`~molgym.agents.simgen.SiMGen` (see its
    arguments; ``elements`` as a tuple, ``piece_penalty`` with its default resolved)."""
    if n_atoms is not None:
        if isinstance(n_atoms, bool) or not isinstance(n_atoms, (int, np.integer)) or n_atoms < 1:
            raise ValueError(f"n_atoms must be a positive integer (heavy atoms), got {n_atoms!r}")
        if n_atoms > MAX_HEAVY_ATOMS:
            raise ValueError(f"n_atoms={n_atoms} is more heavy atoms than SiMGen handles; allowed: 1..{MAX_HEAVY_ATOMS}")
    if elements is not None:
        if not elements:
            raise ValueError("elements is empty; give at least one heavy element, e.g. C,N,O")
        for sym in elements:
            if element(sym).number == 1:
                raise ValueError("elements lists heavy elements only; hydrogens are added by valence")
    _check_pair("kernel_width", kernel_width, strictly_positive=True)
    _check_pair("noise", noise, strictly_positive=False)
    _check_pair("repulsion", repulsion, strictly_positive=False)
    for name_, value, lo, hi in (("particles", particles, 1, 256), ("steps", steps, 1, 10000),
                                 ("batch_size", batch_size, 1, 100000), ("relax_steps", relax_steps, 0, 100000),
                                 ("assignment_rounds", assignment_rounds, 0, 1000)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise ValueError(f"{name_} must be an integer in {lo}..{hi}, got {value!r}")
    for name_, value in (("step_size", step_size), ("max_step", max_step), ("assignment_width", assignment_width),
                         ("relax_fmax", relax_fmax)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name_} must be a positive number, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    if element_prior not in ("reference", "uniform"):
        raise ValueError(f"element_prior must be 'reference' or 'uniform', got {element_prior!r}")
    if not (0 <= quench < 1):
        raise ValueError(f"quench must be in [0, 1), got {quench!r}")
    if not (isinstance(prior_strength, (int, float)) and prior_strength >= 0):
        raise ValueError(f"prior_strength must be >= 0, got {prior_strength!r}")
    if not (isinstance(cohesion, (int, float)) and not isinstance(cohesion, bool) and 0 <= cohesion <= 1):
        raise ValueError(f"cohesion must be a number in [0, 1] (0: off), got {cohesion!r}")
    if not (isinstance(piece_penalty, (int, float)) and not isinstance(piece_penalty, bool)
            and math.isfinite(piece_penalty) and piece_penalty >= 0):
        raise ValueError(f"piece_penalty must be a non-negative number (0: off), got {piece_penalty!r}")
    if not (isinstance(cohesion_start, (int, float)) and not isinstance(cohesion_start, bool)
            and 0 <= cohesion_start <= 1):
        raise ValueError(f"cohesion_start must be a fraction of the schedule in [0, 1], got {cohesion_start!r}")


def _check_pair(name: str, value, strictly_positive: bool) -> None:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (start, end), got {value!r}") from None
    ok = (a > 0 and b > 0) if strictly_positive else (a >= 0 and b >= 0)
    if not (ok and math.isfinite(a) and math.isfinite(b)):
        need = "positive" if strictly_positive else "non-negative"
        raise ValueError(f"{name} must be two {need} numbers (start, end), got {value!r}")


@dataclass
class _Job:
    """One molecule to make: heavy-atom count, element choices and hydrogen target."""

    n_heavy: int
    elements: tuple[int, ...]  # allowed atomic numbers of free atoms
    multiset: tuple[int, ...] | None  # exact heavy elements of free atoms (formula tasks), else None
    n_hydrogens: int | None  # exact total hydrogens (formula tasks), else None


def _load_fragment(fragment, center: bool) -> Atoms | None:
    """The heavy atoms of ``fragment`` (``ase.Atoms`` or a structure file), optionally centred at the origin."""
    if fragment is None:
        return None
    if not isinstance(fragment, Atoms):
        from molgym.io import read_structures

        fragment = read_structures(fragment)[0]
    for z in set(fragment.numbers.tolist()):
        element(int(z))  # unknown elements: clear error
    heavy = fragment[fragment.numbers > 1]
    if len(heavy) == 0:
        raise ValueError(f"fragment {fragment.get_chemical_formula()} has no heavy atoms to grow from")
    if len(heavy) > MAX_HEAVY_ATOMS:
        raise ValueError(f"fragment has {len(heavy)} heavy atoms; allowed: 1..{MAX_HEAVY_ATOMS}")
    out = Atoms(numbers=heavy.numbers.copy(), positions=heavy.positions.copy())
    if center:
        out.positions -= out.positions.mean(axis=0)
    return out
