"""Score analysis: does the learned score look like a restoring force at high noise and like the potential's
forces at low noise (SiMGen's observation)?

For QM9 test molecules ``(x0, h0)`` and each noise level ``sigma``: noise the molecule as in training
(``x = x0 + sigma eps``, centred; element channels too), evaluate the model's score on positions
``s = (D_x(x, h; sigma) - x) / sigma^2`` (a force per atom, in 1/Å) and compare it per molecule (all atoms'
3-vectors flattened, the cosine similarity then averaged over molecules) with

- the **restoring force** ``-x / (sigma^2 + sigma_data^2)``: the exact score of an isotropic Gaussian with the
  data's spread (the pull towards the centre); reported as cosine similarity and magnitude ratio
  ``|s| / |restoring|``;
- the **potential's forces** ``F(x)`` of a MACE model (by default molgym's shipped one) on the noisy
  structure with the true elements: cosine similarity;
- the **denoising direction** ``x0 - x`` (what an ideal denoiser would point along): cosine similarity, for
  reference; and, as a baseline for the force column, how well the potential's forces themselves align with
  that direction (``cos(F, x0 - x)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from molgym.agents.diffusion.model import EnergyDenoiser, center

__all__ = ["DEFAULT_SIGMAS", "score_analysis", "format_table"]

#: Noise levels (Å) of the analysis, from the sampler's start to almost clean.
DEFAULT_SIGMAS: tuple[float, ...] = (10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb)) if na > 0 and nb > 0 else float("nan")


def score_analysis(model: EnergyDenoiser, molecules, sigmas=DEFAULT_SIGMAS, potential=None, seed: int = 0,
                   progress=None) -> list[dict]:
    """One row per ``sigma``: mean (and standard error) of the cosines and the magnitude ratio over ``molecules``
    (``ase.Atoms`` with elements H, C, N, O, F). ``potential``: a molgym potential with
    ``energies_and_forces``, or ``None`` to skip that column."""
    from ase import Atoms

    from molgym.agents.diffusion.data import encode_elements
    from molgym.agents.diffusion.model import fully_connected_edges

    if not molecules:
        raise ValueError("score analysis needs at least one molecule")
    bad = [s for s in sigmas if not s > 0]
    if bad:
        raise ValueError(f"noise levels must be positive, got {bad}")
    sizes = torch.as_tensor([len(m) for m in molecules])
    edge_index, batch = fully_connected_edges(sizes)
    n_graphs = len(molecules)
    x0 = center(torch.as_tensor(np.concatenate([m.positions for m in molecules]), dtype=torch.float32), batch,
                n_graphs)
    numbers = np.concatenate([m.numbers for m in molecules])
    h0 = encode_elements(numbers)
    sigma_data = model.config.sigma_data_x
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for k, sigma in enumerate(sigmas):
        x = x0 + center(torch.randn(x0.shape, generator=gen), batch, n_graphs) * sigma
        h = h0 + torch.randn(h0.shape, generator=gen) * sigma
        d_x, _, _ = model(x, h, torch.full((n_graphs,), float(sigma)), edge_index, batch)
        score = ((d_x - x) / sigma ** 2).numpy().astype(float)
        xn, x0n = x.numpy().astype(float), x0.numpy().astype(float)
        bn = batch.numpy()
        forces = None
        if potential is not None:
            structures = [Atoms(numbers=numbers[bn == i], positions=xn[bn == i]) for i in range(n_graphs)]
            _, forces = potential.energies_and_forces(structures)
        cos_r, ratio, cos_f, cos_d, cos_fd = [], [], [], [], []
        for i in range(n_graphs):
            m = bn == i
            s_i, restoring = score[m], -xn[m] / (sigma ** 2 + sigma_data ** 2)
            cos_r.append(_cosine(s_i, restoring))
            ratio.append(np.linalg.norm(s_i) / max(np.linalg.norm(restoring), 1e-12))
            cos_d.append(_cosine(s_i, x0n[m] - xn[m]))
            if forces is not None:
                cos_f.append(_cosine(s_i, np.asarray(forces[i])))
                cos_fd.append(_cosine(np.asarray(forces[i]), x0n[m] - xn[m]))

        def stat(values):
            v = np.asarray([u for u in values if math.isfinite(u)])
            if len(v) == 0:
                return None, None
            return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None

        row = {"sigma": float(sigma), "molecules": n_graphs}
        for name, values in (("cos_restoring", cos_r), ("magnitude_ratio_restoring", ratio),
                             ("cos_potential_forces", cos_f), ("cos_denoising_direction", cos_d),
                             ("cos_forces_denoising_direction", cos_fd)):
            row[name], row[name + "_se"] = stat(values)
        rows.append(row)
        if progress is not None:
            progress(k + 1)
    return rows


def format_table(rows: list[dict]) -> str:
    """The analysis rows as a Markdown table (mean ± standard error)."""

    def cell(row, key):
        v, se = row.get(key), row.get(key + "_se")
        if v is None:
            return "n/a"
        return f"{v:.3f}" + (f" ± {se:.3f}" if se is not None else "")

    lines = ["| sigma (Å) | cos(score, restoring) | \\|score\\| / \\|restoring\\| | cos(score, MACE forces) | "
             "cos(score, x0 - x) | cos(MACE forces, x0 - x) |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sigma']:g} | {cell(r, 'cos_restoring')} | {cell(r, 'magnitude_ratio_restoring')} | "
                     f"{cell(r, 'cos_potential_forces')} | {cell(r, 'cos_denoising_direction')} | "
                     f"{cell(r, 'cos_forces_denoising_direction')} |")
    return "\n".join(lines)
