"""Shape priors for SiMGen: where the heavy atoms start and the restoring force that keeps them in shape.

A prior is a density over 3D positions, written as a restoring energy ``U(x) = 1/2 d(x)^2`` (Å^2) where
``d`` is an atom's distance from the shape (for a Gaussian: the distance from the centre, measured in units of the
axis widths and scaled back to Å by their mean). SiMGen draws the starting positions from the prior and, at every
step, moves each atom by ``prior_strength * rate * (-grad U)`` (a fixed fraction of the way back to the shape)
besides following the similarity-kernel score, so the prior decides the shape and the kernel the chemistry.

Priors (and their command-line spelling, :func:`parse_prior`):

- ``gaussian[:sigma=S]``: isotropic Gaussian (default width from the number of atoms);
- ``gaussian:sigmas=SX,SY,SZ``: anisotropic Gaussian with axis widths ``SX, SY, SZ`` (Å);
- ``line[:length=L]``: a segment along x centred at the origin;
- ``ring:radius=R``: a circle of radius ``R`` in the xy plane;
- ``points:FILE.xyz``: any point cloud; the heavy atoms of the file's first structure (all atoms if it has only
  hydrogens), or pass an array to :class:`PointCloudPrior`.

Numbers of atoms: a line, a ring and a point cloud imply one (``n_atoms()``); a Gaussian needs it given.
torch is imported inside the methods that need it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

__all__ = [
    "Prior",
    "GaussianPrior",
    "LinePrior",
    "RingPrior",
    "PointCloudPrior",
    "parse_prior",
    "PRIOR_KINDS",
    "BOND_SPACING",
]

#: Typical distance (Å) between bonded heavy atoms; used to derive numbers of atoms from lengths.
BOND_SPACING = 1.4
PRIOR_KINDS = ("gaussian", "line", "ring", "points")


def _positive(name: str, value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {name} must be a positive number (Å), got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{what}: {name} must be a positive number (Å), got {value!r}")
    return v


class Prior(ABC):
    """A shape prior. ``rate`` is the fraction of its distance from the shape an atom is moved back each step
    (times SiMGen's ``prior_strength``)."""

    kind: str = "prior"
    rate: float = 0.3

    @abstractmethod
    def n_atoms(self) -> int | None:
        """Number of heavy atoms this prior implies, or ``None`` when it implies none (Gaussians)."""

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, 3)`` starting positions drawn from the prior."""

    @abstractmethod
    def energy(self, x):
        """Restoring energy of each structure: ``x`` is a ``(batch, n, 3)`` torch tensor; returns ``(batch,)``."""

    @abstractmethod
    def spec(self) -> str:
        """The prior written as a command-line spec (for metadata and file headers)."""

    def points(self) -> np.ndarray | None:
        """The target point cloud (Å) for point-cloud priors, else ``None``."""
        return None

    def distances(self, x: np.ndarray) -> np.ndarray | None:
        """Distance (Å) of each position ``(n, 3)`` from the shape; ``None`` for priors without one (Gaussians)."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec()}>"


