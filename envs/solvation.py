"""``MolGym/Solvation-v0``: place solvent molecules, atom by atom, around a fixed solute."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms

from molgym.chem import bag_from_numbers, bag_size, format_formula, hill_order
from molgym.envs.bags import bag_contains, bag_subtract
from molgym.envs.base import MolecularEnv, check_reset_options, check_settings, task_vocabulary
from molgym.envs.single_bag import parse_task_formula

__all__ = ["SolvationEnv", "solute_from_smiles"]


def solute_from_smiles(smiles: str, seed: int = 0) -> Atoms:
    """A 3D structure (hydrogens added, RDKit ETKDG with ``seed`` then MMFF) of ``smiles``, centred at 0."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"solute={smiles!r} is not a valid SMILES string (or pass an ase.Atoms)")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"RDKit could not embed a 3D structure for solute={smiles!r}")
    AllChem.MMFFOptimizeMolecule(mol)
    pos = mol.GetConformer().GetPositions()
    atoms = Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=pos - pos.mean(axis=0))
    atoms.info["smiles"] = smiles
    return atoms


class SolvationEnv(MolecularEnv):
    """Place solvent molecules around a fixed solute, one atom at a time.

    ## Description

    The canvas starts with a solute (an ``ase.Atoms``, or a SMILES string embedded with RDKit ETKDG and MMFF;
    centred at the origin either way). The bag holds one solvent molecule (``solvent``, e.g. ``H2O``); when it is
    empty it is refilled with the next one, until ``n_solvent`` molecules are placed (MolGym's solvation task).
    A distance penalty keeps the solvent near the solute. Placement rules are those of ``MolGym/SingleBag-v0``
    (:class:`~molgym.envs.single_bag.SingleBagEnv`).

    ## Action Space

    ``Box(4,)`` float32: ``[element_index, x, y, z]`` over ``elements`` (default: the solvent's elements, Hill
    order), as in ``MolGym/SingleBag-v0``; ``env.unwrapped.action_masks()`` marks the elements left in the bag.

    ## Observation Space

    ``Dict`` with ``positions`` (max_atoms, 3) float32, ``atomic_numbers`` (max_atoms,) int64, ``mask``
    (max_atoms,) int8 and ``bag`` (len(elements),) int64, 0 padded, where
    ``max_atoms = len(solute) + n_solvent * len(solvent)``; the solute atoms come first (and count in ``mask``),
    and ``atomic_numbers`` is bounded by the largest atomic number of ``elements`` and the solute.

    ## Rewards

    ``r = -[E(canvas + atom) - E(canvas) - E(atom)] - distance_penalty * max(0, d - max_solute_distance)``,
    where ``d`` is the distance (Å) from the new atom to the nearest solute atom; ``info`` holds
    ``reward_interaction`` and ``reward_distance``. One potential evaluation per step (the canvas is never
    empty). Invalid placements (rules as in ``MolGym/SingleBag-v0``) get ``invalid_reward`` and end the episode;
    a placement whose reward (distance term included) falls below ``min_reward`` gets ``min_reward`` and ends it;
    an ``uncertainty_penalty`` is subtracted. With a ``reference``, the ending step adds
    ``info["reward_reference"]``, making the return the reference's build return (solute to final canvas) plus
    the distance terms and any uncertainty penalty (plus ``invalid_reward`` after an invalid placement).

    ## Starting State

    The solute alone and one solvent molecule in the bag; nothing is random. The solute's energy is evaluated once
    per environment and reused (with a ``reference``, its reference energy too, the first time an ending needs it).
    ``options={"canvas": atoms}`` adds already placed solvent atoms after the solute: whole molecules and at most
    one partial one, fewer than ``n_solvent`` whole ones; the bag then holds the rest of the partial molecule (or
    the next molecule). The reset ``info["solvent_molecules_left"]`` counts the molecules still to place, the one
    in the bag included.

    ## Episode End

    Terminated when ``n_solvent`` molecules are placed, after an invalid placement, a floored step or a step above
    ``uncertainty_threshold`` (``info["terminated_by"]``); never truncated. There is no best-known return for
    this task (``best_known_return`` is ``None``).

    ## Arguments

    ```python
    gymnasium.make("MolGym/Solvation-v0", solute="CC(=O)O", solvent="H2O", n_solvent=4, potential="default")
    ```

    - ``solute``: ``ase.Atoms`` or SMILES (default methanol, ``"CO"``); it must fit in the workspace.
    - ``solvent``: formula of one solvent molecule (default ``"H2O"``).
    - ``n_solvent``: number of solvent molecules to place (>= 1, default 4).
    - ``distance_penalty``: eV per Å beyond ``max_solute_distance`` (>= 0, default 1).
    - ``max_solute_distance``: Å from the nearest solute atom within which there is no penalty (default 4).
    - ``workspace``: half-width of the placement cube in Å (default 10).
    - ``potential``, ``elements``, ``invalid_reward``, ``min_reward``, ``render_mode``, ``device``,
      ``uncertainty_penalty``, ``uncertainty_threshold``, ``reference``: as in ``MolGym/SingleBag-v0``.

    ## Vectorized environment

    ``gymnasium.make_vec("MolGym/Solvation-v0", num_envs=64, solute="CO", n_solvent=4)`` gives
    :class:`molgym.envs.vector.MolGymVectorEnv` over this class: one batched potential call per step for all sub-environments
    (see ``MolGym/SingleBag-v0``). A SMILES solute is embedded once per sub-environment with the same seed, so
    all start from the same solute structure. ``molgym.envs.sb3.make_sb3_vec_env`` does the same for Stable-Baselines3.
    """

    def __init__(
        self,
        solute: str | Atoms = "CO",
        solvent: str = "H2O",
        n_solvent: int = 4,
        distance_penalty: float = 1.0,
        max_solute_distance: float = 4.0,
        elements: Sequence[str] | None = None,
        workspace: float = 10.0,
        **settings: Any,
    ):
        if isinstance(solute, Atoms):
            if len(solute) == 0 or not np.all(np.isfinite(solute.positions)):
                raise ValueError("solute must be a non-empty ase.Atoms with finite positions")
            solute = Atoms(numbers=solute.numbers, positions=solute.positions - solute.positions.mean(axis=0))
        elif isinstance(solute, str):
            solute = solute_from_smiles(solute)
        else:
            raise ValueError(f"solute must be an ase.Atoms or a SMILES string, got {type(solute).__name__}")
        if np.any(np.abs(solute.positions) > workspace):
            raise ValueError(f"the solute does not fit in the workspace [-{workspace}, {workspace}]^3 Å")
        if int(n_solvent) != n_solvent or n_solvent < 1:
            raise ValueError(f"n_solvent must be a positive integer, got {n_solvent!r}")
        if not np.isfinite(distance_penalty) or distance_penalty < 0:
            raise ValueError(f"distance_penalty must be >= 0 (eV/Å), got {distance_penalty!r}")
        if not np.isfinite(max_solute_distance) or max_solute_distance <= 0:
            raise ValueError(f"max_solute_distance must be > 0 (Å), got {max_solute_distance!r}")
        self.solute = solute
        self.solvent_bag = parse_task_formula(solvent, "solvent")
        self.solvent = format_formula(self.solvent_bag)
        self.n_solvent = int(n_solvent)
        self.distance_penalty = float(distance_penalty)
        self.max_solute_distance = float(max_solute_distance)
        vocabulary = task_vocabulary(elements, list(self.solvent_bag), f"the solvent {self.solvent}")
        self._molecules_left = 0
        super().__init__(
            **check_settings(type(self), settings),
            elements=vocabulary,
            max_atoms=len(solute) + self.n_solvent * bag_size(self.solvent_bag),
            workspace=workspace,
            extra_numbers=solute.numbers.tolist(),
        )
        self._solute_energy: tuple[float, np.ndarray | None] | None = None

    def _new_episode(self, options: Mapping[str, Any]) -> tuple[dict[str, int], Atoms]:
        check_reset_options(options, ("canvas",))
        self._molecules_left = self.n_solvent - 1
        return dict(self.solvent_bag), self.solute.copy()

    def _apply_canvas(self, bag: dict[str, int], canvas: Atoms) -> dict[str, int]:
        placed = bag_from_numbers(canvas.numbers)
        complete = 0
        while bag_contains(placed, self.solvent_bag) and placed:
            placed = bag_subtract(placed, self.solvent_bag)
            complete += 1
        if not bag_contains(self.solvent_bag, placed):
            raise ValueError(
                f"the start canvas is not whole {self.solvent} molecules plus part of one "
                f"(left over: {format_formula(placed)})"
            )
        left = bag_subtract(self.solvent_bag, placed) if placed else dict(self.solvent_bag)
        molecules_left = self.n_solvent - complete - 1
        if molecules_left < 0:
            raise ValueError(f"the start canvas already holds {complete} of {self.n_solvent} solvent molecules")
        self._molecules_left = molecules_left
        return hill_order(left)

    def _structure_energy(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray | None]:
        if len(numbers) == len(self.solute):  # the solute alone: evaluated once, reused every episode
            if self._solute_energy is None:
                self._solute_energy = super()._structure_energy(numbers, positions)
            return self._solute_energy
        return super()._structure_energy(numbers, positions)

    def _extra_terms(self, number: int, position: np.ndarray) -> dict[str, float]:
        d = float(np.linalg.norm(self.solute.positions - position, axis=1).min())
        return {"distance": -self.distance_penalty * max(0.0, d - self.max_solute_distance)}

    def _on_bag_empty(self) -> bool:
        if self._molecules_left > 0:
            self._molecules_left -= 1
            self._bag = dict(self.solvent_bag)
            return True
        return False

    def _formula_of_task(self) -> str | None:
        return None

    def _task_info(self) -> dict[str, Any]:
        return {"solvent_molecules_left": int(self._molecules_left) + 1}
