"""Benchmark tasks and versioned suites.

A :class:`Task` says what to build; every generator gets the same task and is scored by the same metrics.
Kinds:

- ``formula``: build a molecule with exactly this formula (``get_task("C7H8N2O2")``; any formula works);
- ``unconditional``: QM9-like molecules; each sample's bag (size and composition) is the composition of a QM9
  molecule drawn with the job's seed, so sizes follow QM9's distribution;
- ``shape``: a formula plus a target point cloud that the heavy atoms should fill (``shape-ring``,
  ``shape-line``, or ``shape_task(points, formula)`` / ``get_task("shape:FILE.xyz")`` for your own points);
- ``bag``: stochastic bags, each sample's formula drawn uniformly (seeded) from a list.

A :class:`Suite` is a versioned list of tasks with the number of samples per job, the seeds and the metric
settings. ``quick`` runs in under three minutes on two cores (CI and ``make run``); ``v1`` is the full suite.
Changing what a suite contains means bumping its version, so results stay comparable by (suite, version).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from molgym.chem import bag_from_numbers, format_formula, parse_formula

__all__ = [
    "Task",
    "Suite",
    "FORMULAS",
    "TASKS",
    "SUITES",
    "get_task",
    "get_suite",
    "shape_task",
    "task_from_dict",
]

#: The formula tasks of the MolGym papers.
FORMULAS: tuple[str, ...] = ("CH4O", "CH3NO", "C2H2O2", "C3H5NO3", "C4H7N", "C3H8O", "C7H10O2", "C7H8N2O2")

KINDS = ("formula", "unconditional", "shape", "bag")
#: Version of the metric set that jobs are scored with (see :meth:`Suite.metric_settings`).
METRICS_VERSION = 2
#: The elements of QM9, the bags of ``unconditional`` tasks.
QM9_ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")


@dataclass(frozen=True)
class Task:
    """One benchmark task. Build with :func:`get_task` or :func:`shape_task`.

    Attributes:
        name: unique name (``"C3H8O"``, ``"qm9-unconditional"``, ``"shape-ring"``, ``"bags-small"``).
        kind: one of ``formula``, ``unconditional``, ``shape``, ``bag``.
        description: one line for reports.
        formula: the bag of formula and shape tasks (Hill order).
        formulas: the choices of a ``bag`` task.
        target: target points (Å) of a shape task, as a tuple of ``(x, y, z)``.
        version: bumped whenever the task's definition changes.
    """

    name: str
    kind: str
    description: str
    formula: str | None = None
    formulas: tuple[str, ...] = ()
    target: tuple[tuple[float, float, float], ...] | None = None
    version: int = 1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.kind in ("formula", "shape") and not self.formula:
            raise ValueError(f"{self.kind} task {self.name!r} needs a formula")
        if self.kind == "shape" and not self.target:
            raise ValueError(f"shape task {self.name!r} needs target points")
        if self.kind == "bag" and not self.formulas:
            raise ValueError(f"bag task {self.name!r} needs a list of formulas")
        for f in ([self.formula] if self.formula else []) + list(self.formulas):
            parse_formula(f)

    @property
    def target_array(self) -> np.ndarray | None:
        """Target points as an ``(n, 3)`` array (shape tasks), else ``None``."""
        return None if self.target is None else np.asarray(self.target, dtype=float)

    def elements(self) -> tuple[str, ...]:
        """Every element a sample of this task can contain (its formulas', or QM9's for unconditional tasks),
        so a run can check its potential covers them before any job starts."""
        if self.kind == "unconditional":
            return QM9_ELEMENTS
        found: dict[str, None] = {}
        for f in ([self.formula] if self.formula else []) + list(self.formulas):
            found.update(dict.fromkeys(parse_formula(f)))
        return tuple(found)

    def bags(self, n: int, seed: int) -> list[dict[str, int]]:
        """The bag (``{symbol: count}``) of each of ``n`` samples; seeded, identical for every generator."""
        if n < 0:
            raise ValueError(f"number of samples must be >= 0, got {n}")
        if self.kind in ("formula", "shape"):
            return [parse_formula(self.formula) for _ in range(n)]
        rng = np.random.default_rng([seed, 7919])
        if self.kind == "bag":
            return [parse_formula(self.formulas[i]) for i in rng.integers(len(self.formulas), size=n)]
        from molgym.data.qm9 import load_qm9

        qm9 = load_qm9()
        rows = rng.integers(len(qm9), size=n)
        return [bag_from_numbers(qm9.numbers[qm9.offsets[r]: qm9.offsets[r + 1]]) for r in rows]

    def to_dict(self) -> dict:
        """JSON-ready description (round-trips through :func:`task_from_dict`)."""
        d = asdict(self)
        d["formulas"] = list(self.formulas)
        d["target"] = None if self.target is None else [list(p) for p in self.target]
        return d


def task_from_dict(d: dict) -> Task:
    """Inverse of :meth:`Task.to_dict`."""
    return Task(
        name=d["name"], kind=d["kind"], description=d.get("description", ""), formula=d.get("formula"),
        formulas=tuple(d.get("formulas") or ()),
        target=None if d.get("target") is None else tuple(tuple(float(c) for c in p) for p in d["target"]),
        version=int(d.get("version", 1)),
    )


def _ring(n: int = 6, radius: float = 1.39) -> tuple:
    angles = 2 * np.pi * np.arange(n) / n
    return tuple((round(radius * np.cos(a), 6), round(radius * np.sin(a), 6), 0.0) for a in angles)


def _line(n: int = 4, spacing: float = 1.29) -> tuple:
    return tuple((round(spacing * i, 6), 0.0, 0.0) for i in range(n))


def shape_task(points: Sequence[Sequence[float]], formula: str, name: str | None = None) -> Task:
    """A shape task for your own target ``points`` (Å) and ``formula``."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0 or not np.all(np.isfinite(pts)):
        raise ValueError(f"target points must be a non-empty (n, 3) array of finite numbers, got shape {pts.shape}")
    formula = format_formula(parse_formula(formula))
    return Task(
        name=name or f"shape-{len(pts)}pts-{formula}", kind="shape", formula=formula,
        description=f"fill {len(pts)} target points with the heavy atoms of {formula}",
        target=tuple(tuple(float(c) for c in p) for p in pts),
    )


