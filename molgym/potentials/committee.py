"""Energy uncertainty for a MACE potential: a last-layer committee evaluated in the same forward pass.

Why a *last-layer* committee: training K full MACE models costs K times the training (hours on the CPU molgym's
model was trained on). HAL (Hyperactive learning, van der Oord et al.) uses a committee of *linear* ACE models
drawn around the fitted parameters; this is the same idea on top of a MACE body. The body (the shipped model) is
kept fixed and shared; each of ``K`` members is a linear head on its per-atom invariant features, fitted to the
body's residual against the reference (``E_ref - E_model``) on one bootstrap resample of the training set.

- **Features.** Per atom, the scalar node features of all interaction layers (what :meth:`MACEPotential.descriptors`
  gives) minus those of the isolated atom of the same element, placed in the block of the atom's element; a
  structure's feature vector is the sum over its atoms. A lone atom therefore has zero features: its energy is
  exact (the E0s are the reference's), and so is its uncertainty (0).
- **Members.** ``E_k = E_model + Φ·(w_k - w̄)``: the committee is *centred on the model*, so the energies (and
  every reward) stay exactly those of the shipped model; only the spread is new.
- **Uncertainty.** ``σ = scale · std_k(E_k)``, with ``scale`` fitted on the validation set so that the RMS of σ
  equals the RMS energy error there (the raw bootstrap spread measures how well the heads are determined, not
  how wrong the body is, so it needs this calibration).
- **One batched pass.** Energies and member energies come from the one MACE forward pass of the structures (the
  features are its ``node_feats``); the K heads are one matrix product.

The heads are saved as a plain ``.npz`` (no pickle), small enough to ship next to the model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from molgym.potentials.mace import MACEPotential

__all__ = ["CommitteeHeads", "CommitteeMACEPotential", "fit_committee", "calibrate", "HALCalculator"]


@dataclass
class CommitteeHeads:
    """The K linear heads of a last-layer committee and how to build their features.

    Attributes:
        z_table: atomic numbers, in the order of the model's element blocks.
        isolated: ``(n_species, n_node_features)`` node features of each isolated atom (subtracted per atom).
        feature_scale: ``(n_features,)`` divisor of each structure feature (standardisation for the ridge fit).
        weights: ``(K, n_features)`` member weights, already centred (their mean is zero).
        scale: calibration factor applied to the committee's standard deviation.
        meta: provenance (members, ridge, seed, data, calibration figures).
        mean: ``(n_features,)`` the members' mean weights (the fitted residual correction); used only by a
            potential built with ``correct=True``.
    """

    z_table: list[int]
    isolated: np.ndarray
    feature_scale: np.ndarray
    weights: np.ndarray
    scale: float = 1.0
    meta: dict = field(default_factory=dict)
    mean: np.ndarray | None = None

    @property
    def members(self) -> int:
        return int(self.weights.shape[0])

    def save(self, path: str | os.PathLike) -> None:
        """Write the heads to ``path`` (``.npz``, atomically)."""
        import json

        from molgym.io import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, z_table=np.array(self.z_table, dtype=np.int64), isolated=self.isolated,
                         feature_scale=self.feature_scale, weights=self.weights,
                         scale=np.array(float(self.scale)), meta=np.array(json.dumps(self.meta)),
                         mean=np.zeros(self.weights.shape[1]) if self.mean is None else self.mean)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CommitteeHeads:
        """Read heads written by :meth:`save` (plain arrays; nothing is unpickled)."""
        import json

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"committee file {str(path)!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(z_table=[int(z) for z in data["z_table"]], isolated=data["isolated"].astype(np.float64),
                           feature_scale=data["feature_scale"].astype(np.float64),
                           weights=data["weights"].astype(np.float64), scale=float(data["scale"]),
                           meta=json.loads(str(data["meta"])),
                           mean=data["mean"].astype(np.float64) if "mean" in data.files else None)
        except (KeyError, ValueError, OSError) as err:
            raise ValueError(f"{str(path)!r} is not a molgym committee file: {err}") from err


class CommitteeMACEPotential(MACEPotential):
    """A :class:`MACEPotential` with a last-layer committee: energies unchanged, plus calibrated uncertainties.

    Args:
        model: MACE model file or loaded model (the shared body).
        committee: a :class:`CommitteeHeads` or the path of its ``.npz`` file.
        correct: add the committee's mean (the residual fitted on the training set) to every energy and force:
            the energies are then no longer the model's own, but closer to the reference where the body has a
            systematic, linear-in-features error (e.g. a per-element drift after fine-tuning). Default off.
        **options: as :class:`MACEPotential`.
    """

    capabilities = MACEPotential.capabilities | {"uncertainties", "committee"}

    def __init__(self, model, committee: CommitteeHeads | str | os.PathLike, correct: bool = False, **options):
        super().__init__(model, **options)
        self.correct = bool(correct)
        heads = committee if isinstance(committee, CommitteeHeads) else CommitteeHeads.load(committee)
        if list(heads.z_table) != list(self.z_table):
            raise ValueError(f"committee was fitted for elements {heads.z_table}, the model covers {self.z_table}")
        n_feat = len(self._invariant_columns(int(self.model.num_interactions)))
        if heads.isolated.shape != (len(self.z_table), n_feat) or heads.weights.shape[1] != n_feat * len(self.z_table):
            raise ValueError(f"committee shapes {heads.isolated.shape}/{heads.weights.shape} do not fit this model "
                             f"({len(self.z_table)} elements x {n_feat} features)")
        if heads.members < 2:
            raise ValueError(f"a committee needs at least 2 members, got {heads.members}")
        if self.correct and (heads.mean is None or not np.any(heads.mean)):
            raise ValueError("correct=True needs committee heads with fitted mean weights (refit them with "
                             "`molgym potential committee`)")
        self.heads = heads
        self._set_torch_heads()

    def _set_torch_heads(self) -> None:
        torch = self._torch
        kw = dict(dtype=torch.float64, device=self.device)
        self._columns = torch.as_tensor(self._invariant_columns(int(self.model.num_interactions)), device=self.device)
        self._iso = torch.as_tensor(self.heads.isolated, **kw)
        # fold the standardisation into the weights: (Φ / s) · w = Φ · (w / s)
        self._w = torch.as_tensor((self.heads.weights / self.heads.feature_scale[None, :]).T, **kw)  # (F, K)
        mean = np.zeros(self.heads.weights.shape[1]) if self.heads.mean is None else self.heads.mean
        self._w_mean = torch.as_tensor(mean / self.heads.feature_scale, **kw)  # (F,)

    @property
    def committee_size(self) -> int:
        """Number of committee members (heads)."""
        return self.heads.members

    @property
    def uncertainty_scale(self) -> float:
        """The heads' calibration factor: σ = ``uncertainty_scale`` · std of the members' energies."""
        return float(self.heads.scale)

    # --- features ---------------------------------------------------------------------------------------------
    def _structure_features(self, data: dict, out: dict):
        """``(n_graphs, n_species * n_feat)`` float64 tensor: per-atom features minus the isolated atom's, summed
        per structure within each element's block (differentiable w.r.t. positions when the forward was)."""
        torch = self._torch
        feats = out["node_feats"].index_select(1, self._columns).to(torch.float64)
        onehot = data["node_attrs"].to(torch.float64)  # (atoms, species)
        feats = feats - onehot @ self._iso
        per_atom = (onehot[:, :, None] * feats[:, None, :]).reshape(len(feats), -1)
        n_graphs = len(data["ptr"]) - 1
        summed = torch.zeros((n_graphs, per_atom.shape[1]), dtype=torch.float64, device=per_atom.device)
        return summed.index_add(0, data["batch"], per_atom)

    def structure_features(self, structures: Sequence[Atoms]) -> np.ndarray:
        """Unscaled committee features of each structure (what the heads are fitted on), one batched pass."""
        self.check_species(structures)
        structures = list(structures)
        rows = []
        for _, _, data, out in self._forward(structures, forces=False):
            rows.append(self._structure_features(data, out).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, self.heads.weights.shape[1]))

    # --- public API -------------------------------------------------------------------------------------------
    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        if not self.correct:
            return super().energies(structures)
        return self.committee_energies(structures)[0]

    def energies_and_forces(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        if not self.correct:
            return super().energies_and_forces(structures)
        energies, forces, _ = self.biased_energies_and_forces(structures, 0.0)
        return energies, forces

    def committee_energies(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """Model energies ``(n,)`` and the members' energies ``(n, K)`` (eV) from ONE batched forward pass.

        The members' mean is the model energy; their spread, times :attr:`uncertainty_scale`, is the uncertainty.
        """
        self.check_species(structures)
        structures = list(structures)
        energies = np.empty(len(structures))
        members = np.empty((len(structures), self.heads.members))
        for start, stop, data, out in self._forward(structures, forces=False):
            phi = self._structure_features(data, out)
            energies[start:stop] = out["energy"].detach().cpu().double().numpy()
            if self.correct:
                energies[start:stop] += (phi @ self._w_mean).detach().cpu().numpy()
            dev = (phi @ self._w).detach().cpu().numpy()
            members[start:stop] = energies[start:stop, None] + dev
        return energies, members

    def energies_and_uncertainties(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
        """Energies and calibrated uncertainties (eV), one batched pass."""
        energies, members = self.committee_energies(structures)
        return energies, self.heads.scale * members.std(axis=1)

    def uncertainties(self, structures: Sequence[Atoms]) -> np.ndarray:
        """Calibrated energy uncertainty (eV) per structure: ``scale * std`` of the committee's energies."""
        return self.energies_and_uncertainties(structures)[1]

    def biased_energies_and_forces(
        self, structures: Sequence[Atoms], tau: float
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """HAL's biased energy ``E - tau * σ`` and its forces, plus σ, for each structure (one batched pass).

        ``tau > 0`` lowers the energy where the committee disagrees, so MD on it drifts toward uncertain
        configurations.
        """
        torch = self._torch
        self.check_species(structures)
        structures = list(structures)
        energies, forces, sigmas = [], [], []
        for start, stop in self._chunks(structures):
            data = self._batch(structures[start:stop])
            data["positions"].requires_grad_(True)
            with torch.enable_grad():
                out = self.model(data, training=False, compute_force=False, compute_stress=False)
                phi = self._structure_features(data, out)
                dev = phi @ self._w
                sigma = self.heads.scale * torch.sqrt(torch.clamp(dev.var(dim=1, unbiased=False), min=1e-18))
                biased = out["energy"].to(torch.float64) - float(tau) * sigma
                if self.correct:
                    biased = biased + phi @ self._w_mean
                (grad,) = torch.autograd.grad(biased.sum(), data["positions"])
            f = (-grad).detach().cpu().double().numpy()
            ptr = data["ptr"].cpu().numpy()
            energies.append(biased.detach().cpu().numpy())
            sigmas.append(sigma.detach().cpu().numpy())
            forces.extend(f[ptr[k] : ptr[k + 1]] for k in range(stop - start))
        return np.concatenate(energies), forces, np.concatenate(sigmas)


class HALCalculator(Calculator):
    """ASE calculator for HAL's biased MD: energy ``E - tau * σ`` and its forces; ``results['sigma']`` too."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, potential: CommitteeMACEPotential, tau: float, **kwargs):
        super().__init__(**kwargs)
        self.potential, self.tau = potential, float(tau)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        e, f, s = self.potential.biased_energies_and_forces([self.atoms], self.tau)
        self.results = {"energy": float(e[0]), "free_energy": float(e[0]), "forces": f[0], "sigma": float(s[0])}


# --- fitting ------------------------------------------------------------------------------------------------
def isolated_features(potential: MACEPotential) -> np.ndarray:
    """``(n_species, n_feat)`` node features of each isolated atom of the model's elements."""
    atoms = [Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]) for z in potential.z_table]
    return np.stack([d[0] for d in potential.descriptors(atoms)])


def _features_with(potential: MACEPotential, heads: CommitteeHeads, structures: Sequence[Atoms]) -> np.ndarray:
    probe = CommitteeMACEPotential(potential.model, heads, device=str(potential.device), dtype=None)
    return probe.structure_features(structures)


def fit_committee(
    potential: MACEPotential,
    structures: Sequence[Atoms],
    reference: np.ndarray,
    members: int = 8,
    ridge: float = 1e-2,
    seed: int = 0,
    features: np.ndarray | None = None,
) -> CommitteeHeads:
    """Fit ``members`` linear heads on bootstrap resamples of ``structures`` to the residual ``reference - E``.

    ``ridge`` is the L2 penalty relative to the mean diagonal of the (standardised) normal matrix. Scale is left
    at 1: call :func:`calibrate` on held-out data. ``features`` may pass precomputed structure features.
    """
    if members < 2:
        raise ValueError(f"members must be >= 2, got {members}")
    if ridge <= 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    reference = np.asarray(reference, dtype=float)
    if len(reference) != len(structures) or len(structures) < 2:
        raise ValueError(f"need one reference energy per structure (>= 2), got {len(reference)} for {len(structures)}")
    n_feat = len(potential._invariant_columns(int(potential.model.num_interactions)))
    n_species = len(potential.z_table)
    heads = CommitteeHeads(z_table=list(potential.z_table), isolated=isolated_features(potential),
                           feature_scale=np.ones(n_species * n_feat), weights=np.zeros((2, n_species * n_feat)))
    phi = _features_with(potential, heads, structures) if features is None else np.asarray(features)
    predicted = potential.energies(list(structures))
    residual = reference - predicted
    ok = np.isfinite(residual)
    phi, residual = phi[ok], residual[ok]
    scale = phi.std(axis=0)
    scale[scale < 1e-8] = 1.0
    x = phi / scale
    rng = np.random.default_rng(seed)
    ws = []
    for _ in range(members):
        counts = np.bincount(rng.integers(0, len(x), len(x)), minlength=len(x)).astype(float)
        a = (x * counts[:, None]).T @ x
        a += ridge * np.trace(a) / len(a) * np.eye(len(a))
        ws.append(np.linalg.solve(a, (x * counts[:, None]).T @ residual))
    w = np.array(ws)
    heads.feature_scale = scale
    heads.weights = w - w.mean(axis=0, keepdims=True)
    heads.mean = w.mean(axis=0)
    heads.meta = {"members": members, "ridge": ridge, "seed": seed, "fit_structures": int(ok.sum()),
                  "residual_rmse_eV": float(np.sqrt(np.mean(residual**2)))}
    return heads


def calibrate(potential: CommitteeMACEPotential, structures: Sequence[Atoms], reference: np.ndarray) -> float:
    """Set the committee's scale so that RMS(σ) equals the RMS energy error on ``structures``; returns it."""
    potential.heads.scale = 1.0
    energies, raw = potential.energies_and_uncertainties(structures)
    err = np.asarray(reference, dtype=float) - energies
    ok = np.isfinite(err)
    scale = float(np.sqrt(np.mean(err[ok] ** 2) / max(np.mean(raw[ok] ** 2), 1e-30)))
    potential.heads.scale = scale
    return scale
