"""``molgym generate NAME ...``: make molecules with any registered generator and write them as extended XYZ.

Every generator :func:`molgym.generator.available_generators` names (molgym's, and installed packages'
``molgym.generators`` entry points) gets a sub-command. By default it is the generic one: the
shared arguments below, ``--potential`` and ``--option KEY=VALUE`` for the generator's constructor options. A
generator whose options deserve typed flags and help of their own registers a parser-adding function in
:data:`METHODS` instead (the functions live with their agents, e.g. :mod:`molgym.agents.commands.simgen`).
Every sub-command shares ``-n``, ``--seed``, ``--out``, ``--task`` and the progress bar, and calls only
:meth:`molgym.generator.Generator.generate`; heavy imports happen in the command functions only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every ``molgym generate`` sub-command shares."""
    parser.add_argument("-n", "--num", type=int, default=10, help="number of molecules (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same molecules")
    parser.add_argument("--out", required=True,
                        help="output file (.xyz or .extxyz, written as extended XYZ); a directory (existing, ending "
                             "in '/' or without an extension) gets molecules.xyz. A JSON summary (settings, timing, "
                             "validity) is written next to it. Checked before anything is generated")
    parser.add_argument("--task", default=None,
                        help="a benchmark task (molgym.benchmark.get_task: a formula, qm9-unconditional, shape-ring, "
                             "shape-line, shape:FILE.xyz, ...) instead of the free settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, or an error naming the text."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def pair(text: str) -> tuple[float, float]:
    """argparse type: ``"START,END"`` as two floats, or an error naming the text."""
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers 'START,END', got {text!r}") from None
    return a, b


#: Generators with a parser of their own: name -> ``"module:function"`` that adds it (imported when the CLI starts;
#: the function imports its generator only when the command runs). Every other registered generator gets the
#: generic parser (:func:`register_generic`).
METHODS: dict[str, str] = {
    "simgen": "molgym.agents.commands.simgen:register_generate",
    "diffusion": "molgym.agents.commands.diffusion:register_generate",
}


def register(subparsers) -> None:
    import importlib

    from molgym.generator import available_generators

    group = subparsers.add_parser("generate", help="generate molecules with any registered generator",
                                  description="Generate molecules with one of molgym's generators.")
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(title="generators", metavar="GENERATOR")
    for name in sorted(available_generators()):
        if name in METHODS:
            module, _, function = METHODS[name].partition(":")
            getattr(importlib.import_module(module), function)(commands)
        else:
            register_generic(commands, name)


def register_generic(commands, name: str) -> None:
    """``molgym generate NAME``: the shared arguments, ``--potential`` and ``--option KEY=VALUE``."""
    p = commands.add_parser(
        name, help=f"generator {name!r} (options: --option KEY=VALUE)",
        description=f"Generate molecules with the registered generator {name!r}. Its constructor options are "
        "passed as --option KEY=VALUE (values read as JSON when they parse, else as text); an unknown option is "
        "refused with the allowed ones listed.",
    )
    add_common_arguments(p)
    p.add_argument("--potential", default="auto",
                   help="potential spec the generator uses (default auto: the shipped MACE model, else GFN2-xTB)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a constructor option of the generator (repeatable), e.g. --option steps=100")
    p.set_defaults(func=cmd_generic, generator_name=name)


def parse_options(items: list[str]) -> dict:
    """``["key=value", ...]`` -> ``{key: value}`` (values parsed as JSON when possible)."""
    from molgym.cli import split_option

    return dict(split_option(item, "KEY=VALUE, e.g. steps=100") for item in items)


def cmd_generic(args) -> int:
    """Build the generator from ``--potential`` and ``--option`` (refusing unknown options before any work), then
    :func:`run_generation`."""
    import json

    from molgym.generator import get_generator

    check_output_path(args.out)
    generator = get_generator(args.generator_name, potential=args.potential, **parse_options(args.option))
    command = f"molgym generate {args.generator_name} " + json.dumps(
        {k: v for k, v in vars(args).items() if k not in ("func", "group_parser", "generator_name")}, default=str)
    return run_generation(generator, args.num, args.seed, args.out, not args.no_progress, command, task=args.task)


#: File name endings ``--out`` may have: the molecules are written as extended XYZ.
OUTPUT_SUFFIXES = (".xyz", ".extxyz")


def _output_path(out: str) -> Path:
    path = Path(out)
    if path.is_dir() or out.endswith(("/", "\\")) or not path.suffix:
        return path / "molecules.xyz"
    return path


def check_output_path(out: str) -> Path:
    """The molecules file that ``--out`` names, checked before anything is generated (so that minutes of
    generation never end in an unwritable path): an extended-XYZ name, neither it nor its JSON summary an
    existing directory, and its folder either existing and writable or creatable (the nearest existing parent is
    a writable directory). Raises :class:`molgym.cli.CLIError` naming the problem."""
    import os

    from molgym.cli import CLIError

    path = _output_path(out)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise CLIError(f"--out {out!r}: molecules are written as extended XYZ, so give a file name ending in "
                       f"{' or '.join(OUTPUT_SUFFIXES)}, or a directory (end it with '/' if it does not exist yet)")
    for target in (path, path.with_suffix(".json")):
        if target.is_dir():
            raise CLIError(f"--out {out!r}: {target} is an existing directory, so it cannot be written as a file; "
                           "choose another --out")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"--out {out!r}: cannot create the directory {path.parent}, because {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out!r}: {existing} is not writable")
    return path