TASKS: dict[str, Task] = {
    **{f: Task(name=f, kind="formula", formula=f, description=f"build {f}") for f in FORMULAS},
    "qm9-unconditional": Task(
        name="qm9-unconditional", kind="unconditional",
        description="QM9-like molecules; bags drawn from QM9's compositions (sizes follow QM9)",
    ),
    "shape-ring": Task(
        name="shape-ring", kind="shape", formula="C6H6", target=_ring(),
        description="fill a planar 6-point ring (radius 1.39 Å) with the carbons of C6H6",
    ),
    "shape-line": Task(
        name="shape-line", kind="shape", formula="C4H2", target=_line(),
        description="fill 4 collinear points 1.29 Å apart with the carbons of C4H2",
    ),
    "bags-small": Task(
        name="bags-small", kind="bag", formulas=("CH4O", "CH3NO", "C2H2O2", "C3H8O"),
        description="stochastic bags: CH4O, CH3NO, C2H2O2 or C3H8O, drawn per sample",
    ),
    "bags-medium": Task(
        name="bags-medium", kind="bag", formulas=("C3H5NO3", "C4H7N", "C7H10O2", "C7H8N2O2"),
        description="stochastic bags: C3H5NO3, C4H7N, C7H10O2 or C7H8N2O2, drawn per sample",
    ),
}


