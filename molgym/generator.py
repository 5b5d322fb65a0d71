"""The generator contract every molecule generator implements, and the registry that finds generators by name.

One method matters: :meth:`Generator.generate` ``(task, n, seed, progress=None) -> list[ase.Atoms]``. A generator
also says what it is (``name``, ``version``, ``settings``) and how much it asked of the potential
(``potential_calls``: structures evaluated, the benchmark's oracle-call count). The benchmark runner, ``molgym
generate NAME`` and the refinement loop all call nothing else, so a new method is one subclass and one
:func:`register_generator` line.

The registry maps names to lazy ``"module:Class"`` strings, so the core never imports ``agents/`` (or torch,
SB3, ...) until a generator is asked for.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
from ase import Atoms

from molgym.potentials.base import Potential
from molgym.potentials.counting import CountingPotential

__all__ = [
    "Generator",
    "Progress",
    "GENERATORS",
    "ENTRY_POINT_GROUP",
    "available_generators",
    "register_generator",
    "get_generator",
    "check_sample_count",
    "generator_options",
]

#: A progress callback: called with the molecules done so far (an ``int``, or a ``float`` when a generator reports
#: fractions of molecules during a batch); the values never decrease and the last call is ``progress(n)``.
Progress = Callable[[float], None]


def check_sample_count(n) -> int:
    """``n`` as an ``int`` if it is a valid number of molecules to generate (an integer >= 0, not a bool);
    otherwise a ``ValueError`` naming it."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of molecules must be a non-negative integer, got {n!r}")
    return int(n)


class Generator(ABC):
    """Base class of all generators.

    Subclasses set ``name`` and ``version`` and implement :meth:`generate`. Generators that use a potential call
    :meth:`potential` (loaded lazily, wrapped in a :class:`CountingPotential`) so their calls are counted.

    Args:
        potential: potential spec (see :func:`molgym.potentials.load_potential`), ``"auto"`` or a ``Potential``.
        **settings: generator-specific options, recorded in :meth:`metadata`.
    """

    name: str = "generator"
    version: str = "0"
    #: whether :meth:`generate` accepts ``task=None`` (an unconditional mode of the generator's own)
    unconditional: bool = False

    def __init__(self, potential: str | Potential | None = "auto", **settings):
        self.potential_spec = potential
        self.settings = dict(settings)
        self._potential: CountingPotential | None = None

    def potential(self) -> CountingPotential:
        """The generator's potential, loaded on first use and counting its calls."""
        if self._potential is None:
            from molgym.potentials import load_potential

            spec = self.potential_spec
            if not isinstance(spec, Potential):
                from molgym.potentials.registry import resolve_potential_spec

                spec, _why = resolve_potential_spec(spec)
            self._potential = CountingPotential(load_potential(spec))
        return self._potential

    @property
    def potential_calls(self) -> int:
        """Structures evaluated by the potential so far (0 if the generator never used one)."""
        return 0 if self._potential is None else self._potential.calls

    def unsupported(self, task) -> str | None:
        """Why this generator (with its settings) cannot do ``task``, or ``None`` if it can.

        The runner asks before planning jobs and records the pairs it skips (``results.json["skipped_jobs"]``)
        instead of running jobs bound to fail; e.g. ``rl_policy`` with ``checkpoint="shipped"`` on a formula no
        checkpoint ships for.
        """
        return None

    @abstractmethod
    def generate(self, task, n: int, seed: int, progress: Progress | None = None) -> list[Atoms]:
        """Generate ``n`` structures for ``task`` (a :class:`molgym.benchmark.Task`), deterministically in ``seed``.

        ``task`` may be ``None`` for generators with an unconditional mode of their own (SiMGen, diffusion); the
        others raise a ``ValueError`` saying they need one. ``progress`` (see :data:`Progress`), if given, hears of
        the molecules done so far.
        """

    def require_task(self, task):
        """``task`` itself, or a ``ValueError`` saying this generator needs one (``task=None`` for a generator
        without an unconditional mode)."""
        if task is None and not self.unconditional:
            raise ValueError(f"generator {self.name!r} needs a task (a formula such as C3H8O, or a benchmark task "
                             "name: see molgym.benchmark.TASKS); it has no unconditional mode")
        return task

    def metadata(self) -> dict:
        """Name, version, settings, potential calls (structures evaluated) and batched calls so far (JSON-ready)."""
        pot = None
        if self._potential is not None:
            pot = self._potential.name
        elif isinstance(self.potential_spec, Potential):
            pot = self.potential_spec.name
        return {
            "name": self.name,
            "version": self.version,
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "settings": {k: (v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else repr(v))
                         for k, v in self.settings.items()},
            "potential": pot,
            "potential_calls": self.potential_calls,
            "potential_batches": 0 if self._potential is None else self._potential.batches,
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} v{self.version}>"