class GaussianPrior(Prior):
    """Gaussian at the origin: isotropic (``sigma``) or anisotropic (``sigmas``: one width per axis, Å).

    With neither given, the width follows the molecule size: ``0.7 * n**(1/3)`` Å for ``n`` atoms.
    """

    kind = "gaussian"
    rate = 0.02

    def __init__(self, sigma: float | None = None, sigmas=None):
        if sigma is not None and sigmas is not None:
            raise ValueError("gaussian prior: give sigma (isotropic) or sigmas (anisotropic), not both")
        self.sigma = None if sigma is None else _positive("sigma", sigma, "gaussian prior")
        if sigmas is not None:
            values = list(sigmas)
            if len(values) != 3:
                raise ValueError(f"gaussian prior: sigmas needs 3 widths (x, y, z), got {len(values)}: {sigmas!r}")
            self.sigmas = np.array([_positive("sigmas", v, "gaussian prior") for v in values])
        else:
            self.sigmas = None
        self._n_hint = 9

    def n_atoms(self) -> int | None:
        return None

    def widths(self, n: int | None = None) -> np.ndarray:
        """Per-axis widths (Å) for ``n`` atoms."""
        if self.sigmas is not None:
            return self.sigmas
        if self.sigma is not None:
            return np.full(3, self.sigma)
        return np.full(3, 0.7 * max(int(n or self._n_hint), 1) ** (1 / 3))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(size=(n, 3)) * self.widths(n)

    def energy(self, x):
        widths = self.widths(x.shape[1])
        w = x.new_tensor(widths / widths.mean())
        return 0.5 * ((x / w) ** 2).sum(dim=(1, 2))

    def spec(self) -> str:
        if self.sigmas is not None:
            return "gaussian:sigmas=" + ",".join(f"{s:g}" for s in self.sigmas)
        return "gaussian" if self.sigma is None else f"gaussian:sigma={self.sigma:g}"


