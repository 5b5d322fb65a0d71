"""Where a greedy molecule's skeleton bonds were placed: against its GFN2-xTB minimum and against the step reward.

A trained agent's C7 molecules release 1-3 eV when relaxed under GFN2-xTB, mostly from heavy-atom bond lengths and
angles (``xtb_strain.py --split``). Two explanations predict different bond lengths:

- the agent follows the per-step reward: each skeleton atom is placed on a canvas that is still a radical (the
  hydrogens come last), where the interaction energy prefers short, multiple-bond distances;
- the agent hedges: when it places a bond it does not yet know whether the bond will end single or double (that is
  decided by later placements), and the placement that does best on average over its own sampled futures sits
  between the two lengths, so final double bonds come out long and single bonds short.

For the first frame marked ``mode=greedy`` of each ``molecules.xyz`` given (``molgym train`` writes it), this relaxes
the molecule under GFN2-xTB and, for every heavy-atom bond (atoms in placement order, so the later atom of a bond was
placed on the canvas of the atoms before it), prints the placed length, the relaxed length, the bond's type in the
relaxed molecule as RDKit perceives it (``C=C``, ``C-O``, ...; ``?`` when it is not valid or lost the bond), and
the length GFN2-xTB's step reward prefers: the later atom moved along the placed bond direction on its own canvas,
the energy minimised over a 0.01 Å grid from 0.9 to 1.9 Å (the step reward is minus that energy's change, so its
maximum is the energy's minimum). It ends with the mean of placed - relaxed and of placed - preferred per bond type.

    python benchmarks/skeleton_bonds.py runs/side/cor-C7H10O2-s2/molecules.xyz runs/side/xtb-C7H10O2-s1/molecules.xyz

About 15 s per C7 molecule on one core.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

_ORDER = {1.0: "-", 1.5: ":", 2.0: "=", 3.0: "#"}


def _greedy_frame(path: str):
    import ase.io

    for atoms in ase.io.read(path, index=":"):
        if atoms.info.get("mode") == "greedy":
            return atoms
    return None


def _preferred_length(atoms, i: int, j: int, xtb) -> float:
    """The distance from ``i`` along the placed ``i -> j`` direction that minimises the energy of the canvas
    ``atoms[:j + 1]`` (the canvas ``j`` was placed on, plus ``j``)."""
    import numpy as np

    u = atoms.positions[j] - atoms.positions[i]
    u /= np.linalg.norm(u)
    grid = np.arange(0.9, 1.9001, 0.01)
    trials = []
    for d in grid:
        trial = atoms[: j + 1]  # a new Atoms: the canvas j was placed on, plus j
        trial.positions[j] = atoms.positions[i] + d * u
        trials.append(trial)
    energies = xtb.energies(trials)
    return float(grid[int(np.argmin(energies))])


def bond_rows(atoms, xtb) -> list[dict]:
    """One row per heavy-atom bond of ``atoms`` (see the module docstring)."""
    from molgym.metrics.bonds import connectivity
    from molgym.metrics.chemistry import perceive
    from molgym.metrics.physics import relax

    relaxed = relax(atoms, xtb, fmax=0.05, steps=300).atoms
    mol = perceive(relaxed).mol
    bonded = connectivity(atoms)
    symbols = atoms.get_chemical_symbols()
    rows = []
    for j in range(len(atoms)):
        for i in range(j):
            if not bonded[i, j] or atoms.numbers[i] == 1 or atoms.numbers[j] == 1:
                continue
            bond = None if mol is None else mol.GetBondBetweenAtoms(i, j)
            order = "?" if bond is None else _ORDER.get(bond.GetBondTypeAsDouble(), "?")
            pair = sorted((symbols[i], symbols[j]))
            rows.append({"bond": f"{symbols[i]}{i}-{symbols[j]}{j}", "type": f"{pair[0]}{order}{pair[1]}",
                         "placed": float(atoms.get_distance(i, j)), "relaxed": float(relaxed.get_distance(i, j)),
                         "preferred": _preferred_length(atoms, i, j, xtb)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("molecules", nargs="+", help="molgym train molecules.xyz files (their greedy frame is used)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy, torch and tblite load
    missing = [p for p in args.molecules if not os.path.isfile(p)]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    frames = {p: _greedy_frame(p) for p in args.molecules}
    without = [p for p, a in frames.items() if a is None]
    if without:
        parser.error(f"no frame marked mode=greedy in: {', '.join(without)}")

    import numpy as np

    from molgym.potentials import load_potential

    xtb = load_potential("xtb")
    by_type: dict[str, list[tuple[float, float]]] = defaultdict(list)
    print("| molecule | bond | type (relaxed) | placed (Å) | relaxed (Å) | step reward prefers (Å) |")
    print("|---|---|---|---:|---:|---:|")
    for path, atoms in frames.items():
        for row in bond_rows(atoms, xtb):
            print(f"| {path} | {row['bond']} | {row['type']} | {row['placed']:.3f} | {row['relaxed']:.3f} | "
                  f"{row['preferred']:.2f} |", flush=True)
            by_type[row["type"]].append((row["placed"] - row["relaxed"], row["placed"] - row["preferred"]))
    print("\n| bond type (relaxed) | bonds | placed - relaxed, mean (Å) | mean abs (Å) | placed - preferred, mean (Å) |")
    print("|---|---:|---:|---:|---:|")
    for kind, pairs in sorted(by_type.items()):
        d = np.array(pairs)
        print(f"| {kind} | {len(d)} | {d[:, 0].mean():+.3f} | {np.abs(d[:, 0]).mean():.3f} | {d[:, 1].mean():+.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
