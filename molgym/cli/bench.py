"""``molgym bench``: run a benchmark suite (resumable, local processes or Ray) and write its results."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add ``molgym bench`` to the top-level sub-parsers."""
    p = subparsers.add_parser(
        "bench",
        help="run a benchmark suite: generators x tasks x seeds, results.json + samples + report",
        description="Run every (generator, task, seed) job of a suite and write OUT/results.json, OUT/jobs/*.json, "
        "OUT/samples/*.extxyz and the report (report.md, report.html). Rerunning the same command resumes: "
        "finished jobs are not rerun. OUT/settings.json records the settings; a rerun into OUT with other settings "
        "(--suite, --tasks, --seeds, --n, --potential, a recorded generator's --option, or leaving out a recorded "
        "generator) is refused unless --overwrite; adding generators resumes.",
    )
    p.add_argument("--suite", default="quick", help="suite name: quick (CI, < 3 min on 2 cores) or v1 (default quick)")
    p.add_argument("--generators", default=None,
                   help="comma-separated generator names (default: the suite's, random_search,qm9)")
    p.add_argument("--tasks", default=None, help="comma-separated task names to run instead of the suite's")
    p.add_argument("--seeds", default=None, help="comma-separated seeds instead of the suite's")
    p.add_argument("--n", type=int, default=None, help="molecules per job instead of the suite's")
    p.add_argument("--potential", default="auto",
                   help="potential for generators and energy metrics: 'auto' (shipped MACE 'default' when installed, "
                        "else 'xtb'), 'default', 'xtb', 'pm6' or a MACE model file")
    p.add_argument("--option", action="append", default=[], metavar="GEN.KEY=VALUE",
                   help="generator option, e.g. random_search.tries=4 or rl_policy.checkpoint=policy.zip "
                        "(VALUE parsed as JSON when possible); repeatable")
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="local processes or Ray")
    p.add_argument("--address", default=None, help="Ray cluster address (with --executor ray); default: local Ray")
    p.add_argument("--workers", type=int, default=2, help="parallel jobs (local processes or local Ray CPUs)")
    p.add_argument("--out", default="runs/bench", help="output directory (default runs/bench)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the results already in --out (made with other settings) and start fresh")
    p.add_argument("--no-report", action="store_true", help="skip writing report.md/report.html")
    p.add_argument("--list", action="store_true", help="list suites, tasks and generators and exit")
    p.set_defaults(func=cmd_bench)


def _parse_options(items: list[str]) -> dict:
    """``["gen.key=value", ...]`` -> ``{gen: {key: value}}`` (values parsed as JSON when possible)."""
    from molgym.cli import CLIError, split_option

    expected = "GENERATOR.KEY=VALUE, e.g. random_search.tries=4"
    options: dict = {}
    for item in items:
        key, value = split_option(item, expected)
        gen, dot, name = key.partition(".")
        if not dot or not gen or not name:
            raise CLIError(f"malformed --option {item!r}: expected {expected}")
        options.setdefault(gen, {})[name] = value
    return options


def _split(text: str | None) -> list[str] | None:
    """Comma-separated list, or ``None`` for an empty option."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def cmd_bench(args: argparse.Namespace) -> int:
    """Run (or resume) a suite, print a summary, write the report; exit 1 when a job failed."""
    from molgym.benchmark import SUITES, TASKS
    from molgym.generator import available_generators
    from molgym.cli import CLIError

    if args.list:
        print("suites:")
        for s in SUITES.values():
            print(f"  {s.name} v{s.version}: {s.description}")
        print("tasks: " + ", ".join(TASKS) + ", any formula, shape:FILE.xyz[:FORMULA]")
        print("generators: " + ", ".join(sorted(available_generators())))
        return 0
    if args.workers < 1:
        raise CLIError(f"--workers must be >= 1, got {args.workers}")
    if args.n is not None and args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    try:
        seeds = [int(s) for s in _split(args.seeds)] if args.seeds else None
    except ValueError:
        raise CLIError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None

    import os

    # One OpenMP thread per job (xTB): jobs already run in parallel, and oversubscribed threads on a busy
    # machine make each xTB call tens of times slower. Set OMP_NUM_THREADS yourself to override.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MOLGYM_XTB_WORKERS"):
        os.environ.setdefault(var, "1")
    from molgym.benchmark.runner import run_suite

    results = run_suite(
        args.suite, _split(args.generators), args.out, potential=args.potential, executor=args.executor,
        workers=args.workers, address=args.address, tasks=_split(args.tasks), seeds=seeds, n_samples=args.n,
        generator_options=_parse_options(args.option), overwrite=args.overwrite,
    )
    print(f"{results['jobs_finished']}/{results['jobs_planned']} jobs; potential {results['potential']['name']} "
          f"({results['potential']['selected_because']})")
    for gen, row in results["overall"].items():
        vc = row.get("valid_connected")
        ms = row.get("molecule_stable")
        print(f"  {gen:>16}: valid+connected {100 * vc:.1f}%  molecule-stable {100 * ms:.1f}%  "
              f"({row['tasks']} tasks)" if vc is not None and ms is not None else f"  {gen:>16}: no valid molecules")
    print(f"wrote {args.out}/results.json")
    for skip in results.get("skipped_jobs", []):
        print(f"  skipped {skip['generator']} on {skip['task']}: {skip['reason']}")
    for failure in results.get("failed_jobs", []):
        print(f"  FAILED {failure['job_id']}: {failure['error']}")
    if not args.no_report:
        from molgym.benchmark.report import write_report

        md, html = write_report(args.out)
        print(f"wrote {md} and {html}")
    if results.get("failed_jobs"):
        print(f"molgym: {len(results['failed_jobs'])} job(s) failed; rerun the same command to retry them")
        return 1
    return 0
