"""What an episode reports and leaves behind: step infos, the final info and best-known return, the canvas, the
trajectory (frames), extended-XYZ export and rendering.

:class:`EpisodeRecords` is a mixin of :class:`~molgym.envs.base.MolecularEnv`; it reads the episode's state
(``_numbers``, ``_positions``, ``_rewards``, ``_bag``, ``_energy``, ``_return``, ``_frames``, ``_task_formula``,
``best_known``) and changes none of it.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np
from ase import Atoms

from molgym.chem import bag_from_numbers, format_formula, symbol

__all__ = ["EpisodeRecords"]


class EpisodeRecords:
    """Infos, frames, best-known returns, the canvas, export and rendering of :class:`MolecularEnv`."""

    _numbers: np.ndarray
    _positions: np.ndarray
    _rewards: list[float]
    _bag: dict[str, int]
    _energy: float
    _return: float
    _frames: list[tuple]
    _task_formula: str | None

    # ------------------------------------------------------------------------------------------- the canvas
    @property
    def canvas(self) -> Atoms:
        """The atoms placed so far, with ``placement_reward`` per atom (a copy)."""
        atoms = Atoms(numbers=self._numbers.copy(), positions=self._positions.copy())
        atoms.arrays["placement_reward"] = np.array(self._rewards, dtype=float)
        atoms.info.update(energy=float(self._energy), episode_return=float(self._return))
        if self._task_formula:
            atoms.info["task_formula"] = self._task_formula
        return atoms

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

    # ---------------------------------------------------------------------------------------- infos, frames
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

    # ---------------------------------------------------------------------------------- best-known returns
    def _formula_of_task(self) -> str | None:
        """The formula whose best-known return applies (canvas + bag at reset); ``None`` for other tasks (a
        subclass hook: solvation has none)."""
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
