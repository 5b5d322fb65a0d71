"""Greedy direction on the quadrature grid vs refined to the density's maximum, on the shipped checkpoints.

Plays each shipped covariant checkpoint greedily on its formula twice: with the greedy direction rounded to the
best node of the spherical quadrature grid (molgym's behaviour before 2026-12-03; ``mode(tol=inf)`` skips the
refinement) and refined to the density's maximum (the default). Each greedy molecule is judged by GFN2-xTB like
``molgym train-report --referee xtb`` (fraction of the xTB best-known return, validity, energy released by xTB
relaxation). For the refined molecule it also says where the strain sits: rms deviation of bond lengths (Å) and
bond angles (degrees) from the relaxed molecule, the energy released by a relaxation with every bond length
frozen and by one where only the hydrogens move (the rest sits in the heavy-atom skeleton), and whether the policy
placed every heavy atom before the first hydrogen; and how the shipped ``default`` MACE model's step rewards differ
from xTB's along the molecule's own build order, summed over heavy-atom steps and over hydrogen steps (the dense
shaping's bias by kind of step). Prints one markdown table; a few minutes on one core.

    python benchmarks/greedy_direction.py                 # all shipped checkpoints
    python benchmarks/greedy_direction.py C7H8N2O2 C4H7N  # some
"""

from __future__ import annotations

import argparse
import math
from functools import partialmethod

import numpy as np


def _strain_split(atoms, referee) -> dict[str, float]:
    """Bond-length and bond-angle deviations from the xTB-relaxed molecule, and the drop with bonds frozen."""
    from ase.constraints import FixAtoms, FixBondLengths
    from ase.optimize import BFGS

    from molgym.metrics.bonds import connectivity
    from molgym.metrics.physics import relax

    free = relax(atoms, referee, fmax=0.05, steps=300)
    start, end = atoms, free.atoms
    graph = connectivity(end)  # molgym's bond rule (the validity metric's), on the relaxed molecule
    bonds = [(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(graph)))]
    d_bond = [start.get_distance(i, j) - end.get_distance(i, j) for i, j in bonds]
    d_angle = []
    for centre in range(len(end)):
        nb = np.flatnonzero(graph[centre])
        for x in range(len(nb)):
            for y in range(x + 1, len(nb)):
                d_angle.append(start.get_angle(nb[x], centre, nb[y]) - end.get_angle(nb[x], centre, nb[y]))
    frozen = start.copy()
    frozen.set_constraint(FixBondLengths([list(b) for b in bonds]))
    frozen.calc = referee.as_calculator()
    BFGS(frozen, logfile=None).run(fmax=0.05, steps=300)
    heavy = np.flatnonzero(start.numbers > 1)
    skeleton = start.copy()  # only the hydrogens move: what is left of the strain sits in the heavy-atom skeleton
    skeleton.set_constraint(FixAtoms(indices=heavy))
    skeleton.calc = referee.as_calculator()
    BFGS(skeleton, logfile=None).run(fmax=0.05, steps=300)
    # the canvas keeps placement order: were all heavy atoms placed before the first hydrogen?
    hydrogens = np.flatnonzero(start.numbers == 1)
    return {"bond_rms": float(np.sqrt(np.mean(np.square(d_bond)))),
            "angle_rms": float(np.sqrt(np.mean(np.square(d_angle)))) if d_angle else 0.0,
            "frozen_drop": free.start_energy - float(frozen.get_potential_energy()),
            "hydrogen_drop": free.start_energy - float(skeleton.get_potential_energy()),
            "heavy_first": bool(len(hydrogens) == 0 or len(heavy) == 0 or heavy.max() < hydrogens.min())}


def _shaping_error(atoms, referee, potential) -> tuple[float, float]:
    """Sum of (potential - referee) step rewards along the molecule's own build order (the canvas keeps placement
    order), over the heavy-atom steps and over the hydrogen steps (eV): how the dense shaping the agent learned
    from misprices each kind of step, on its own trajectory."""
    from ase import Atoms

    from molgym.reward import isolated_atom_energies, prefix_rewards

    rewards = []
    for model in (potential, referee):
        e_atom = isolated_atom_energies(model, atoms.numbers)
        prefixes = [Atoms(numbers=atoms.numbers[:k], positions=atoms.positions[:k]) for k in range(2, len(atoms) + 1)]
        energies = [e_atom[int(atoms.numbers[0])], *model.energies(prefixes)]
        rewards.append(prefix_rewards(np.array(energies), np.array([e_atom[int(z)] for z in atoms.numbers])))
    error = rewards[0] - rewards[1]
    heavy = atoms.numbers > 1
    return float(error[heavy].sum()), float(error[~heavy].sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("formulas", nargs="*", help="shipped formulas (default: all)")
    args = parser.parse_args(argv)

    from molgym.agents.common.distributions import SphericalHarmonicDensity
    from molgym.agents.common.referee import greedy_checkpoint_molecule, judge_molecules
    from molgym.agents.shipped import shipped_checkpoint, shipped_checkpoints
    from molgym.potentials import load_potential

    shipped = shipped_checkpoints()
    unknown = [f for f in args.formulas if f not in shipped]
    if unknown:
        parser.error(f"no shipped checkpoint for {', '.join(unknown)}; shipped: {', '.join(sorted(shipped))}")
    referee = load_potential("xtb")
    shaping = load_potential("default")
    refined_mode = SphericalHarmonicDensity.mode
    print("| formula | fraction, grid | fraction, refined | relaxation drop, grid (eV) | relaxation drop, refined "
          "(eV) | bond rms (Å) | angle rms (deg) | drop, bonds frozen (eV) | drop, only H move (eV) | heavy atoms "
          "placed first | MACE - xTB step rewards, heavy-atom steps / H steps (eV) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for formula in args.formulas or sorted(shipped):
        judged = {}
        try:
            for name, mode in (("grid", partialmethod(refined_mode, tol=math.inf)), ("refined", refined_mode)):
                SphericalHarmonicDensity.mode = mode
                atoms = greedy_checkpoint_molecule(shipped_checkpoint(formula), formula, referee)
                judged[name] = (atoms, judge_molecules([atoms], referee)[0])
        finally:
            SphericalHarmonicDensity.mode = refined_mode
        split = _strain_split(judged["refined"][0], referee)
        heavy_error, hydrogen_error = _shaping_error(judged["refined"][0], referee, shaping)
        g, r = judged["grid"][1], judged["refined"][1]
        valid = "" if g["valid"] and r["valid"] else f" (valid: grid {g['valid']}, refined {r['valid']})"
        print(f"| {formula}{valid} | {g['referee_fraction']:.3f} | {r['referee_fraction']:.3f} | "
              f"{g['relax_drop']:.3f} | {r['relax_drop']:.3f} | {split['bond_rms']:.3f} | {split['angle_rms']:.1f} | "
              f"{split['frozen_drop']:.3f} | {split['hydrogen_drop']:.3f} | {'yes' if split['heavy_first'] else 'no'} | "
              f"{heavy_error:+.2f} / {hydrogen_error:+.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
