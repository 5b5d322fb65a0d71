"""Chemistry core: elements, formulas, bags of atoms, valences and radii.

A *bag* is the multiset of atoms still to place, held as an ordered ``dict`` from element symbol to a positive
count (``{"C": 7, "H": 8, "N": 2, "O": 2}``). Formulas are parsed strictly: molgym users type formulas into
task definitions and command lines, and a typo that silently became another molecule would waste a training run.

Everything here is pure Python (no torch, no RDKit) so that ``import molgym`` stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Element",
    "ELEMENTS",
    "SUPPORTED_SYMBOLS",
    "element",
    "atomic_number",
    "symbol",
    "parse_formula",
    "format_formula",
    "MAX_FORMULA_ATOMS",
    "bag_from_numbers",
    "bag_size",
    "bag_electrons",
    "covalent_radius",
    "valences",
]


@dataclass(frozen=True)
class Element:
    """One element molgym knows about.

    ``valences`` lists the neutral bonding valences, most common first (used by bond perception, stability
    metrics and hydrogen filling). ``covalent_radius`` is in Å (Cordero et al., Dalton Trans. 2008, sp3 C).
    """

    symbol: str
    number: int
    mass: float
    valences: tuple[int, ...]
    covalent_radius: float


# The organic elements of QM9 (H, C, N, O, F) and the other elements of MACE-OFF's organic set.
ELEMENTS: dict[str, Element] = {
    e.symbol: e
    for e in (
        Element("H", 1, 1.008, (1,), 0.31),
        Element("B", 5, 10.81, (3,), 0.84),
        Element("C", 6, 12.011, (4,), 0.76),
        Element("N", 7, 14.007, (3,), 0.71),
        Element("O", 8, 15.999, (2,), 0.66),
        Element("F", 9, 18.998, (1,), 0.57),
        Element("P", 15, 30.974, (3, 5), 1.07),
        Element("S", 16, 32.06, (2, 4, 6), 1.05),
        Element("Cl", 17, 35.45, (1,), 1.02),
        Element("Br", 35, 79.904, (1,), 1.20),
        Element("I", 53, 126.90, (1,), 1.39),
    )
}
SUPPORTED_SYMBOLS: tuple[str, ...] = tuple(ELEMENTS)
_BY_NUMBER: dict[int, Element] = {e.number: e for e in ELEMENTS.values()}

# Every symbol of the periodic table, to tell "not an element" from "an element molgym does not support".
_PERIODIC_TABLE = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y "
    "Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re "
    "Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg "
    "Cn Nh Fl Mc Lv Ts Og"
).split()

_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")

#: The most atoms a formula may have. molgym's tasks place atoms one per step, and observation sizes, episode
#: lengths and potential calls all grow with the bag: QM9 molecules have at most 29 atoms and the largest MolGym
#: task 19, so 100 leaves room for larger molecules while a slip such as ``C1000`` fails at once, with this bound
#: in the message, instead of starting an absurd run.
MAX_FORMULA_ATOMS = 100
_HUGE_COUNT = 10**9


def element(key: str | int) -> Element:
    """Look up an element by symbol (``"C"``) or atomic number (``6``); raise ``ValueError`` if unsupported."""
    if isinstance(key, (int, np.integer)):
        try:
            return _BY_NUMBER[int(key)]
        except KeyError:
            raise ValueError(
                f"atomic number {int(key)} is not supported; supported: "
                f"{sorted(_BY_NUMBER)} ({', '.join(SUPPORTED_SYMBOLS)})"
            ) from None
    if key in ELEMENTS:
        return ELEMENTS[key]
    if key in _PERIODIC_TABLE:
        raise ValueError(f"element {key!r} is not supported; supported: {', '.join(SUPPORTED_SYMBOLS)}")
    raise ValueError(f"{key!r} is not an element symbol; supported: {', '.join(SUPPORTED_SYMBOLS)}")


def atomic_number(sym: str) -> int:
    """Atomic number of a supported element symbol."""
    return element(sym).number


def symbol(number: int) -> str:
    """Element symbol of a supported atomic number."""
    return element(number).symbol


def covalent_radius(key: str | int) -> float:
    """Covalent radius in Å."""
    return element(key).covalent_radius


def valences(key: str | int) -> tuple[int, ...]:
    """Allowed neutral valences, most common first."""
    return element(key).valences


def parse_formula(formula: str) -> dict[str, int]:
    """Parse a chemical formula into a bag ``{symbol: count}`` in Hill order.

    Accepts formulas such as ``"C7H8N2O2"``, ``"CH4O"`` and ``"CH3OH"`` (repeated elements are summed). A symbol
    without a count means one atom, as in chemistry: ``"C7H"`` is C7H1 (43 electrons, a radical), not a
    shorthand for any other hydrogen count.
    Raises ``ValueError`` naming the problem for empty strings, lower-case symbols (``"c2h6"``), unknown or
    unsupported elements (``"Xx2"``), zero counts, any other character (``"C-1"``) and formulas of more than
    :data:`MAX_FORMULA_ATOMS` atoms (``"C1000"``).
    """
    if not isinstance(formula, str):
        raise TypeError(f"formula must be a string, got {type(formula).__name__}")
    text = formula.strip()
    if not text:
        raise ValueError("formula is empty; expected something like 'C7H8N2O2'")
    if text[0].islower():
        hint = re.sub(r"(^|\d)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
        raise ValueError(
            f"malformed formula {formula!r}: element symbols start with a capital letter "
            f"(did you mean {hint!r}?)"
        )
    bag: dict[str, int] = {}
    pos = 0
    for match in _TOKEN.finditer(text):
        if match.start() != pos:
            break
        sym, digits = match.group(1), match.group(2)
        element(sym)  # raises with the list of supported elements
        # a count of ten or more digits is over the size bound anyway; capping it keeps int() off huge strings
        count = 1 if not digits else (int(digits) if len(digits.lstrip("0")) < 10 else _HUGE_COUNT)
        if count == 0:
            raise ValueError(f"malformed formula {formula!r}: element {sym!r} has a count of zero")
        bag[sym] = bag.get(sym, 0) + count
        pos = match.end()
    if pos != len(text):
        raise ValueError(
            f"malformed formula {formula!r}: unexpected {text[pos]!r} at position {pos}; "
            "expected element symbols each followed by an optional positive count, e.g. 'C7H8N2O2'"
        )
    if sum(bag.values()) > MAX_FORMULA_ATOMS:
        size = sum(bag.values()) if sum(bag.values()) < _HUGE_COUNT else "over a billion"
        raise ValueError(
            f"formula {formula!r} has {size} atoms; molgym's atom-placement tasks take at most "
            f"{MAX_FORMULA_ATOMS} atoms (molgym.chem.MAX_FORMULA_ATOMS)"
        )
    return hill_order(bag)


def hill_order(bag: Mapping[str, int]) -> dict[str, int]:
    """Return ``bag`` ordered by the Hill system: C, then H, then the rest alphabetically (no C: alphabetical)."""
    keys = sorted(bag)
    if "C" in bag:
        keys = ["C"] + (["H"] if "H" in bag else []) + [k for k in keys if k not in ("C", "H")]
    return {k: int(bag[k]) for k in keys}


def format_formula(bag: Mapping[str, int]) -> str:
    """Format a bag as a Hill-order formula; the inverse of :func:`parse_formula`. Zero counts are dropped."""
    parts = []
    for sym, count in hill_order({k: v for k, v in bag.items() if v}).items():
        element(sym)
        if count < 0:
            raise ValueError(f"count of {sym!r} is negative ({count})")
        parts.append(sym if count == 1 else f"{sym}{count}")
    if not parts:
        raise ValueError("cannot format an empty bag")
    return "".join(parts)


def bag_from_numbers(numbers: Iterable[int]) -> dict[str, int]:
    """The bag (Hill order) of a sequence of atomic numbers, e.g. ``atoms.numbers``."""
    bag: dict[str, int] = {}
    for z in numbers:
        sym = symbol(int(z))
        bag[sym] = bag.get(sym, 0) + 1
    return hill_order(bag)


def bag_size(bag: Mapping[str, int]) -> int:
    """Number of atoms in a bag."""
    return int(sum(bag.values()))


def bag_electrons(bag: Mapping[str, int]) -> int:
    """Number of electrons of the neutral atoms in a bag (odd means a radical)."""
    return int(sum(atomic_number(s) * n for s, n in bag.items()))
