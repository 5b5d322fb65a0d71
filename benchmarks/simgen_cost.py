"""SiMGen's cost per valid molecule at small and large n, and how soon its progress first moves.

Each measurement is a fresh Python process (as a user's ``molgym generate simgen`` is), so loading torch, MACE and
the model and reading (or computing) the cached reference descriptors are counted. ``s/valid`` is the wall time of
``SiMGen(...).generate(task, n, seed, progress=...)`` (model loading included, Python start-up and imports of
molgym excluded) divided by the number of valid molecules (``molgym.metrics.chemistry.perceive``); ``first
progress`` is the time of the first progress call, ``calls`` how many calls there were.

``--baseline DIR`` also runs an older source tree (e.g. ``git archive COMMIT | tar -x -C DIR``) with the same
settings, each n of both trees measured back to back (the shared machine's load changes by the minute), so the
figures compare side by side.

    nice -n 10 python benchmarks/simgen_cost.py                               # n = 3 and 100, 6 heavy atoms
    mkdir -p /tmp/simgen_base && git archive e6f18d8 | tar -x -C /tmp/simgen_base
    nice -n 10 python benchmarks/simgen_cost.py --baseline /tmp/simgen_base --n 3 100 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# Runs in the child process: import molgym from SOURCE (its molgym/, agents/ and envs/ as molgym.agents/.envs),
# generate, and print one JSON line.
_WORKER = r"""
import importlib.util, json, sys, time
source, n, atoms, seed, threads, model, task = sys.argv[1:8]
if source:
    sys.path.insert(0, source)
    import molgym
    assert molgym.__file__.startswith(source), molgym.__file__
    for sub, folder in (("agents", "agents"), ("envs", "envs")):
        spec = importlib.util.spec_from_file_location(f"molgym.{sub}", f"{source}/{folder}/__init__.py",
                                                      submodule_search_locations=[f"{source}/{folder}"])
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"molgym.{sub}"] = module
        spec.loader.exec_module(module)
from molgym.agents.simgen import SiMGen
from molgym.metrics.chemistry import perceive
task_obj = None
if task:
    from molgym.benchmark import get_task
    task_obj = get_task(task)
calls = []
start = time.perf_counter()
gen = SiMGen(model=model, n_atoms=int(atoms) if atoms else None, threads=int(threads))
mols = gen.generate(task_obj, int(n), int(seed), progress=lambda k: calls.append(time.perf_counter()))
seconds = time.perf_counter() - start
ps = [perceive(m) for m in mols]
print(json.dumps({"n": len(mols), "seconds": seconds, "valid": sum(p.valid for p in ps),
                  "valid_connected": sum(p.valid and p.connected for p in ps),
                  "first_progress": (calls[0] - start) if calls else None, "progress_calls": len(calls),
                  "phases": {k: round(v, 2) for k, v in gen.timings.items()},
                  "code": str(__import__("molgym.agents.simgen.generator", fromlist=["_"]).__file__)}))
"""


def measure(source: str, n: int, args) -> dict:
    cmd = [sys.executable, "-c", _WORKER, source, str(n), "" if args.atoms is None else str(args.atoms),
           str(args.seed), str(args.threads), args.model, args.task or ""]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker failed ({source or 'this tree'}, n={n}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[3, 100], help="numbers of molecules (default 3 100)")
    parser.add_argument("--atoms", type=int, default=6, help="heavy atoms per molecule (default 6)")
    parser.add_argument("--task", default=None, help="a benchmark task instead of --atoms (e.g. qm9-unconditional)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every measurement (medians are printed)")
    parser.add_argument("--baseline", default=None, help="source tree of an older version to compare with")
    args = parser.parse_args()
    if args.task:
        args.atoms = None
    trees = [("this tree", "")]
    if args.baseline:
        base = str(Path(args.baseline).resolve())
        if not (Path(base) / "agents" / "simgen" / "generator.py").is_file():
            parser.error(f"--baseline {args.baseline!r} is not a molgym source tree (no agents/simgen/generator.py)")
        trees.insert(0, ("baseline", base))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}; torch threads "
          f"{args.threads}; {'task ' + args.task if args.task else f'{args.atoms} heavy atoms'}, seed {args.seed}")
    results: dict[tuple[str, int], list[dict]] = {}
    for _round in range(args.rounds):
        for n in args.n:
            for label, source in trees:
                t0 = time.time()
                r = measure(source, n, args)
                results.setdefault((label, n), []).append(r)
                print(f"  [{time.strftime('%H:%M:%S', time.localtime(t0))}] {label:9s} n={n:4d}: {r['seconds']:7.1f} s, "
                      f"{r['valid']} valid ({r['valid_connected']} and connected), first progress "
                      f"{r['first_progress']:.1f} s, {r['progress_calls']} progress calls, phases {r['phases']}",
                      flush=True)
    print("\nseconds per valid molecule (median over rounds):")
    for n in args.n:
        row = []
        for label, _source in trees:
            runs = results[(label, n)]
            per_valid = sorted(r["seconds"] / max(r["valid"], 1) for r in runs)[len(runs) // 2]
            first = sorted(r["first_progress"] for r in runs)[len(runs) // 2]
            row.append((label, per_valid, first))
        text = "; ".join(f"{label} {pv:.2f} s/valid (first progress after {fp:.1f} s)" for label, pv, fp in row)
        if len(row) == 2:
            text += f"; ratio baseline / this tree {row[0][1] / row[1][1]:.2f}"
        print(f"  n={n}: {text}")


if __name__ == "__main__":
    main()