def get_task(name: str) -> Task:
    """A task by name: a registered task (:data:`TASKS`), any formula, or ``"shape:FILE.xyz[:FORMULA]"``.

    For ``shape:`` the heavy atoms of the file's first structure are the target points and the formula defaults
    to the file's own composition.
    """
    if isinstance(name, Task):
        return name
    if name in TASKS:
        return TASKS[name]
    if name.startswith("shape:"):
        spec = name[len("shape:"):]
        path, _, formula = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
        if not Path(path).is_file():
            raise ValueError(f"shape task {name!r}: file {path!r} does not exist")
        import ase.io

        atoms = ase.io.read(path, index=0)
        points = atoms.positions[atoms.numbers > 1]
        return shape_task(points, formula or format_formula(bag_from_numbers(atoms.numbers)), name=name)
    try:
        formula = format_formula(parse_formula(name))
    except ValueError as err:
        raise ValueError(
            f"unknown task {name!r}: expected one of {', '.join(TASKS)}, a formula such as 'C3H8O', "
            f"or 'shape:FILE.xyz[:FORMULA]' ({err})"
        ) from None
    return Task(name=formula, kind="formula", formula=formula, description=f"build {formula}")


@dataclass(frozen=True)
class Suite:
    """A versioned set of tasks and how to run them.

    Attributes:
        name, version, description: identity; results record both name and version.
        tasks: task names (resolved with :func:`get_task`).
        n_samples: molecules each generator makes per (task, seed).
        seeds: one job per seed.
        relax_steps: BFGS steps of the relaxation metric (0 disables it); relax_fmax its force threshold.
        referee_sample: molecules per job scored with the GFN2-xTB referee (and valid ones relaxed under it).
        referee_relax_steps: BFGS steps of the GFN2-xTB relaxation metric (0 disables it).
        posebusters: run PoseBusters' molecule checks on every molecule.
        generators: the generators run when the user names none.
        generator_options: per-generator options used by this suite (e.g. random search effort).
    """

    name: str
    version: str
    description: str
    tasks: tuple[str, ...]
    n_samples: int
    seeds: tuple[int, ...]
    relax_steps: int = 200
    relax_fmax: float = 0.05
    referee_sample: int = 4
    referee_relax_steps: int = 300
    posebusters: bool = True
    generators: tuple[str, ...] = ("random_search", "qm9")
    generator_options: dict = field(default_factory=dict)

    def get_tasks(self) -> list[Task]:
        """The suite's tasks."""
        return [get_task(t) for t in self.tasks]

    def metric_settings(self) -> dict:
        """The settings of the metrics, recorded with every job (a change makes finished jobs stale).
        ``version`` counts changes of the metric set itself (2: PoseBusters, xTB relaxation, CPU cost)."""
        return {"version": METRICS_VERSION, "relax_steps": self.relax_steps, "relax_fmax": self.relax_fmax,
                "referee_sample": self.referee_sample, "referee_relax_steps": self.referee_relax_steps,
                "posebusters": self.posebusters}

    def to_dict(self) -> dict:
        """JSON-ready description."""
        d = asdict(self)
        d["tasks"], d["seeds"], d["generators"] = list(self.tasks), list(self.seeds), list(self.generators)
        return d


SUITES: dict[str, Suite] = {
    "quick": Suite(
        name="quick", version="1.0",
        description="smoke-test suite for CI and `make run`: 4 small tasks, 6 molecules, 2 seeds (< 3 min on 2 cores)",
        tasks=("CH4O", "C2H2O2", "bags-small", "shape-ring"), n_samples=6, seeds=(0, 1), relax_steps=60,
        referee_sample=2,
        generator_options={"random_search": {"steps": 60}},
    ),
    "v1": Suite(
        name="v1", version="1.0",
        description="full suite: the 8 formula tasks, QM9-like unconditional, 2 shapes, 2 stochastic bags",
        tasks=FORMULAS + ("qm9-unconditional", "shape-ring", "shape-line", "bags-small", "bags-medium"),
        n_samples=32, seeds=(0, 1, 2), relax_steps=200, referee_sample=8,
    ),
}


def get_suite(name: str) -> Suite:
    """A suite by name (:data:`SUITES`)."""
    if isinstance(name, Suite):
        return name
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; available: {', '.join(SUITES)}")
    return SUITES[name]