class LinePrior(Prior):
    """A segment of ``length`` Å along x, centred at the origin; atoms start within ``width`` Å of it.

    Implies ``round(length / 1.4) + 1`` atoms.
    """

    kind = "line"

    def __init__(self, length: float = 6.0, width: float = 0.25):
        self.length = _positive("length", length, "line prior")
        self.width = _positive("width", width, "line prior")

    def n_atoms(self) -> int:
        return int(round(self.length / BOND_SPACING)) + 1

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = rng.normal(scale=self.width, size=(n, 3))
        out[:, 0] = rng.uniform(-self.length / 2, self.length / 2, size=n)
        return out

    def energy(self, x):
        half = self.length / 2
        along = x[..., 0]
        over = (along.abs() - half).clamp(min=0.0)
        d2 = over**2 + x[..., 1] ** 2 + x[..., 2] ** 2
        return 0.5 * d2.sum(dim=1)

    def distances(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        over = np.maximum(np.abs(x[:, 0]) - self.length / 2, 0.0)
        return np.sqrt(over**2 + x[:, 1] ** 2 + x[:, 2] ** 2)

    def spec(self) -> str:
        return f"line:length={self.length:g}"


class RingPrior(Prior):
    """A circle of ``radius`` Å in the xy plane; atoms start within ``width`` Å of it.

    Implies ``round(2 pi radius / 1.4)`` atoms (at least 3).
    """

    kind = "ring"

    def __init__(self, radius: float = 1.4, width: float = 0.25):
        self.radius = _positive("radius", radius, "ring prior")
        self.width = _positive("width", width, "ring prior")

    def n_atoms(self) -> int:
        return max(3, int(round(2 * math.pi * self.radius / BOND_SPACING)))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        phi = rng.uniform(0, 2 * math.pi, size=n)
        out = rng.normal(scale=self.width, size=(n, 3))
        out[:, 0] += self.radius * np.cos(phi)
        out[:, 1] += self.radius * np.sin(phi)
        return out

    def energy(self, x):
        rho = (x[..., 0] ** 2 + x[..., 1] ** 2 + 1e-12).sqrt()
        d2 = (rho - self.radius) ** 2 + x[..., 2] ** 2
        return 0.5 * d2.sum(dim=1)

    def distances(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        rho = np.hypot(x[:, 0], x[:, 1])
        return np.hypot(rho - self.radius, x[:, 2])

    def spec(self) -> str:
        return f"ring:radius={self.radius:g}"


class PointCloudPrior(Prior):
    """Any point cloud (``(m, 3)`` Å): atoms fill it.

    The energy is a smooth symmetric Chamfer term: every atom is pulled to its nearest point *and* every point to
    its nearest atom (so the atoms cover the whole cloud rather than crowd one part), each a soft minimum with
    temperature ``width**2``. Implies ``m`` atoms.
    """

    kind = "points"

    def __init__(self, points, width: float = 0.25, source: str | None = None):
        pts = np.asarray(points, dtype=float)
        if pts.ndim != 2 or pts.shape[-1] != 3 or len(pts) == 0:
            raise ValueError(
                f"point-cloud prior needs a non-empty (m, 3) array of points (Å), got shape {tuple(pts.shape)}"
            )
        if not np.all(np.isfinite(pts)):
            raise ValueError("point-cloud prior: points must be finite numbers")
        self._points = pts
        self.width = _positive("width", width, "point-cloud prior")
        self.source = source

    def n_atoms(self) -> int:
        return len(self._points)

    def points(self) -> np.ndarray:
        return self._points.copy()

    def distances(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return np.linalg.norm(x[:, None] - self._points[None], axis=-1).min(axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        idx = rng.permutation(np.resize(np.arange(len(self._points)), n))
        return self._points[idx] + rng.normal(scale=self.width, size=(n, 3))

    def energy(self, x):
        import torch

        p = x.new_tensor(self._points)
        d2 = ((x[:, :, None, :] - p[None, None, :, :]) ** 2).sum(-1)  # (batch, n, m)
        t = self.width**2
        atom_to_cloud = -t * torch.logsumexp(-d2 / t, dim=2)  # soft min over points
        cloud_to_atom = -t * torch.logsumexp(-d2 / t, dim=1)  # soft min over atoms
        return 0.5 * (atom_to_cloud.sum(dim=1) + cloud_to_atom.sum(dim=1))

    def spec(self) -> str:
        return f"points:{self.source}" if self.source else f"points:<{len(self._points)} points>"


def _read_points(path: str) -> np.ndarray:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"point-cloud prior: file {path!r} does not exist")
    import ase.io

    try:
        atoms = ase.io.read(p, index=0)
    except Exception as err:
        raise ValueError(f"point-cloud prior: could not read {path!r}: {err}") from err
    heavy = atoms.positions[atoms.numbers > 1]
    pts = heavy if len(heavy) else atoms.positions
    if len(pts) == 0:
        raise ValueError(f"point-cloud prior: {path!r} holds no points")
    return pts


def parse_prior(spec: str | Prior | None) -> Prior:
    """A prior from its spec string (see the module docstring); ``None`` means ``"gaussian"``."""
    if spec is None:
        return GaussianPrior()
    if isinstance(spec, Prior):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"prior must be a spec string or a Prior, got {type(spec).__name__}")
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind not in PRIOR_KINDS:
        raise ValueError(
            f"unknown prior {spec!r}: expected one of gaussian[:sigma=S], gaussian:sigmas=SX,SY,SZ, "
            "line[:length=L], ring:radius=R, points:FILE.xyz"
        )
    if kind == "points":
        if not rest:
            raise ValueError("prior 'points' needs a file: points:FILE.xyz")
        return PointCloudPrior(_read_points(rest), source=rest)
    options: dict[str, str] = {}
    if rest:
        # split on commas that start a new key=value (sigmas=1,2,3 keeps its commas)
        for part in _split_options(rest):
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"malformed prior option {part!r} in {spec!r}: expected key=value")
            options[key.strip().lower()] = value.strip()
    allowed = {"gaussian": ("sigma", "sigmas"), "line": ("length", "width"), "ring": ("radius", "width")}[kind]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"prior {kind!r} has no option {unknown[0]!r}; allowed: {', '.join(allowed)}")
    if kind == "gaussian":
        sigmas = options.get("sigmas")
        return GaussianPrior(
            sigma=options.get("sigma"), sigmas=None if sigmas is None else [s for s in sigmas.split(",")]
        )
    if kind == "line":
        return LinePrior(**options)
    return RingPrior(**options)


def _split_options(text: str) -> list[str]:
    parts: list[str] = []
    for piece in text.split(","):
        if "=" in piece or not parts:
            parts.append(piece)
        else:
            parts[-1] += "," + piece
    return parts
