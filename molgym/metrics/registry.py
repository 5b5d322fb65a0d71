"""One declaration per metric: what it means, how it is summarised, ranked and shown.

Every fact about a metric that more than one place needs — its definition, unit, kind, bounds, direction, the
statistic the leaderboards rank it by, whether it is a headline metric, its report column and plot — is stated
once, in its :class:`Metric` in :data:`REGISTRY`. The evaluation summaries
(:func:`molgym.metrics.evaluate.summarize_records`), ``results.json`` (its ``metrics`` definitions and the
``overall`` headline figures) and the report (its tables, plots and definitions) are all read off this
registry, so a metric cannot be described in one place and left out of another.

:data:`REGISTRY` is ordered: that order is the order of the report's columns and of the definitions. The
built-in metrics are computed together in :func:`molgym.metrics.evaluate.molecule_records` (they share one
bond perception); :func:`register_metric` adds a metric with its own ``compute`` function of one molecule.

Importing this module imports neither torch nor RDKit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ase import Atoms

__all__ = ["Metric", "REGISTRY", "KINDS", "FORMATS", "register_metric", "get_metric", "table_columns",
           "headline_metrics", "plotted_metrics"]

#: What one value of a metric is: ``"fraction"`` a 0/1 outcome per molecule (Wilson interval), ``"value"`` a real
#: number per molecule (Student-t interval, median, p90), ``"set"`` a property of one job's set of molecules
#: (averaged over seeds in the leaderboards), ``"count"`` a number pooled over seeds.
KINDS = ("fraction", "value", "set", "count")
#: How the report prints a figure: ``"pct"`` percent with one decimal, ``"f1"``/``"f2"``/``"f3"`` that many
#: decimals, ``"int"`` a whole number.
FORMATS = ("pct", "f1", "f2", "f3", "int")

Kind = Literal["fraction", "value", "set", "count"]
Aggregate = Literal["mean", "median"]
Compute = Callable[[Atoms], float | bool | None]


@dataclass(frozen=True)
class Metric:
    """Everything molgym needs to know about one metric, besides how the built-ins are computed.

    - ``name``: key in per-molecule records, summaries and ``results.json``.
    - ``description``: one-line definition (report and ``results.json``'s ``metrics``).
    - ``kind``: one of :data:`KINDS`; decides how values are summarised and pooled.
    - ``unit``: unit of a value (``""`` for fractions and counts); the default column header of a registered
      metric carries it.
    - ``higher_is_better``: direction for rankings and the plots' arrows.
    - ``bounds``: range that clips confidence intervals (a per-molecule fraction such as atom stability, the set
      metrics); ``None``: no clipping beyond the kind's own.
    - ``aggregate``: the statistic the leaderboards rank by: ``"mean"`` (with its 95 % interval) or ``"median"``
      (long-tailed quantities such as strain); the overall table averages the tasks' values of it.
    - ``p90``: the per-task cell also shows the 90th percentile (``median / p90``).
    - ``fmt``: how the report prints the figure, one of :data:`FORMATS`.
    - ``header``: the report's column header; ``None``: the metric has no column (it is still summarised,
      stored and defined).
    - ``headline``: the metric is in ``results.json``'s ``overall`` and the report's overall table.
    - ``plotted``: the HTML report has a bar chart of it per task and generator.
    - ``compute``: for registered metrics, the function of one ``ase.Atoms`` that gives its value (a number, a
      bool for fractions, or ``None`` where it does not apply); ``None`` for the built-ins.
    """

    name: str
    description: str
    kind: Kind = "value"
    unit: str = ""
    higher_is_better: bool = True
    bounds: tuple[float, float] | None = None
    aggregate: Aggregate = "mean"
    p90: bool = False
    fmt: str = "f3"
    header: str | None = None
    headline: bool = False
    plotted: bool = False
    compute: Compute | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"metric {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.aggregate not in ("mean", "median"):
            raise ValueError(f"metric {self.name!r}: aggregate must be 'mean' or 'median', got {self.aggregate!r}")
        if self.aggregate == "median" and self.kind != "value":
            raise ValueError(f"metric {self.name!r}: only per-molecule values have a median (kind 'value'), "
                             f"got kind {self.kind!r}")
        if self.fmt not in FORMATS:
            raise ValueError(f"metric {self.name!r}: fmt must be one of {FORMATS}, got {self.fmt!r}")
        if self.p90 and self.aggregate != "median":
            raise ValueError(f"metric {self.name!r}: p90 is shown beside a median (aggregate='median')")
        if self.headline and self.header is None:
            raise ValueError(f"metric {self.name!r}: a headline metric needs a header for the overall table")
        if self.compute is not None and not callable(self.compute):
            raise ValueError(f"metric {self.name!r}: compute must be a function of one ase.Atoms, got "
                             f"{self.compute!r}")


#: Every metric, in the order of the report's columns and definitions.
REGISTRY: dict[str, Metric] = {m.name: m for m in (
    Metric("matches_task", "composition equals the task's bag (formula/shape/bag tasks)", "fraction"),
    Metric("valid", "RDKit sanitises the perceived molecule; every fragment neutral, no radicals", "fraction"),
    Metric("connected", "bond graph is one fragment", "fraction"),
    Metric("valid_connected", "valid and one fragment", "fraction", fmt="pct", header="valid+conn.",
           headline=True, plotted=True),
    Metric("plausible", "no fused atoms (closer than 0.6 x their covalent radii or 0.6 Å): only plausible "
           "molecules get energy-based scores", "fraction", fmt="pct", header="plausible", headline=True),
    Metric("posebusters", "passes every PoseBusters molecule check (config 'mol', on molgym's perceived molecule "
           "with explicit H); molecules that are not valid fail", "fraction", fmt="pct", header="PB-valid",
           headline=True),
    Metric("atom_stability", "fraction of atoms whose EDM bond orders sum to their valence", "value",
           bounds=(0.0, 1.0), fmt="pct", header="atom stab.", headline=True),
    Metric("molecule_stable", "every atom EDM-stable", "fraction", fmt="pct", header="mol. stab.", headline=True,
           plotted=True),
    Metric("uniqueness", "distinct SMILES / valid", "set", bounds=(0.0, 1.0), fmt="pct", header="unique",
           headline=True),
    Metric("novelty", "valid molecules whose SMILES is not in QM9", "set", bounds=(0.0, 1.0), fmt="pct",
           header="novel", headline=True),
    Metric("diversity", "mean pairwise Tanimoto distance (Morgan r=2) of distinct valid molecules", "set",
           bounds=(0.0, 1.0), fmt="f2", header="diversity"),
    Metric("distinct_valid", "distinct valid molecules (canonical SMILES, heavy-atom graph, no stereo), pooled "
           "over seeds", "count", fmt="int", header="distinct valid"),
    Metric("energy", "total energy under the benchmark potential (eV)", unit="eV", higher_is_better=False),
    Metric("return", "atomisation energy sum E(atom) - E(mol) under the potential (eV)", unit="eV"),
    Metric("return_per_atom", "return / number of atoms (eV/atom)", unit="eV/atom", header="return/atom (eV)",
           headline=True, plotted=True),
    Metric("fraction_best_known", "return / best-known return for the formula", fmt="pct", header="frac. best",
           headline=True),
    Metric("relax_energy_drop", "E(generated) - E(relaxed) under the potential (eV)", unit="eV",
           higher_is_better=False, header="relax ΔE (eV)"),
    Metric("relax_rmsd", "heavy-atom RMSD (Å) between generated and relaxed, after alignment", unit="Å",
           higher_is_better=False, header="relax RMSD (Å)", headline=True, plotted=True),
    Metric("referee_return_per_atom", "GFN2-xTB atomisation energy per atom on a sample (eV/atom)", unit="eV/atom",
           header="xTB ret./atom"),
    Metric("referee_fraction_best_known", "GFN2-xTB return / GFN2-xTB best-known return for the formula, on the "
           "referee sample (the score no potential error can inflate)", fmt="pct", header="xTB frac. best",
           headline=True),
    Metric("referee_relax_energy", "GFN2-xTB relaxation energy E(generated) - E(relaxed) (kcal/mol) of a seeded "
           "sample of valid, plausible molecules (BFGS to 0.05 eV/Å); median and 90th percentile", unit="kcal/mol",
           higher_is_better=False, aggregate="median", p90=True, fmt="f1",
           header="xTB relax ΔE med / p90 (kcal/mol)", headline=True),
    Metric("referee_relax_rmsd", "heavy-atom RMSD (Å) between generated and GFN2-xTB-relaxed, same sample",
           unit="Å", higher_is_better=False, aggregate="median", header="xTB relax RMSD med (Å)"),
    Metric("referee_graph_kept", "bond graph (distance rule, H included) unchanged by the GFN2-xTB relaxation, "
           "same sample", "fraction", fmt="pct", header="graph kept", headline=True),
    Metric("shape_distance", "Chamfer distance (Å) of heavy atoms to the target cloud after alignment", unit="Å",
           higher_is_better=False, header="shape dist. (Å)", headline=True),
)}


def register_metric(name: str, description: str, compute: Compute, kind: Literal["value", "fraction"] = "value",
                    higher_is_better: bool = True, *, unit: str = "", header: str | None = None,
                    **options) -> Metric:
    """Add a per-molecule metric and return its declaration.

    ``compute(atoms)`` gives a number (``kind="value"``) or a bool (``kind="fraction"``), or ``None`` when it
    does not apply. From then on :func:`~molgym.metrics.evaluate.molecule_records`, the summaries,
    ``results.json`` and the report's per-task tables carry it, with its description among the definitions. The
    column header defaults to the name with spaces (and the unit); the display format to percent for fractions.
    ``options`` are further :class:`Metric` fields (``bounds``, ``aggregate``, ``headline``, ``plotted``, ...).

    Register it at import of a module that every benchmark worker imports (or run with ``--workers 1``): worker
    processes start fresh.
    """
    if name in REGISTRY:
        raise ValueError(f"metric {name!r} already exists; choose another name")
    if kind not in ("value", "fraction"):
        raise ValueError(f"kind must be 'value' or 'fraction', got {kind!r}")
    if not callable(compute):
        raise ValueError(f"compute must be a function of one ase.Atoms, got {compute!r}")
    if header is None:
        header = name.replace("_", " ") + (f" ({unit})" if unit else "")
    options.setdefault("fmt", "pct" if kind == "fraction" else "f3")
    metric = Metric(name, description, kind, unit=unit, higher_is_better=bool(higher_is_better), header=header,
                    compute=compute, **options)
    REGISTRY[name] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The declaration of metric ``name``; a clear error names the known ones if there is none."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(REGISTRY)}") from None


def table_columns() -> list[Metric]:
    """The metrics with a column in the report's per-task tables, in column order."""
    return [m for m in REGISTRY.values() if m.header is not None]


def headline_metrics() -> list[Metric]:
    """The headline metrics (``results.json``'s ``overall``, the report's overall table), in column order."""
    return [m for m in REGISTRY.values() if m.headline]


def plotted_metrics() -> list[Metric]:
    """The metrics the HTML report draws a bar chart of, in column order."""
    return [m for m in REGISTRY.values() if m.plotted]
