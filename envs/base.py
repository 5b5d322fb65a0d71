"""The shared machinery of molgym's atom-placement environments: :class:`MolecularEnv`.

:class:`MolecularEnv` holds a *canvas* (the atoms placed so far) and a *bag* (the atoms still to place). Each step
places one atom from the bag at an absolute Cartesian position; the reward is MolGym's interaction energy
(:func:`molgym.reward.interaction_reward`) with ``E(canvas)`` carried over from the previous step, so a step costs
exactly one potential evaluation.

With a committee potential, each step also reports its uncertainty, which may be penalised or end the episode
(:mod:`molgym.envs.uncertainty`); with a ``reference`` potential (``reference="xtb"``), the step that ends the
episode adds a correction that makes the episode's return the reference's (:mod:`molgym.envs.reference`).

Subclasses (the tasks) choose the bag and start structure of each episode (:meth:`MolecularEnv._new_episode`) and
may add reward terms (:meth:`~MolecularEnv._extra_terms`) or refill the bag (:meth:`~MolecularEnv._on_bag_empty`).
A task is one module and one registration line (docs/environments.md, "Adding a task").

The class is assembled from modules a reader can hold at once: :mod:`molgym.envs.settings` (the shared settings
and their checks), :mod:`molgym.envs.spaces` (spaces, observations, action parsing), :mod:`molgym.envs.start`
(the start structure and a user's canvas), :mod:`molgym.envs.uncertainty` (a step's committee uncertainty),
:mod:`molgym.envs.reference` (the reference correction) and :mod:`molgym.envs.records` (infos, frames,
best-known returns, the canvas, export, rendering); this module holds the episode itself: set-up, ``reset``, the
step and its reward.

The vector-step protocol
------------------------
A vector environment of N sub-environments must evaluate their N structures in ONE batched potential call per step
(one MACE forward pass instead of N), so the step is two public halves around the evaluation, which a driver calls
for every sub-environment:

1. ``structure = env.begin_step(action)`` validates the action and returns the structure whose energy the step
   needs (the canvas plus the new atom), or ``None`` when it needs none (an invalid action, which ends the episode,
   or the first atom, whose energy is the cached isolated-atom energy). What it decided stays in the environment.
2. The driver evaluates every returned structure in one call, ``evaluate_batch(potential, structures,
   env.reports_uncertainty)`` (:mod:`molgym.potentials.batching`): ``(energy, error, members)`` per structure,
   ``energy`` ``None`` where the potential failed, ``members`` the committee's energies (with uncertainties).
3. ``result = env.finish_step(energy, error, members)`` (plain ``env.finish_step()`` when ``begin_step`` returned
   ``None``) turns the energy into the reward and returns ``(obs, reward, terminated, truncated, info)``.
4. With a ``reference``, a step that ends the episode leaves its correction pending (``env.ending_pending``):
   ``env.ending_structures()`` lists what the reference must evaluate (possibly nothing), and
   ``result = env.settle_ending(evaluate_batch(env.reference, structures))`` is the step's final result, the
   correction added. The driver settles all sub-environments ending in the step with one more call.

The result is exactly what ``env.step(action)`` returns: ``step`` is this protocol for one environment
(``evaluate_one`` in place of the batch). ``finish_step`` completes the last ``begin_step`` (``RuntimeError``
without one); an ending is pending only when the episode is over, so ``reset`` comes next (and drops an ending left
unsettled). The environments of one batch share one potential object (and one reference), which
:func:`molgym.envs.potentials.shared_potential` gives environments built from the same spec.
:func:`molgym.envs.vector.batched_step` is the driver of :class:`~molgym.envs.vector.MolGymVectorEnv`
(``gymnasium.make_vec``) and of the Stable-Baselines3 :class:`~molgym.envs.sb3.MolGymVecEnv`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from ase import Atoms

from molgym.chem import atomic_number, format_formula, hill_order, symbol
from molgym.envs.potentials import shared_potential
from molgym.envs.records import EpisodeRecords
from molgym.envs.reference import ReferenceCorrection, load_reference
from molgym.envs.settings import (
    DEFAULT_INVALID_REWARD,
    DEFAULT_MIN_REWARD,
    DEFAULT_WORKSPACE,
    check_elements,
    check_reset_options,
    check_reward_settings,
    task_vocabulary,
)
from molgym.envs.spaces import CanvasView, action_space, observation, observation_space, parse_action
from molgym.envs.start import StartStructure
from molgym.envs.uncertainty import CommitteeUncertainty, check_uncertainty_options, check_uncertainty_support
from molgym.potentials.base import Potential
from molgym.potentials.batching import evaluate_batch, evaluate_one
from molgym.reward import interaction_reward, isolated_atom_energies, placement_problem

__all__ = ["MolecularEnv", "DEFAULT_INVALID_REWARD", "DEFAULT_MIN_REWARD", "DEFAULT_WORKSPACE", "SHARED_SETTINGS",
           "check_reset_options", "check_settings", "check_uncertainty_options", "task_vocabulary"]


@dataclass
class _Pending:
    """What :meth:`MolecularEnv.begin_step` decided, waiting for :meth:`MolecularEnv.finish_step`."""

    number: int = 0
    position: np.ndarray | None = None
    invalid_reason: str = ""
    needs_energy: bool = False


class MolecularEnv(StartStructure, CommitteeUncertainty, ReferenceCorrection, EpisodeRecords, gym.Env):
    """Base class: build a molecule atom by atom in 3D (see the subclasses for the tasks and the full docs, and
    the module docstring for the vector-step protocol: :meth:`begin_step`, :meth:`finish_step`,
    :attr:`ending_pending`, :meth:`ending_structures`, :meth:`settle_ending`).

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
            the episode return equals (:mod:`molgym.envs.reference`), or ``None`` (default) for the potential's own
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
        self.min_reward = check_reward_settings(workspace, invalid_reward, min_reward)
        self.elements: tuple[str, ...] = check_elements(elements)
        self.element_numbers = np.array([atomic_number(s) for s in self.elements], dtype=np.int64)
        self.max_atoms = int(max_atoms)
        self.workspace = float(workspace)
        self.invalid_reward = float(invalid_reward)
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
        self._reference_spec, self.reference = load_reference(reference, self.potential, device, numbers)
        if self.reference is not None:
            isolated_atom_energies(self.reference, sorted(numbers))  # computed (and cached) before any episode
        self._reference_start_energy: dict[bytes, float] = {}  # E_ref of start structures (a solute), by content
        #: whether each evaluation also gives committee energies (then ``info["uncertainty"]`` is reported)
        self.reports_uncertainty = check_uncertainty_support(
            self.potential, self.uncertainty_penalty, self.uncertainty_threshold
        )

        max_z = int(max([*self.element_numbers.tolist(), *[int(z) for z in extra_numbers]]))
        self.observation_space = observation_space(self.max_atoms, len(self.elements), max_z, self.workspace)
        self.action_space = action_space(len(self.elements), self.workspace)

        self._numbers = np.zeros(0, dtype=np.int64)
        self._positions = np.zeros((0, 3), dtype=np.float64)
        self._rewards: list[float] = []
        self._bag: dict[str, int] = {}
        self._energy = 0.0
        self._canvas_dev: np.ndarray | None = None  # committee members' E(canvas) minus E(canvas)
        self._return = 0.0
        self._done = True
        self._pending: _Pending | None = None
        self._ending = None  # an ending waiting for its reference correction (molgym.envs.reference)
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

    def _extra_terms(self, number: int, position: np.ndarray) -> dict[str, float]:
        """Additional reward terms of a valid placement (named ``reward_<name>`` in ``info``)."""
        return {}

    def _on_bag_empty(self) -> bool:
        """Called when the bag runs empty after a valid step; return ``True`` if it was refilled."""
        return False

    def _task_info(self) -> dict[str, Any]:
        """Task-specific entries of the reset ``info``."""
        return {}

    # Also overridable: ``_apply_canvas`` (the bag left by a user canvas) and ``_structure_energy`` (the energy of
    # a start structure), in molgym.envs.start; ``_formula_of_task`` (whose best-known return applies, ``None``
    # for none), in molgym.envs.records.

    # ------------------------------------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode. ``options={"canvas": atoms}`` starts from a partial structure (its atoms leave the
        bag); subclasses accept more options (see their docs). Bad options raise ``ValueError``."""
        super().reset(seed=seed)
        options = dict(options or {})
        bag, numbers, positions = self._start(options)
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
        """Place one atom; see the task's docstring for the reward and the invalid placements. This is the
        vector-step protocol (module docstring) for one environment."""
        structure = self.begin_step(action)
        if structure is None:
            result = self.finish_step()
        else:
            result = self.finish_step(*evaluate_one(self.potential, structure, self.reports_uncertainty))
        if self.ending_pending:
            needed = self.ending_structures()
            return self.settle_ending(evaluate_batch(self.reference, needed) if needed else ())
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
    def energy(self) -> float:
        """``E(canvas)`` in eV under the environment's potential (0 for an empty canvas)."""
        return float(self._energy)

    # -------------------------------------------------------------------------- the vector-step protocol
    def begin_step(self, action) -> Atoms | None:
        """First half of a step: validate ``action``; return the structure whose energy the step needs, or
        ``None`` if it needs none (an invalid action, or the first atom). See the module docstring."""
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        pending = _Pending()
        self._pending = pending
        parsed = parse_action(action, self.elements, self.workspace)
        if isinstance(parsed, str):
            pending.invalid_reason = parsed
            return None
        index, position = parsed
        sym = self.elements[index]
        if self._bag.get(sym, 0) <= 0:
            pending.invalid_reason = f"element {sym} is not in the bag ({format_formula(self._bag)})"
            return None
        number = int(self.element_numbers[index])
        problem = placement_problem(CanvasView(self._numbers, self._positions), number, position)
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

    def finish_step(self, energy: float | None = None, error: str = "", members: np.ndarray | None = None) -> tuple:
        """Second half of a step: complete the step started by :meth:`begin_step` with the energy of the structure
        it returned (``None`` with the reason in ``error`` when the potential failed; ignored when it returned
        ``None``) and, for a potential with uncertainties, its committee members' energies. Returns
        ``(obs, reward, terminated, truncated, info)``; with a reference, an episode that ends here waits for
        :meth:`settle_ending` (:attr:`ending_pending`)."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("finish_step() without begin_step()")
        reason = pending.invalid_reason
        if not reason and pending.needs_energy and (energy is None or not np.isfinite(energy)):
            reason = f"potential evaluation failed: {error or f'energy {energy}'}"
        if reason:
            return self._invalid_step(reason)
        return self._place(pending, energy, members)

    def _invalid_step(self, reason: str) -> tuple:
        """End the episode on an invalid placement (nothing is placed)."""
        self._done = True
        reward = self.invalid_reward
        self._return += reward
        info = self._info(invalid_reason=reason, terms={"interaction": 0.0, "invalid": reward}, uncertainty=0.0)
        info.update(self._end_info())
        info["terminated_by"] = "invalid"
        return self._end_episode((self._observation(), float(reward), True, False, info))

    def _place(self, pending: _Pending, energy: float | None, members: np.ndarray | None) -> tuple:
        """Place the validated atom: its reward terms, the floor, the new canvas and whether the episode ends."""
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

    # ---------------------------------------------------------------------------------------------- helpers
    def _observation(self) -> dict[str, np.ndarray]:
        return observation(self._numbers, self._positions, self._bag, self.elements, self.max_atoms)


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
