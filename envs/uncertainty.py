"""The uncertainty of a step, from a committee potential's members (docs/uncertainty.md).

When the potential provides uncertainties (:mod:`molgym.potentials.committee`), each evaluation also gives the
committee members' energies. The uncertainty of a step is the calibrated spread of the members' rewards for it,
reported as ``info["uncertainty"]``, optionally subtracted from the reward (``uncertainty_penalty``) or used to end
the episode (``uncertainty_threshold``). :class:`CommitteeUncertainty` is a mixin of
:class:`~molgym.envs.base.MolecularEnv`; it reads ``potential``, ``reports_uncertainty`` and ``_canvas_dev`` (the
members' ``E(canvas)`` minus ``E(canvas)``).
"""

from __future__ import annotations

import math

import numpy as np

from molgym.potentials.base import Potential

__all__ = ["CommitteeUncertainty", "check_uncertainty_options", "check_uncertainty_support"]


def check_uncertainty_options(penalty: float, threshold: float | None) -> tuple[float, float | None]:
    """Validate ``uncertainty_penalty`` (finite, >= 0) and ``uncertainty_threshold`` (``None`` or finite > 0)."""
    try:
        penalty = float(penalty)
    except (TypeError, ValueError):
        raise ValueError(f"uncertainty_penalty must be a number >= 0 (eV per eV), got {penalty!r}") from None
    if not np.isfinite(penalty) or penalty < 0:
        raise ValueError(f"uncertainty_penalty must be a finite number >= 0 (eV per eV), got {penalty!r}")
    if threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"uncertainty_threshold must be None or a number > 0 (eV), got {threshold!r}") from None
        if not np.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"uncertainty_threshold must be None or a finite number > 0 (eV), got {threshold!r}")
    return penalty, threshold


def check_uncertainty_support(potential: Potential, penalty: float, threshold: float | None) -> bool:
    """Whether ``potential``'s evaluations give committee energies; ``ValueError`` when ``penalty`` or
    ``threshold`` asks for uncertainties that it does not provide."""
    reports = potential.supports("committee")
    if (penalty > 0 or threshold is not None) and not reports:
        raise ValueError(
            f"uncertainty_penalty={penalty} / uncertainty_threshold={threshold} "
            f"need a potential with uncertainties, and {potential.name} has none (use potential='default' "
            "with its shipped committee, or a CommitteeMACEPotential)"
        )
    return reports


class CommitteeUncertainty:
    """The committee deviations of the canvas and the uncertainty of each step."""

    potential: Potential
    reports_uncertainty: bool
    _canvas_dev: np.ndarray | None

    def _zero_dev(self) -> np.ndarray:
        return np.zeros(self.potential.committee_size)

    def _step_uncertainty(
        self, energy: float | None, members: np.ndarray | None, evaluated: bool
    ) -> tuple[np.ndarray | None, float]:
        """The committee deviations of the new canvas and the step's uncertainty (eV).

        The step's reward under member k is ``-(E_k(after) - E_k(before) - E(atom))``; its uncertainty is the
        calibrated standard deviation of that over the members. A step that places the first atom is exact (0).
        """
        if not self.reports_uncertainty:
            return None, 0.0
        if not evaluated:
            return self._zero_dev(), 0.0
        if members is None:
            raise RuntimeError(f"{self.potential.name} provides uncertainties but returned no committee energies")
        dev_after = np.asarray(members, dtype=float) - float(energy)
        spread = dev_after - self._canvas_dev
        spread -= spread.mean()  # the population standard deviation (np.std), written out: it runs every step
        sigma = float(self.potential.uncertainty_scale * math.sqrt(float(spread @ spread) / len(spread)))
        return dev_after, sigma
