"""Pictures and text of a canvas: ``rgb_array`` (matplotlib, bonds drawn) and ``ansi``."""

from __future__ import annotations

import numpy as np

from molgym.chem import covalent_radius, symbol

__all__ = ["bonds", "render_rgb", "render_ansi"]

# CPK-like colours (RGB in 0..1).
_COLOURS = {
    1: (0.95, 0.95, 0.95),
    5: (1.0, 0.71, 0.71),
    6: (0.35, 0.35, 0.35),
    7: (0.19, 0.31, 0.97),
    8: (1.0, 0.05, 0.05),
    9: (0.56, 0.88, 0.31),
    15: (1.0, 0.5, 0.0),
    16: (1.0, 1.0, 0.19),
    17: (0.12, 0.94, 0.12),
    35: (0.65, 0.16, 0.16),
    53: (0.58, 0.0, 0.58),
}
#: Two atoms are drawn bonded when closer than this factor times the sum of their covalent radii.
BOND_TOLERANCE = 1.2


def bonds(numbers: np.ndarray, positions: np.ndarray) -> list[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, closer than :data:`BOND_TOLERANCE` times the sum of covalent radii."""
    n = len(numbers)
    if n < 2:
        return []
    radii = np.array([covalent_radius(int(z)) for z in numbers])
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    i, j = np.nonzero(np.triu(d < BOND_TOLERANCE * (radii[:, None] + radii[None, :]), k=1))
    return list(zip(i.tolist(), j.tolist()))


def render_rgb(numbers: np.ndarray, positions: np.ndarray, title: str = "", size: int = 320) -> np.ndarray:
    """An ``(size, size, 3)`` uint8 picture of the structure seen along z (atoms sorted by depth, bonds drawn)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 80
    fig = Figure(figsize=(size / dpi, size / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_aspect("equal")
    if len(numbers):
        centre = positions.mean(axis=0)
        xy = positions[:, :2] - centre[:2]
        extent = max(2.5, float(np.abs(xy).max()) + 1.5)
        for i, j in bonds(numbers, positions):
            ax.plot(xy[[i, j], 0], xy[[i, j], 1], color="0.3", lw=3, zorder=1)
        order = np.argsort(positions[:, 2])
        for k in order:
            z = int(numbers[k])
            ax.scatter(
                xy[k, 0], xy[k, 1], s=(600 * covalent_radius(z)) / extent, color=_COLOURS.get(z, (0.8, 0.5, 0.8)),
                edgecolors="black", linewidths=0.8, zorder=2 + positions[k, 2] * 1e-3,
            )
    else:
        extent = 2.5
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    if title:
        ax.text(0.02, 0.97, title, transform=ax.transAxes, va="top", ha="left", fontsize=9)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    return image


def render_ansi(numbers: np.ndarray, positions: np.ndarray, bag: dict[str, int], energy: float, ret: float) -> str:
    """A text table of the canvas (element and position of each atom), the bag, the energy and the return."""
    from molgym.chem import format_formula

    canvas = format_formula(_count(numbers)) if len(numbers) else "-"
    left = format_formula(bag) if any(bag.values()) else "-"
    lines = [f"canvas {canvas}  bag {left}  E {energy:.4f} eV  return {ret:.4f} eV"]
    for k, (z, p) in enumerate(zip(numbers, positions)):
        lines.append(f"{k:3d} {symbol(int(z)):>2s} {p[0]:9.4f} {p[1]:9.4f} {p[2]:9.4f}")
    return "\n".join(lines) + "\n"


def _count(numbers: np.ndarray) -> dict[str, int]:
    out: dict[str, int] = {}
    for z in numbers:
        s = symbol(int(z))
        out[s] = out.get(s, 0) + 1
    return out