def _save_or_rescue(path: Path, molecules: list) -> None:
    """Write ``molecules`` to ``path``; if that fails, save them to a temporary file and raise a
    :class:`molgym.cli.CLIError` naming both, so generated molecules are never lost."""
    import os
    import tempfile

    from molgym import io as molgym_io
    from molgym.cli import CLIError

    try:
        molgym_io.write_xyz(path, molecules)
    except OSError as err:
        fd, rescue = tempfile.mkstemp(prefix="molgym-generate-", suffix=".xyz")
        os.close(fd)
        molgym_io.write_xyz(rescue, molecules)
        raise CLIError(f"could not write {path} ({err}); the {len(molecules)} generated molecules were saved to "
                       f"{rescue}") from None


def sample_with_progress(generator, n: int, seed: int, task=None, progress: bool = True,
                         desc: str | None = None) -> tuple[list, float]:
    """``generator.generate(task, n, seed)`` with a progress bar fed by its ``progress`` callback; returns the
    molecules and the wall time in seconds."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="mol", desc=desc or generator.name, dynamic_ncols=True)
    done = [0]

    def tick(k: float) -> None:
        # k: molecules done; a generator may report fractions of molecules during a batch (SiMGen does), so the
        # bar moves before the first batch ends. Set the count (rounded) rather than adding differences, so that
        # float steps do not accumulate into 0.30000000000000004 on the bar.
        if bar is not None:
            bar.n = k if isinstance(k, int) else round(float(k), 2)
            bar.update(0)  # redraws, at most every mininterval
        done[0] = k

    start = time.perf_counter()
    try:
        molecules = generator.generate(task, n, seed, progress=tick)
    finally:
        if bar is not None:
            bar.close()
    return molecules, time.perf_counter() - start


def run_generation(generator, n: int, seed: int, out: str, progress: bool, command: str,
                   task: str | None = None) -> int:
    """Generate ``n`` molecules with ``generator.generate`` (progress bar), write them and a summary. ``task``: a
    task name for :func:`molgym.benchmark.get_task`, checked before anything is generated."""
    import numpy as np

    from molgym.cli import CLIError
    from molgym.io import write_json

    if n < 1:
        raise CLIError(f"-n must be at least 1, got {n}")
    path = check_output_path(out)
    task_obj = None
    if task is not None:
        from molgym.benchmark import get_task

        task_obj = get_task(task)
    elif not getattr(generator, "unconditional", False):
        raise CLIError(f"generator {generator.name!r} needs a task: pass --task (a formula such as C3H8O, or a "
                       "benchmark task name: see molgym bench --list)")
    molecules, elapsed = sample_with_progress(generator, n, seed, task=task_obj, progress=progress)
    from molgym.metrics.chemistry import perceive

    perceptions = [perceive(m) for m in molecules]
    for m, p in zip(molecules, perceptions):
        m.info["valid"] = bool(p.valid)
        m.info["connected"] = bool(p.connected)
        if p.smiles:
            m.info["smiles"] = p.smiles
    _save_or_rescue(path, molecules)
    valid = sum(p.valid for p in perceptions)
    from molgym.metrics.chemistry import novelty

    prior = getattr(generator, "prior", None)
    shape_distance = None
    prior_distance = None
    if task_obj is not None and task_obj.kind == "shape":
        from molgym.metrics.shape import shape_distance as chamfer_after_alignment

        points = task_obj.target_array
        shape_distance = float(np.mean([chamfer_after_alignment(m, points) for m in molecules]))
        # mean distance (Å) of the heavy atoms from their nearest target point, averaged over molecules
        prior_distance = float(np.mean([
            np.linalg.norm(m.positions[m.numbers > 1][:, None] - points[None], axis=-1).min(axis=1).mean()
            for m in molecules]))
    elif prior is not None and prior.distances(np.zeros((1, 3))) is not None:
        # mean distance (Å) of the heavy atoms from the prior's shape, averaged over molecules
        prior_distance = float(np.mean([prior.distances(m.positions[m.numbers > 1]).mean() for m in molecules]))
    summary = {
        "command": command,
        "n": len(molecules),
        "seed": seed,
        "seconds": round(elapsed, 2),
        "valid": valid,
        "valid_connected": sum(p.valid and p.connected for p in perceptions),
        "unique_valid": len({p.smiles for p in perceptions if p.valid}),
        "novelty": novelty([p.smiles for p in perceptions]),
        "prior_distance": prior_distance,
        "shape_distance": shape_distance,
        "task": task,
        "valid_per_minute": round(60 * valid / elapsed, 2) if elapsed > 0 else None,
        "generator": generator.metadata(),
        "molecules": str(path),
    }
    try:
        write_json(path.with_suffix(".json"), summary)
    except OSError as err:
        raise CLIError(f"wrote the molecules to {path}, but not their summary {path.with_suffix('.json')}: "
                       f"{err}") from None
    shape = "" if prior_distance is None else f", heavy atoms {prior_distance:.2f} Å from the prior"
    print(f"wrote {len(molecules)} molecules to {path} ({valid} valid, {summary['unique_valid']} unique valid, "
          f"{elapsed:.1f} s, {summary['valid_per_minute']} valid/min{shape}); summary: {path.with_suffix('.json')}")
    return 0
