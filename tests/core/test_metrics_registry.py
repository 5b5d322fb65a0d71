"""One declaration per metric: the summaries, results.json and the report are read off the registry."""

from __future__ import annotations

import dataclasses

import pytest
from ase.build import molecule

from molgym.benchmark import report
from molgym.metrics import REGISTRY, Metric, get_metric, register_metric
from molgym.metrics.evaluate import molecule_records, summarize_records
from molgym.metrics.registry import headline_metrics, plotted_metrics, table_columns


@pytest.fixture
def registered():
    """Names registered by a test, removed afterwards so the registry stays as shipped for the other tests."""
    names: list[str] = []
    yield names
    for name in names:
        REGISTRY.pop(name, None)


def test_the_builtin_declarations_give_the_report_its_columns_headline_metrics_and_plots():
    # the report's per-task column order, the overall table's metrics and the plots, as they were before the
    # registry replaced the separate tables (a change here changes every report)
    assert [(m.name, m.header) for m in table_columns()] == [
        ("valid_connected", "valid+conn."), ("plausible", "plausible"), ("posebusters", "PB-valid"),
        ("atom_stability", "atom stab."), ("molecule_stable", "mol. stab."), ("uniqueness", "unique"),
        ("novelty", "novel"), ("diversity", "diversity"), ("distinct_valid", "distinct valid"),
        ("return_per_atom", "return/atom (eV)"), ("fraction_best_known", "frac. best"),
        ("relax_energy_drop", "relax ΔE (eV)"), ("relax_rmsd", "relax RMSD (Å)"),
        ("referee_return_per_atom", "xTB ret./atom"), ("referee_fraction_best_known", "xTB frac. best"),
        ("referee_relax_energy", "xTB relax ΔE med / p90 (kcal/mol)"),
        ("referee_relax_rmsd", "xTB relax RMSD med (Å)"),
        ("referee_graph_kept", "graph kept"), ("shape_distance", "shape dist. (Å)")]
    assert {m.name for m in headline_metrics()} == {
        "valid_connected", "plausible", "posebusters", "atom_stability", "molecule_stable", "uniqueness", "novelty",
        "return_per_atom", "fraction_best_known", "referee_fraction_best_known", "relax_rmsd",
        "referee_relax_energy", "referee_graph_kept", "shape_distance"}
    assert [m.name for m in plotted_metrics()] == ["valid_connected", "molecule_stable", "return_per_atom",
                                                   "relax_rmsd"]
    assert [m.name for m in REGISTRY.values() if m.aggregate == "median"] == ["referee_relax_energy",
                                                                             "referee_relax_rmsd"]
    lower = {m.name for m in REGISTRY.values() if not m.higher_is_better}
    assert lower == {"energy", "relax_energy_drop", "relax_rmsd", "referee_relax_energy", "referee_relax_rmsd",
                     "shape_distance"}
    assert all(m.compute is None for m in REGISTRY.values())  # built-ins are computed in molecule_records
    assert all(name == m.name for name, m in REGISTRY.items())


def test_declarations_are_frozen_and_looked_up_with_a_clear_error():
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY["valid"].description = "something else"  # type: ignore[misc]
    assert get_metric("valid") is REGISTRY["valid"]
    with pytest.raises(KeyError, match="unknown metric 'validity'.*valid_connected"):
        get_metric("validity")


@pytest.mark.parametrize("fields, message", [
    (dict(kind="ratio"), "kind must be one of"),
    (dict(kind="fraction", aggregate="median"), "only per-molecule values have a median"),
    (dict(aggregate="mode"), "aggregate must be"),
    (dict(fmt="f4"), "fmt must be one of"),
    (dict(p90=True), "p90 is shown beside a median"),
    (dict(headline=True), "needs a header"),
    (dict(compute=3), "compute must be a function"),
])
def test_inconsistent_declarations_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Metric("x", "a metric", **fields)


def test_register_metric_refuses_a_taken_name_a_set_kind_or_no_function(registered):
    with pytest.raises(ValueError, match="already exists"):
        register_metric("valid", "again", lambda atoms: True, kind="fraction")
    with pytest.raises(ValueError, match="kind must be 'value' or 'fraction'"):
        register_metric("n_sets", "a set metric", lambda atoms: 1.0, kind="set")
    with pytest.raises(ValueError, match="compute must be a function"):
        register_metric("nothing", "not a function", None)  # type: ignore[arg-type]
    assert not {"n_sets", "nothing"} & set(REGISTRY)


def test_a_registered_metric_is_summarised_tabled_and_defined(registered):
    registered += ["heavy_fraction", "has_oxygen", "extent"]
    heavy = register_metric("heavy_fraction", "fraction of non-hydrogen atoms",
                            lambda atoms: float((atoms.numbers > 1).mean()) if len(atoms) else None)
    oxygen = register_metric("has_oxygen", "contains an oxygen atom", lambda atoms: 8 in atoms.numbers,
                             kind="fraction", higher_is_better=False)
    extent = register_metric("extent", "largest interatomic distance", lambda atoms: None, unit="Å")
    assert REGISTRY["heavy_fraction"] is heavy and heavy.compute is not None
    # defaults: header from the name (and unit), percent for fractions, not headline, not plotted
    assert [(m.header, m.fmt) for m in (heavy, oxygen, extent)] == [
        ("heavy fraction", "f3"), ("has oxygen", "pct"), ("extent (Å)", "f3")]
    assert not (heavy.headline or heavy.plotted or oxygen.higher_is_better)

    records = molecule_records([molecule("H2O"), molecule("CH4")], posebusters=False)
    assert [r["heavy_fraction"] for r in records] == pytest.approx([1 / 3, 1 / 5])
    assert [r["has_oxygen"] for r in records] == [True, False]
    summary = summarize_records(records)
    assert summary["heavy_fraction"]["mean"] == pytest.approx((1 / 3 + 1 / 5) / 2)
    assert summary["has_oxygen"]["mean"] == 0.5 and "median" not in summary["has_oxygen"]  # a fraction
    assert "extent" not in summary  # never applied: no summary, no column

    results = {"leaderboard": {"t": {"g": {**summary, "cost": {}}}}}
    header, rows = report._table_rows(results, "t")
    assert header[-4:] == ["heavy fraction", "has oxygen", "CPU s/valid", "calls/valid"]
    assert rows[0][header.index("heavy fraction")].startswith("0.267 ±")
    assert rows[0][header.index("has oxygen")].startswith("50.0% ±")


def test_a_registered_headline_metric_ranked_by_its_median_reaches_the_overall_table(registered):
    registered.append("strain_like")
    register_metric("strain_like", "a long-tailed value", lambda atoms: 1.0, aggregate="median", p90=True,
                    fmt="f1", header="strain med / p90", headline=True)
    entry = {"mean": 3.0, "ci95": [1.0, 5.0], "n": 3, "median": 2.0, "p90": 4.5}
    assert report._cell(entry, REGISTRY["strain_like"]) == "2.0 / 4.5"
    header, rows = report._overall_rows({"overall": {"g": {"tasks": 1, "strain_like": 2.0}}})
    assert header == ["generator", "tasks", "strain med", "CPU s/valid", "calls/valid"]
    assert rows == [["g", "1", "2.0", "–", "–"]]
