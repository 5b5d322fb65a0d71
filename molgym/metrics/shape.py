"""Shape distance: how well a molecule's heavy atoms fill a target point cloud.

Definition: the symmetric Chamfer distance (Å) between the heavy-atom positions ``X`` and the target points
``Y``, minimised over rigid motions (rotations, reflections and translations, since a point cloud has no
handedness):

    d(X, Y) = min_R,t  1/2 [ mean_x min_y |R x + t - y| + mean_y min_x |R x + t - y| ]

The minimisation starts from the 8 principal-axis alignments of the centred clouds and refines each with
iterative closest point steps (nearest-neighbour matching + Kabsch). 0 means a perfect fill.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

__all__ = ["chamfer", "shape_distance"]


def chamfer(x: np.ndarray, y: np.ndarray) -> float:
    """Symmetric mean nearest-neighbour distance between two point sets (no alignment)."""
    d = np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1)
    return float(0.5 * (d.min(axis=1).mean() + d.min(axis=0).mean()))


def _principal_axes(p: np.ndarray) -> np.ndarray:
    cov = p.T @ p / max(len(p), 1)
    _w, v = np.linalg.eigh(cov)
    return v[:, ::-1]


def _fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Rotation/reflection matrix R minimising |src R - dst| for matched, centred point sets."""
    u, _s, vt = np.linalg.svd(src.T @ dst)
    return u @ vt


def shape_distance(atoms: Atoms | np.ndarray, target: np.ndarray, iterations: int = 20) -> float:
    """Chamfer distance (Å) between the heavy atoms of ``atoms`` (or an ``(n, 3)`` array) and ``target``."""
    if isinstance(atoms, Atoms):
        x = atoms.positions[atoms.numbers > 1]
    else:
        x = np.asarray(atoms, float)
    y = np.asarray(target, float)
    if len(x) == 0 or len(y) == 0:
        return float("inf")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    ax, ay = _principal_axes(x), _principal_axes(y)
    best = float("inf")
    for signs in np.array(np.meshgrid([1, -1], [1, -1], [1, -1])).T.reshape(-1, 3):
        cur = x @ ax @ np.diag(signs) @ ay.T
        for _ in range(iterations):
            nearest = y[np.linalg.norm(cur[:, None] - y[None], axis=-1).argmin(axis=1)]
            shift = nearest.mean(axis=0)
            rot = _fit(cur - cur.mean(axis=0), nearest - shift)
            new = (cur - cur.mean(axis=0)) @ rot + shift
            if np.allclose(new, cur, atol=1e-6):
                break
            cur = new
        best = min(best, chamfer(cur, y))
    return best
