"""The shared machinery of molgym's atom-placement environments.

:class:`MolecularEnv` holds a *canvas* (the atoms placed so far) and a *bag* (the atoms still to place). Each step
places one atom from the bag at an absolute Cartesian position; the reward is MolGym's interaction energy
(:func:`molgym.reward.interaction_reward`) with ``E(canvas)`` carried over from the previous step, so a step costs
exactly one potential evaluation. A step is split in two halves, :meth:`MolecularEnv._begin_step` (validate the
action, return the structure to evaluate) and :meth:`MolecularEnv._finish_step` (turn its energy into a reward),
so that :mod:`molgym.envs.vector` can evaluate the structures of all sub-environments in one batched call.

When the potential provides uncertainties (a committee, :mod:`molgym.potentials.committee`), the same call also
returns the committee members' energies; the uncertainty of a step is the calibrated spread of the members'
rewards for that step, reported as ``info["uncertainty"]``, optionally subtracted from the reward
(``uncertainty_penalty``) or used to end the episode (``uncertainty_threshold``).

With a ``reference`` potential (``reference="xtb"``), the per-step rewards stay the potential's, and the step
that ends the episode (any ending: bag empty, invalid placement, reward floor, uncertainty threshold) adds
:func:`molgym.reward.reference_correction`, so the episode's undiscounted return is the reference's build return
of the final canvas plus the rule penalties. That ending needs one reference evaluation of the final canvas;
:mod:`molgym.envs.vector` evaluates those of all sub-environments that end in a step in one call
(:meth:`MolecularEnv._ending_structures` / :meth:`MolecularEnv._settle_ending`).

Subclasses choose the bag of each episode (:meth:`_new_episode`) and may add reward terms (:meth:`_extra_terms`)
or refill the bag (:meth:`_on_bag_empty`).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from ase import Atoms
from gymnasium import spaces

from molgym.chem import atomic_number, bag_from_numbers, element, format_formula, hill_order, symbol
from molgym.potentials.base import Potential
from molgym.potentials.batching import evaluate_batch, evaluate_one
from molgym.reward import (
    build_return,
    interaction_reward,
    isolated_atom_energies,
    placement_problem,
    reference_correction,
    structure_problem,
)
from molgym.envs.potentials import shared_potential

__all__ = ["MolecularEnv", "DEFAULT_INVALID_REWARD", "DEFAULT_MIN_REWARD", "DEFAULT_WORKSPACE", "SHARED_SETTINGS",
           "check_settings", "task_vocabulary"]

#: Reward of an invalid placement (eV); the episode ends with it.
DEFAULT_INVALID_REWARD = -1.0
#: Floor of a valid placement's reward (eV), as in MolGym: a step that scores worse gets this and ends the
#: episode. Equal to the invalid reward, so that no placement scores worse than an invalid one.
DEFAULT_MIN_REWARD = -1.0
#: Half-width (Å) of the cube ``[-w, w]^3`` in which atoms may be placed.
DEFAULT_WORKSPACE = 8.0


@dataclass
class _Pending:
    """What :meth:`MolecularEnv._begin_step` decided, waiting for an energy."""

    number: int = 0
    position: np.ndarray | None = None
    invalid_reason: str = ""
    needs_energy: bool = False


@dataclass
class _Ending:
    """An episode that ended and waits for its reference correction (:meth:`MolecularEnv._settle_ending`)."""

    result: tuple
    final: Atoms
    start: Atoms | None  # the start structure, when its reference energy is not known yet


class MolecularEnv(gym.Env):
    """Base class: build a molecule atom by atom in 3D (see the subclasses for the tasks and the full docs).

    Args:
        potential: a potential spec (``"default"``, ``"xtb"``, ``"pm6"``, a MACE model path) or a ``Potential``;
            specs are loaded once per process and shared between environments.
        elements: the element vocabulary of the action space, in order (default: the task's elements in Hill
            order); action ``[k, x, y, z]`` places ``elements[k]``.
        max_atoms: size of the padded observation arrays (at least the largest canvas of the task).
        workspace: atoms are placed inside the cube ``[-workspace, workspace]^3`` (Å).
        invalid_reward: reward of an invalid placement (ends the episode).
        min_reward: floor of a valid placement's reward (eV): a step whose reward falls below it gets
            ``min_reward`` and ends the episode (``info["terminated_by"] == "min_reward"``; the atom stays on
            the canvas). ``None`` for no floor.
        render_mode: ``None``, ``"rgb_array"`` or ``"ansi"``.
        device: device for a MACE potential given by spec.
        extra_numbers: atomic numbers that appear on the canvas without being placed (a solute), checked
            against the potential's species and included in the observation's bounds.
        uncertainty_penalty: eV of reward removed per eV of step uncertainty (>= 0; needs a potential with
            uncertainties, e.g. the default MACE model with its committee).
        uncertainty_threshold: end the episode (``info["terminated_by"] == "uncertainty"``) after a step whose
            uncertainty exceeds this many eV (> 0, or ``None`` for never).
        reference: a potential spec (``"xtb"``, ``"pm6"``, a MACE model path) or ``Potential`` whose build return
            the episode return equals (see the module docstring), or ``None`` (default) for the potential's own
            rewards only. A reference identical to ``potential`` is a no-op (the correction is exactly 0).
    """

    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(
        self,
        *,
        potential: str | os.PathLike | Potential = "default",
        elements: Sequence[str],
        max_atoms: int,
        workspace: float = DEFAULT_WORKSPACE,
        invalid_reward: float = DEFAULT_INVALID_REWARD,
        min_reward: float | None = DEFAULT_MIN_REWARD,
        render_mode: str | None = None,
        device: str | None = None,
        extra_numbers: Sequence[int] = (),
        uncertainty_penalty: float = 0.0,
        uncertainty_threshold: float | None = None,
        reference: str | os.PathLike | Potential | None = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        if not np.isfinite(workspace) or workspace <= 0:
            raise ValueError(f"workspace must be a positive number of Å, got {workspace!r}")
        if not np.isfinite(invalid_reward):
            raise ValueError(f"invalid_reward must be a finite number, got {invalid_reward!r}")
        floor = None
        if min_reward is not None:
            try:
                floor = float(min_reward)
            except (TypeError, ValueError):
                floor = math.nan
            if not math.isfinite(floor):
                raise ValueError(f"min_reward must be a finite number of eV or None (no floor), got {min_reward!r}")
        elements = [element(s).symbol for s in elements]  # raises for unknown symbols
        if len(set(elements)) != len(elements) or not elements:
            raise ValueError(f"elements must be a non-empty list of distinct symbols, got {elements}")
        self.elements: tuple[str, ...] = tuple(elements)
        self.element_numbers = np.array([atomic_number(s) for s in self.elements], dtype=np.int64)
        self.max_atoms = int(max_atoms)
        self.workspace = float(workspace)
        self.invalid_reward = float(invalid_reward)
        self.min_reward = floor
        self.render_mode = render_mode
        self.device = device
        self.uncertainty_penalty, self.uncertainty_threshold = check_uncertainty_options(
            uncertainty_penalty, uncertainty_threshold
        )

        self._potential_spec = potential if isinstance(potential, Potential) else str(potential)
        self.potential = shared_potential(potential, device=device)
        self._check_species(set(self.element_numbers.tolist()) | {int(z) for z in extra_numbers})
        self._atom_energy = isolated_atom_energies(self.potential, self.element_numbers.tolist())
        numbers = set(self.element_numbers.tolist()) | {int(z) for z in extra_numbers}
        self._reference_spec, self.reference = _load_reference(reference, self.potential, device, numbers)
        if self.reference is not None:
            isolated_atom_energies(self.reference, sorted(numbers))  # computed (and cached) before any episode
        self._reference_start_energy: dict[bytes, float] = {}  # E_ref of start structures (a solute), by content
        #: whether each evaluation also gives committee energies (then ``info["uncertainty"]`` is reported)
        self.reports_uncertainty = bool(getattr(self.potential, "provides_uncertainty", False))
        if (self.uncertainty_penalty > 0 or self.uncertainty_threshold is not None) and not self.reports_uncertainty:
            raise ValueError(
                f"uncertainty_penalty={self.uncertainty_penalty} / uncertainty_threshold={self.uncertainty_threshold} "
                f"need a potential with uncertainties, and {self.potential.name} has none (use potential='default' "
                "with its shipped committee, or a CommitteeMACEPotential)"
            )

        max_z = int(max([*self.element_numbers.tolist(), *[int(z) for z in extra_numbers]]))
        w = np.float32(self.workspace)
        self.observation_space = spaces.Dict(
            {
                "positions": spaces.Box(-w, w, shape=(self.max_atoms, 3), dtype=np.float32),
                "atomic_numbers": spaces.Box(0, max_z, shape=(self.max_atoms,), dtype=np.int64),
                "mask": spaces.MultiBinary(self.max_atoms),
                "bag": spaces.Box(0, self.max_atoms, shape=(len(self.elements),), dtype=np.int64),
            }
        )
        low = np.array([0.0, -w, -w, -w], dtype=np.float32)
        high = np.array([len(self.elements) - 1, w, w, w], dtype=np.float32)
        self.action_space = spaces.Box(low, high, dtype=np.float32)

        self._numbers = np.zeros(0, dtype=np.int64)
        self._positions = np.zeros((0, 3), dtype=np.float64)
        self._rewards: list[float] = []
        self._bag: dict[str, int] = {}
        self._energy = 0.0
        self._canvas_dev: np.ndarray | None = None  # committee members' E(canvas) minus E(canvas)
        self._return = 0.0
        self._done = True
        self._pending: _Pending | None = None
        self._ending: _Ending | None = None
        self._n_start = 0  # atoms of the start structure (not placed by the episode)
        self._start_energy = 0.0  # E(start structure) under the potential
        self._floor_total = 0.0  # the min_reward floor terms received this episode
        self._frames: list[tuple] = []
        self._task_formula: str | None = None
        self.best_known = None
        self._best_known_by_formula: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ set-up
    def _check_species(self, numbers: set[int]) -> None:
        missing = sorted(numbers - set(self.potential.species))
        if missing:
            raise ValueError(
                f"potential {self.potential.name} does not cover {', '.join(symbol(z) for z in missing)}; "
                f"it covers atomic numbers {sorted(self.potential.species)[:20]}"
            )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if isinstance(self._potential_spec, str):
            state["potential"] = None  # reloaded (from the per-process cache) on unpickling
        if isinstance(self._reference_spec, str):
            state["reference"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.potential is None:
            self.potential = shared_potential(self._potential_spec, device=self.device)
        if self.reference is None and isinstance(self._reference_spec, str):
            self.reference = shared_potential(self._reference_spec, device=self.device)

    # ----------------------------------------------------------------------------------- hooks for subclasses
    def _new_episode(self, options: Mapping[str, Any]) -> tuple[dict[str, int], Atoms]:
        """The bag and the fixed start structure (may be empty) of a new episode, drawn with ``self.np_random``."""
        raise NotImplementedError

    def _apply_canvas(self, bag: dict[str, int], canvas: Atoms) -> dict[str, int]:
        """The bag left after the atoms of a user-given start ``canvas`` (formula tasks: remove them)."""
        from molgym.envs.bags import bag_contains, bag_subtract

        part = bag_from_numbers(canvas.numbers)
        if not bag_contains(bag, part):
            raise ValueError(
                f"the start canvas {format_formula(part)} is not part of this episode's bag {format_formula(bag)}"
            )
        left = bag_subtract(bag, part)
        if not left:
            raise ValueError(f"the start canvas {format_formula(part)} already uses the whole bag; nothing to place")
        return left

    def _extra_terms(self, number: int, position: np.ndarray) -> dict[str, float]:
        """Additional reward terms of a valid placement (named ``reward_<name>`` in ``info``)."""
        return {}

    def _on_bag_empty(self) -> bool:
        """Called when the bag runs empty after a valid step; return ``True`` if it was refilled."""
        return False

    def _task_info(self) -> dict[str, Any]:
        """Task-specific entries of the reset ``info``."""
        return {}

    # ------------------------------------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode. ``options={"canvas": atoms}`` starts from a partial structure (its atoms leave the
        bag); subclasses accept more options (see their docs). Bad options raise ``ValueError``."""
        super().reset(seed=seed)
        options = dict(options or {})
        bag, start = self._new_episode(options)
        canvas = options.pop("canvas", None)
        numbers = start.numbers.astype(np.int64)
        positions = start.positions.astype(np.float64)
        if canvas is not None:
            if not isinstance(canvas, Atoms):
                raise ValueError(f"options['canvas'] must be an ase.Atoms, got {type(canvas).__name__}")
            self._check_canvas(canvas, numbers, positions)
            bag = self._apply_canvas(bag, canvas)
            numbers = np.concatenate([numbers, canvas.numbers.astype(np.int64)])
            positions = np.concatenate([positions, canvas.positions.astype(np.float64)])
        if len(numbers) + sum(bag.values()) > self.max_atoms:
            raise ValueError(
                f"canvas ({len(numbers)} atoms) + bag ({sum(bag.values())}) exceed max_atoms={self.max_atoms}"
            )
        self._numbers, self._positions = numbers, positions
        self._bag = hill_order(bag)
        self._energy, self._canvas_dev = self._structure_energy(numbers, positions)
        self._start_energy = self._energy
        self._n_start = len(numbers)
        self._floor_total = 0.0
        self._return = 0.0
        self._rewards = [0.0] * len(numbers)
        self._done = False
        self._pending = None
        self._ending = None
        self._frames = [self._frame(step=0, reward=0.0)]
        self._task_formula = self._formula_of_task()
        self.best_known = self._lookup_best_known()
        info = self._info(invalid_reason="", terms={}, uncertainty=0.0)
        info.update(self._task_info())
        info["task_formula"] = self._task_formula or ""
        info["best_known_return"] = None if self.best_known is None else self.best_known.value
        info["best_known"] = self._best_known_note()
        info["reference"] = self.reference_name
        return self._observation(), info

    def step(self, action):
        """Place one atom; see the class docstring for the reward and the invalid placements."""
        structure = self._begin_step(action)
        if structure is None:
            result = self._finish_step(None, "")
        else:
            result = self._finish_step(*evaluate_one(self.potential, structure, self.reports_uncertainty))
        if self._ending is not None:
            needed = self._ending_structures()
            return self._settle_ending(evaluate_batch(self.reference, needed) if needed else ())
        return result

    @property
    def reference_name(self) -> str | None:
        """Name of the potential whose build return the episode return equals (``None``: the potential's own)."""
        return None if self.reference is None else self.reference.name

    @property
    def return_potential(self) -> Potential:
        """The potential the episode return is measured in: the reference when there is one, else the potential
        (best-known returns are looked up for it)."""
        return self.reference if self.reference is not None else self.potential

    def action_masks(self) -> np.ndarray:
        """Boolean mask over :attr:`elements`: which elements are still in the bag (SB3-contrib convention)."""
        return np.array([self._bag.get(s, 0) > 0 for s in self.elements], dtype=bool)

    @property
    def bag(self) -> dict[str, int]:
        """The atoms still to place (a copy)."""
        return dict(self._bag)

    @property
    def canvas(self) -> Atoms:
        """The atoms placed so far, with ``placement_reward`` per atom (a copy)."""
        atoms = Atoms(numbers=self._numbers.copy(), positions=self._positions.copy())
        atoms.arrays["placement_reward"] = np.array(self._rewards, dtype=float)
        atoms.info.update(energy=float(self._energy), episode_return=float(self._return))
        if self._task_formula:
            atoms.info["task_formula"] = self._task_formula
        return atoms

    @property
    def energy(self) -> float:
        """``E(canvas)`` in eV under the environment's potential (0 for an empty canvas)."""
        return float(self._energy)

    def trajectory(self) -> list[Atoms]:
        """Every canvas of the episode so far (frame 0 is the start), ``info`` holding step, element, reward."""
        frames = []
        for numbers, positions, rewards, info in self._frames:
            atoms = Atoms(numbers=numbers, positions=positions)
            atoms.info.update(info)
            atoms.arrays["placement_reward"] = np.array(rewards, dtype=float)
            frames.append(atoms)
        return frames

    def write_molecule(self, path: str | os.PathLike) -> None:
        """Write the current canvas to extended XYZ (per-atom ``placement_reward``, energy, return)."""
        from molgym.io import write_xyz

        write_xyz(path, [self.canvas])

    def write_trajectory(self, path: str | os.PathLike) -> None:
        """Write the episode's trajectory (one frame per step, with its reward) to extended XYZ."""
        from molgym.io import write_xyz

        write_xyz(path, self.trajectory())

    def render(self):
        """``rgb_array``: a picture of the canvas with bonds; ``ansi``: a text table."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' or 'ansi'")
            return None
        from molgym.envs.render import render_ansi, render_rgb

        if self.render_mode == "ansi":
            return render_ansi(self._numbers, self._positions, self._bag, self._energy, self._return)
        formula = format_formula(bag_from_numbers(self._numbers)) if len(self._numbers) else ""
        title = f"{formula}  R={self._return:.2f} eV"
        return render_rgb(self._numbers, self._positions, title=title)

    # ----------------------------------------------------------------------------------- the two-phase step
    def _begin_step(self, action) -> Atoms | None:
        """Validate ``action``; return the structure whose energy the step needs, or ``None`` if it needs none."""
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        pending = _Pending()
        self._pending = pending
        parsed = self._parse_action(action)
        if isinstance(parsed, str):
            pending.invalid_reason = parsed
            return None
        index, position = parsed
        sym = self.elements[index]
        if self._bag.get(sym, 0) <= 0:
            pending.invalid_reason = f"element {sym} is not in the bag ({format_formula(self._bag)})"
            return None
        number = int(self.element_numbers[index])
        problem = placement_problem(_CanvasView(self._numbers, self._positions), number, position)
        if problem:
            pending.invalid_reason = problem
            return None
        pending.number, pending.position = number, position
        if len(self._numbers) == 0:
            return None  # E(single atom) is the cached isolated-atom energy
        pending.needs_energy = True
        return Atoms(
            numbers=np.append(self._numbers, number), positions=np.vstack([self._positions, position[None, :]])
        )

    def _finish_step(self, energy: float | None, error: str = "", members: np.ndarray | None = None):
        """Complete the step started by :meth:`_begin_step` with the energy of its structure (and, for a
        potential with uncertainties, its committee members' energies)."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("_finish_step() without _begin_step()")
        reason = pending.invalid_reason
        if not reason and pending.needs_energy and (energy is None or not np.isfinite(energy)):
            reason = f"potential evaluation failed: {error or f'energy {energy}'}"
        if reason:
            self._done = True
            reward = self.invalid_reward
            self._return += reward
            info = self._info(invalid_reason=reason, terms={"interaction": 0.0, "invalid": reward}, uncertainty=0.0)
            info.update(self._end_info())
            info["terminated_by"] = "invalid"
            return self._end_episode((self._observation(), float(reward), True, False, info))

        e_atom = self._atom_energy[pending.number]
        e_after = float(energy) if pending.needs_energy else e_atom
        interaction = float(interaction_reward(e_after, self._energy, e_atom))
        extra = self._extra_terms(pending.number, pending.position)
        dev_after, sigma = self._step_uncertainty(energy, members, pending.needs_energy)
        if self.uncertainty_penalty > 0:
            extra = {**extra, "uncertainty": -self.uncertainty_penalty * sigma}
        reward = interaction + float(sum(extra.values()))
        # MolGym's floor: a catastrophic placement (atoms squeezed together, far into the repulsive wall) ends
        # the episode at min_reward instead of returning a -50 eV reward that would swamp the value function
        floored = self.min_reward is not None and reward < self.min_reward
        floor_term = self.min_reward - reward if floored else 0.0
        reward += floor_term
        self._floor_total += floor_term
        self._numbers = np.append(self._numbers, pending.number)
        self._positions = np.vstack([self._positions, pending.position[None, :]])
        self._rewards.append(reward)
        self._energy = e_after
        self._canvas_dev = dev_after
        self._return += reward
        sym = symbol(pending.number)
        self._bag[sym] -= 1
        if self._bag[sym] == 0:
            del self._bag[sym]
        self._frames.append(self._frame(step=len(self._frames), reward=reward, element=sym))
        bag_empty = not self._bag and not self._on_bag_empty()
        too_uncertain = self.uncertainty_threshold is not None and sigma > self.uncertainty_threshold
        terminated = bag_empty or too_uncertain or floored
        if terminated:
            self._done = True
        terms = {"interaction": interaction, "invalid": 0.0, **extra, "floor": floor_term}
        info = self._info(invalid_reason="", terms=terms, uncertainty=sigma)
        result = (self._observation(), float(reward), bool(terminated), False, info)
        if terminated:
            info.update(self._end_info())
            info["terminated_by"] = "bag_empty" if bag_empty else "min_reward" if floored else "uncertainty"
            return self._end_episode(result)
        return result

    # ----------------------------------------------------------------------------- the reference correction
    def _end_episode(self, result: tuple) -> tuple:
        """Record the ending for its reference correction (when there is a reference), or return ``result``."""
        if self.reference is None:
            return result
        final = Atoms(numbers=self._numbers.copy(), positions=self._positions.copy())
        start = None
        if self._n_start > 1:
            key = self._start_key()
            if key not in self._reference_start_energy:
                start = Atoms(numbers=self._numbers[: self._n_start], positions=self._positions[: self._n_start])
        self._ending = _Ending(result=result, final=final, start=start)
        return result

    def _start_key(self) -> bytes:
        n = self._n_start
        return self._numbers[:n].tobytes() + self._positions[:n].tobytes()

    def _ending_structures(self) -> list[Atoms]:
        """The structures whose reference energies the pending ending needs: the final canvas, then the start
        structure when its energy is not cached. Empty when no ending is pending or it needs no evaluation
        (nothing placed, or a canvas of one atom, whose energy is the cached isolated-atom energy)."""
        ending = self._ending
        if ending is None or len(ending.final) <= max(1, self._n_start):
            return []
        return [ending.final] + ([ending.start] if ending.start is not None else [])

    def _settle_ending(self, evaluated: Sequence[tuple] = ()) -> tuple:
        """Finish the pending ending with the reference energies of :meth:`_ending_structures` (``evaluated``:
        ``(energy, error, members)`` per structure, as :func:`evaluate_batch` gives) and return its step result,
        the correction added to its reward."""
        ending, self._ending = self._ending, None
        if ending is None:
            raise RuntimeError("_settle_ending() without a pending ending")
        obs, reward, terminated, truncated, info = ending.result
        placed = self._numbers[self._n_start:].tolist()
        potential_return = build_return(self._energy, self._start_energy, [self._atom_energy[z] for z in placed])
        reference_return, error = self._reference_return(ending, placed, evaluated)
        if error:
            # the reference cannot score what was built: the episode scores as an invalid one, whatever the
            # potential said of it (a policy must not gain from structures the reference cannot evaluate)
            correction = self.invalid_reward - self._return
            info.update(invalid=True, invalid_reason=f"reference {self.reference.name} could not evaluate the final "
                        f"canvas: {error}")
        else:
            correction = reference_correction(reference_return, potential_return, self._floor_total)
        self._return += correction
        if self._frames:
            self._frames[-1][3]["episode_return"] = float(self._return)
        info.update(reward_reference=float(correction), potential_return=float(potential_return),
                    reference_return=float(reference_return), reference_failed=bool(error),
                    episode_return=float(self._return))
        return obs, float(reward) + correction, terminated, truncated, info

    def _reference_return(self, ending: _Ending, placed: list[int], evaluated: Sequence[tuple]) -> tuple[float, str]:
        """``(R_ref(final), "")``, or ``(nan, why)`` when the reference failed on a structure it needed."""
        if not placed:
            return 0.0, ""  # nothing placed: no return under any potential
        e_atom = isolated_atom_energies(self.reference, sorted({*placed, *self._numbers[: self._n_start].tolist()}))
        energies = [(e, err) for e, err, *_ in evaluated]
        if any(e is None or not np.isfinite(e) for e, _ in energies):
            return math.nan, next(err or f"energy {e}" for e, err in energies if e is None or not np.isfinite(e))
        if len(ending.final) == 1:
            e_final = e_atom[int(ending.final.numbers[0])]
        else:
            e_final = energies[0][0]
        if self._n_start == 0:
            e_start = 0.0
        elif self._n_start == 1:
            e_start = e_atom[int(self._numbers[0])]
        elif ending.start is not None:
            e_start = self._reference_start_energy[self._start_key()] = float(energies[-1][0])
        else:
            e_start = self._reference_start_energy[self._start_key()]
        return build_return(e_final, e_start, [e_atom[z] for z in placed]), ""

    def _parse_action(self, action) -> tuple[int, np.ndarray] | str:
        if isinstance(action, Mapping):
            try:
                index = float(np.asarray(action["element"]).reshape(()))
                position = np.asarray(action["position"], dtype=float).reshape(3)
            except (KeyError, ValueError, TypeError) as err:
                return f"malformed action {action!r}: {err}"
        else:
            try:
                flat = np.asarray(action, dtype=float).reshape(-1)
            except (ValueError, TypeError) as err:
                return f"malformed action: {err}"
            if flat.shape != (4,):
                return f"action must be [element_index, x, y, z], got shape {np.shape(action)}"
            index, position = float(flat[0]), flat[1:].copy()
        if not (math.isfinite(index) and np.isfinite(position).all()):
            return f"action has non-finite values: {[index, *position.tolist()]}"
        k = math.floor(index + 0.5)
        if not 0 <= k < len(self.elements):
            return f"element index {index} is outside 0..{len(self.elements) - 1} ({', '.join(self.elements)})"
        if np.abs(position).max() > self.workspace + 1e-6:
            w = self.workspace
            return f"position {position.round(3).tolist()} is outside the workspace [-{w}, {w}]^3 Å"
        return k, position

    # ---------------------------------------------------------------------------------------------- helpers
    def _check_canvas(self, canvas: Atoms, numbers: np.ndarray, positions: np.ndarray) -> None:
        if len(canvas) == 0:
            return
        if not np.all(np.isfinite(canvas.positions)):
            raise ValueError("options['canvas'] has non-finite positions")
        if np.any(np.abs(canvas.positions) > self.workspace):
            w = self.workspace
            raise ValueError(f"options['canvas'] has atoms outside the workspace [-{w}, {w}]^3 Å")
        self._check_species(set(canvas.numbers.tolist()))
        problem = structure_problem(np.concatenate([numbers, canvas.numbers]),
                                    np.concatenate([positions, canvas.positions]))
        if problem:  # a start canvas obeys the rules every step obeys
            raise ValueError(f"options['canvas'] breaks the placement rules: {problem}")
        allowed = set(self.element_numbers.tolist())
        bad = sorted(set(canvas.numbers.tolist()) - allowed)
        if bad:
            raise ValueError(
                f"options['canvas'] contains {', '.join(symbol(z) for z in bad)}; this task places only "
                f"{', '.join(self.elements)}"
            )

    def _structure_energy(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray | None]:
        """``E`` of a start structure and its committee deviations (``None`` without uncertainties; zeros for an
        empty canvas or a lone atom, whose energies are exact)."""
        if len(numbers) <= 1:
            energy = 0.0 if len(numbers) == 0 else isolated_atom_energies(self.potential, [int(numbers[0])])[
                int(numbers[0])]
            return energy, (self._zero_dev() if self.reports_uncertainty else None)
        energy, error, members = evaluate_one(self.potential, Atoms(numbers=numbers, positions=positions),
                                               self.reports_uncertainty)
        if energy is None or not np.isfinite(energy):
            raise ValueError(f"the start structure could not be evaluated with {self.potential.name}: {error}")
        return float(energy), (None if members is None else np.asarray(members, dtype=float) - energy)

    def _zero_dev(self) -> np.ndarray:
        return np.zeros(int(self.potential.heads.members))

    def _step_uncertainty(
        self, energy: float | None, members: np.ndarray | None, evaluated: bool
    ) -> tuple[np.ndarray | None, float]:
        """The committee deviations of the new canvas and the step's uncertainty (eV).

        The step's reward under member k is ``-(E_k(after) - E_k(before) - E(atom))``; its uncertainty is the
        calibrated standard deviation of that over the members. A step that places the first atom is exact (0).
        """
        if not self.reports_uncertainty:
            return None, 0.0
        if not evaluated:
            return self._zero_dev(), 0.0
        if members is None:
            raise RuntimeError(f"{self.potential.name} provides uncertainties but returned no committee energies")
        dev_after = np.asarray(members, dtype=float) - float(energy)
        spread = dev_after - self._canvas_dev
        spread -= spread.mean()  # the population standard deviation (np.std), written out: it runs every step
        sigma = float(self.potential.uncertainty_scale * math.sqrt(float(spread @ spread) / len(spread)))
        return dev_after, sigma

    def _formula_of_task(self) -> str | None:
        """The formula whose best-known return applies (canvas + bag at reset); ``None`` for other tasks."""
        total = dict(self._bag)
        for z in self._numbers:
            s = symbol(int(z))
            total[s] = total.get(s, 0) + 1
        return format_formula(total)

    def _lookup_best_known(self):
        """The task formula's best-known return, read from the table once per formula per environment (finding
        the table and hashing the model file each reset would cost more than a step)."""
        formula = self._task_formula
        if not formula:
            return None
        if formula not in self._best_known_by_formula:
            from molgym.best_known import best_known

            try:
                found = best_known(formula, self.return_potential)
            except (OSError, ValueError) as err:  # a damaged table must not stop training
                gym.logger.warn(f"could not read best-known returns: {err}")
                found = None
            self._best_known_by_formula[formula] = found
        return self._best_known_by_formula[formula]

    def _best_known_note(self) -> str:
        if self.best_known is not None:
            b = self.best_known
            return f"{b.value:.4f} eV for {b.formula} under {b.potential} ({b.method}; {b.date})"
        if not self._task_formula:
            return "not applicable to this task"
        return f"unknown for {self._task_formula} under {self.return_potential.name}"

    def _observation(self) -> dict[str, np.ndarray]:
        n = len(self._numbers)
        positions = np.zeros((self.max_atoms, 3), dtype=np.float32)
        positions[:n] = self._positions
        numbers = np.zeros(self.max_atoms, dtype=np.int64)
        numbers[:n] = self._numbers
        mask = np.zeros(self.max_atoms, dtype=np.int8)
        mask[:n] = 1
        bag = np.array([self._bag.get(s, 0) for s in self.elements], dtype=np.int64)
        return {"positions": positions, "atomic_numbers": numbers, "mask": mask, "bag": bag}

    def _info(self, invalid_reason: str, terms: dict[str, float], uncertainty: float = 0.0) -> dict[str, Any]:
        info: dict[str, Any] = {
            "energy": float(self._energy),
            "n_atoms": int(len(self._numbers)),
            "action_mask": self.action_masks(),
            "invalid": bool(invalid_reason),
            "invalid_reason": invalid_reason,
        }
        if self.reports_uncertainty:
            info["uncertainty"] = float(uncertainty)
        for name, value in terms.items():
            info[f"reward_{name}"] = float(value)
        return info

    def _end_info(self) -> dict[str, Any]:
        return {
            "episode_return": float(self._return),
            "best_known_return": None if self.best_known is None else self.best_known.value,
            "formula": format_formula(bag_from_numbers(self._numbers)) if len(self._numbers) else "",
        }

    def _frame(self, step: int, reward: float, element: str = "") -> tuple:
        """A trajectory frame, kept as arrays (``trajectory()`` turns them into ``ase.Atoms``)."""
        info = {"step": step, "element": element, "reward": float(reward), "energy": float(self._energy),
                "episode_return": float(self._return)}
        return self._numbers, self._positions, tuple(self._rewards), info


class _CanvasView:
    """The two arrays of a canvas, enough for :func:`molgym.reward.placement_problem` (no ``ase.Atoms`` built)."""

    __slots__ = ("numbers", "positions")

    def __init__(self, numbers: np.ndarray, positions: np.ndarray):
        self.numbers, self.positions = numbers, positions

    def __len__(self) -> int:
        return len(self.numbers)


#: The settings every task takes as keywords and hands to :class:`MolecularEnv` (documented there): a task's own
#: ``__init__`` names only what is its own (formula, template, solute...) and passes ``**settings`` on. Read off
#: :class:`MolecularEnv`'s signature, less what each task decides itself.
SHARED_SETTINGS: tuple[str, ...] = tuple(
    name for name in inspect.signature(MolecularEnv.__init__).parameters
    if name not in ("self", "elements", "max_atoms", "extra_numbers")
)


def check_settings(task: type, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as a dict, or ``ValueError`` naming any key that is neither one of :data:`SHARED_SETTINGS` nor
    an argument of ``task`` (so ``gym.make(..., bogus=1)`` lists what is allowed instead of a ``TypeError``)."""
    unknown = sorted(set(settings) - set(SHARED_SETTINGS))
    if unknown:
        own = [n for n in inspect.signature(task.__init__).parameters if n not in ("self", "settings")]
        raise ValueError(f"{task.__name__}: unknown argument(s) {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(own + list(SHARED_SETTINGS))}")
    return dict(settings)


def task_vocabulary(elements: Sequence[str] | None, needed: Sequence[str], what: str) -> list[str]:
    """A task's element vocabulary: ``elements`` when given (it must hold every element ``what`` needs, else
    ``ValueError``), otherwise the ``needed`` elements in their order."""
    vocabulary = list(elements) if elements is not None else list(needed)
    missing = [s for s in needed if s not in vocabulary]
    if missing:
        raise ValueError(f"elements={vocabulary} misses {missing}, which {what} needs")
    return vocabulary


def check_reset_options(options: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming any ``reset(options=...)`` key the environment does not understand."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(
            f"unknown reset option(s) {sorted(unknown)}; allowed: {', '.join(repr(a) for a in allowed)}"
        )


def check_uncertainty_options(penalty: float, threshold: float | None) -> tuple[float, float | None]:
    """Validate ``uncertainty_penalty`` (finite, >= 0) and ``uncertainty_threshold`` (``None`` or finite > 0)."""
    try:
        penalty = float(penalty)
    except (TypeError, ValueError):
        raise ValueError(f"uncertainty_penalty must be a number >= 0 (eV per eV), got {penalty!r}") from None
    if not np.isfinite(penalty) or penalty < 0:
        raise ValueError(f"uncertainty_penalty must be a finite number >= 0 (eV per eV), got {penalty!r}")
    if threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise ValueError(f"uncertainty_threshold must be None or a number > 0 (eV), got {threshold!r}") from None
        if not np.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"uncertainty_threshold must be None or a finite number > 0 (eV), got {threshold!r}")
    return penalty, threshold


def _load_reference(
    reference: str | os.PathLike | Potential | None, potential: Potential, device: str | None, numbers: set[int]
) -> tuple[str | Potential | None, Potential | None]:
    """``(spec, potential)`` of an environment's reference, or ``(None, None)`` for none. Unknown specs and
    references that do not cover the task's elements raise ``ValueError``; a reference with the same energies as
    the potential (the same object, model file or method) is a no-op and also gives ``(None, None)``."""
    if reference is None:
        return None, None
    if not isinstance(reference, (str, os.PathLike, Potential)):
        raise ValueError(
            f"reference must be None, a potential spec ('xtb', 'pm6', a MACE model path) or a Potential, "
            f"got {reference!r}"
        )
    ref = shared_potential(reference, device=device)  # an unknown spec raises load_potential's ValueError
    missing = sorted(numbers - set(ref.species))
    if missing:
        raise ValueError(
            f"reference {ref.name} ({reference!r}) does not cover {', '.join(symbol(z) for z in missing)}, which "
            "this task places"
        )
    if ref is potential:
        return None, None
    from molgym.best_known import potential_identity

    identity = potential_identity(ref)
    if identity is not None and identity == potential_identity(potential):
        return None, None
    return (ref if isinstance(reference, Potential) else str(reference)), ref
