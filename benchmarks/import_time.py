"""How long ``import molgym`` takes, and what it pulls in, measured in fresh interpreters.

    python benchmarks/import_time.py [--repeats 7]

Prints the median wall time of ``python -c "import molgym"`` next to a bare ``python -c "pass"`` (the
interpreter's own start-up), and checks that torch, MACE, tblite and RDKit were not imported. Target: under
1.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def _time(code: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    bare = _time("pass", args.repeats)
    full = _time("import molgym", args.repeats)
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, molgym; print(' '.join(m for m in ('torch', 'mace', 'e3nn', 'tblite', "
         "'rdkit', 'stable_baselines3') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    print(f"python -c pass          {bare:6.3f} s")
    print(f"python -c 'import molgym' {full:6.3f} s  (import alone: {full - bare:.3f} s; target < 1.5 s)")
    print(f"heavy modules imported: {heavy or 'none'}")


if __name__ == "__main__":
    main()
