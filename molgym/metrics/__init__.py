"""Metrics for generated 3D molecules, each defined in the module that computes it.

- :mod:`molgym.metrics.bonds`: EDM bond-order rule, atom and molecule stability;
- :mod:`molgym.metrics.chemistry`: RDKit bond perception, validity, connectivity, uniqueness, novelty vs QM9,
  diversity;
- :mod:`molgym.metrics.physics`: energy, return, fraction of best-known return, relaxation drop and RMSD,
  xTB referee;
- :mod:`molgym.metrics.shape`: distance of heavy atoms to a target point cloud;
- :mod:`molgym.metrics.stats`: 95 % confidence intervals;
- :mod:`molgym.metrics.registry`: one declaration per metric (definition, kind, unit, direction, how the
  leaderboards rank it and the report shows it), :data:`REGISTRY`, :func:`register_metric`;
- :mod:`molgym.metrics.evaluate`: all of them at once (``evaluate(structures, potential, ...)``).

Importing this package imports neither torch nor RDKit.
"""

from molgym.metrics.bonds import atom_stability, bond_order_matrix, is_stable
from molgym.metrics.evaluate import evaluate, molecule_records, summarize_records
from molgym.metrics.registry import REGISTRY, Metric, get_metric, register_metric
from molgym.metrics.stats import summarize

__all__ = [
    "REGISTRY",
    "Metric",
    "get_metric",
    "atom_stability",
    "bond_order_matrix",
    "is_stable",
    "evaluate",
    "molecule_records",
    "register_metric",
    "summarize_records",
    "summarize",
]