#: Generator names -> ``"module:Class"``; imported only when asked for.
GENERATORS: dict[str, str] = {
    "random_search": "molgym.agents.random_search:RandomSearch",
    "qm9": "molgym.agents.qm9_reference:QM9Reference",
    "rl_policy": "molgym.agents.rl_policy:RLPolicy",
    "simgen": "molgym.agents.simgen:SiMGen",
    "diffusion": "molgym.agents.diffusion:DiffusionSampler",
    "diffusion_relaxed": "molgym.agents.diffusion:RelaxedDiffusionSampler",
}


#: Installed packages can add generators without any call: an entry point in this group, named as the generator,
#: whose value is ``"module:Class"`` (in pyproject.toml: ``[project.entry-points."molgym.generators"]``).
ENTRY_POINT_GROUP = "molgym.generators"


def available_generators() -> dict[str, str]:
    """Every generator this installation can name: :data:`GENERATORS` (molgym's and those registered in this
    process) and the ``molgym.generators`` entry points of installed packages (``molgym generate`` and ``molgym
    bench`` list these). A name registered in-process wins over an entry point of the same name."""
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**plugins, **GENERATORS}


def register_generator(name: str, target: str, overwrite: bool = False) -> None:
    """Register a generator class under ``name`` by its ``"module:Class"`` path."""
    if ":" not in target:
        raise ValueError(f"generator target must look like 'package.module:Class', got {target!r}")
    if name in GENERATORS and GENERATORS[name] != target and not overwrite:
        raise ValueError(f"generator {name!r} is already registered as {GENERATORS[name]!r}")
    GENERATORS[name] = target


def generator_options(cls: type[Generator]) -> list[str] | None:
    """The option names the generator class ``cls`` takes: the named parameters of its constructor and, while a
    constructor takes ``**kwargs``, of its parents' constructors, up to :class:`Generator` (whose ``**settings``
    only records what subclasses pass it, so a name no class declares would do nothing). A generator that reads
    arbitrary keywords itself should name them as parameters. ``None`` (anything goes) when the chain reaches a
    class outside :class:`Generator`'s hierarchy (a mixin) whose constructor takes ``**kwargs``."""
    import inspect

    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        names += [n for n, p in params.items() if n != "self" and n not in names
                  and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        if klass is Generator or not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return names
        if not issubclass(klass, Generator):
            return None
    return names


def get_generator(name: str, **options) -> Generator:
    """Instantiate the generator registered as ``name`` (or given as ``"module:Class"``) with ``options``.

    An option that is not a parameter of the generator's constructor (:func:`generator_options`) raises a
    ``ValueError`` naming it and listing the allowed ones, instead of a ``TypeError`` from the constructor.
    """
    known = available_generators()
    target = known.get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(f"unknown generator {name!r}; available: {', '.join(sorted(known))} "
                         "(or 'package.module:Class')")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ImportError(f"generator {name!r} needs module {module_name!r}, which cannot be imported: {err}") from err
    cls = getattr(module, class_name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise ValueError(f"{target!r} is not a molgym Generator class")
    allowed = generator_options(cls)
    unknown = [k for k in options if allowed is not None and k not in allowed]
    if unknown:
        raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
                         f"for generator {name!r}; allowed: {', '.join(sorted(allowed))}")
    return cls(**options)
