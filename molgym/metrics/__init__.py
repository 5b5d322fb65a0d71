"""Metrics for generated 3D molecules, each defined in the module that computes it.

- :mod:`molgym.metrics.bonds`: EDM bond-order rule, atom and molecule stability;
- :mod:`molgym.metrics.chemistry`: RDKit bond perception, validity, connectivity, uniqueness, novelty vs QM9,
  diversity;
- :mod:`molgym.metrics.physics`: energy, return, fraction of best-known return, relaxation drop and RMSD,
  xTB referee;
- :mod:`molgym.metrics.shape`: distance of heavy atoms to a target point cloud;
- :mod:`molgym.metrics.stats`: 95 % confidence intervals;
- :mod:`molgym.metrics.evaluate`: all of them at once (``evaluate(structures, potential, ...)``).

Importing this package imports neither torch nor RDKit.
"""

from molgym.metrics.bonds import atom_stability, bond_order_matrix, is_stable
from molgym.metrics.evaluate import (
    HIGHER_IS_BETTER,
    METRICS,
    evaluate,
    molecule_records,
    register_metric,
    summarize_records,
)
from molgym.metrics.stats import summarize

__all__ = [
    "METRICS",
    "HIGHER_IS_BETTER",
    "atom_stability",
    "bond_order_matrix",
    "is_stable",
    "evaluate",
    "molecule_records",
    "register_metric",
    "summarize_records",
    "summarize",
]
