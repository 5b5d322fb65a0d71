"""Formula parsing, formatting and element tables."""

import pytest

from molgym import chem


@pytest.mark.parametrize(
    "formula, bag",
    [
        ("C7H8N2O2", {"C": 7, "H": 8, "N": 2, "O": 2}),
        ("CH4O", {"C": 1, "H": 4, "O": 1}),
        ("CH3OH", {"C": 1, "H": 4, "O": 1}),  # repeated elements are summed
        ("H2O", {"H": 2, "O": 1}),
        ("OH2", {"H": 2, "O": 1}),
        ("C2H2O2", {"C": 2, "H": 2, "O": 2}),
        ("CHClF2", {"C": 1, "H": 1, "Cl": 1, "F": 2}),
        (" C3H8O ", {"C": 3, "H": 8, "O": 1}),
    ],
)
def test_parse_formula(formula, bag):
    parsed = chem.parse_formula(formula)
    assert parsed == bag
    assert list(parsed) == list(chem.hill_order(bag))  # Hill order


@pytest.mark.parametrize("formula", ["C7H8N2O2", "CH4O", "C3H5NO3", "C4H7N", "H2O", "CClF3", "H3N", "C10H16N2O"])
def test_round_trip(formula):
    assert chem.format_formula(chem.parse_formula(formula)) == formula
    bag = chem.parse_formula(formula)
    assert chem.parse_formula(chem.format_formula(bag)) == bag


@pytest.mark.parametrize(
    "formula, message",
    [
        ("C-1", "unexpected '-'"),
        ("Xx2", "'Xx' is not an element symbol"),
        ("", "empty"),
        ("   ", "empty"),
        ("c2h6", "did you mean 'C2H6'"),
        ("C0H4", "count of zero"),
        ("U2", "'U' is not supported"),
        ("C2 H6", "unexpected ' '"),
        ("C2H6)", "unexpected ')'"),
    ],
)
def test_malformed_formulas(formula, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        chem.parse_formula(formula)


def test_non_string_formula():
    with pytest.raises(TypeError):
        chem.parse_formula(42)


def test_format_errors():
    with pytest.raises(ValueError, match="empty"):
        chem.format_formula({})
    with pytest.raises(ValueError, match="negative"):
        chem.format_formula({"C": -1})
    assert chem.format_formula({"O": 1, "H": 2, "C": 0}) == "H2O"


def test_element_tables():
    assert [chem.atomic_number(s) for s in "HCNOF"] == [1, 6, 7, 8, 9]
    assert chem.symbol(8) == "O"
    assert chem.valences("C") == (4,) and chem.valences(7) == (3,) and chem.valences("O") == (2,)
    assert chem.covalent_radius("C") == pytest.approx(0.76)
    assert chem.covalent_radius("H") < chem.covalent_radius("F") < chem.covalent_radius("C")
    with pytest.raises(ValueError, match="atomic number 2 is not supported"):
        chem.element(2)


def test_bag_helpers():
    bag = chem.bag_from_numbers([1, 6, 1, 8, 1, 1])
    assert bag == {"C": 1, "H": 4, "O": 1} and list(bag) == ["C", "H", "O"]
    assert chem.bag_size(bag) == 6
    assert chem.bag_electrons(bag) == 18
    assert chem.bag_electrons({"C": 1, "H": 3}) % 2 == 1  # methyl radical


def test_hill_order_without_carbon_is_alphabetical():
    assert chem.format_formula(chem.parse_formula("NH3")) == "H3N"


def test_implicit_count_is_one():
    assert chem.parse_formula("C7H") == {"C": 7, "H": 1}  # 'C7H' is C7H1, not a typo for C7H8
    assert chem.format_formula(chem.parse_formula("C7H1")) == "C7H"


def test_formula_size_is_bounded():
    """Atom-placement tasks place atoms one by one: absurd sizes are refused, naming the bound, in one place."""
    limit = chem.MAX_FORMULA_ATOMS
    assert limit == 100
    assert chem.bag_size(chem.parse_formula(f"C{limit - 2}H2")) == limit
    for formula in ("C1000", f"C{limit}H", "C" + "9" * 5000):
        with pytest.raises(ValueError, match=rf"at most {limit} atoms"):
            chem.parse_formula(formula)
