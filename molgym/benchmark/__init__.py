"""The common benchmark: tasks and versioned suites, runner, results, report.

The generator contract and registry live in :mod:`molgym.generator`; they are re-exported here because every
benchmark script needs them beside the tasks.

    from molgym.benchmark import get_generator, get_task, get_suite, run_suite
    gen = get_generator("random_search", potential="xtb")
    molecules = gen.generate(get_task("C3H8O"), n=8, seed=0)      # list[ase.Atoms]
    results = run_suite("quick", ["random_search", "qm9"], out="runs/quick")

Importing this package is light: generators are imported by name when asked for.
"""

from molgym.benchmark.tasks import FORMULAS, SUITES, TASKS, Suite, Task, get_suite, get_task, shape_task
from molgym.generator import GENERATORS, Generator, get_generator, register_generator


def run_suite(*args, **kwargs):
    """Run or resume a suite; see :func:`molgym.benchmark.runner.run_suite`."""
    from molgym.benchmark.runner import run_suite as _run

    return _run(*args, **kwargs)


__all__ = [
    "Generator",
    "GENERATORS",
    "register_generator",
    "get_generator",
    "Task",
    "Suite",
    "TASKS",
    "SUITES",
    "FORMULAS",
    "get_task",
    "get_suite",
    "shape_task",
    "run_suite",
]
