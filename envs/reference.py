"""The reference correction: exact returns under a ``reference`` potential, added on the step that ends an episode.

With ``reference="xtb"`` (any potential spec), the per-step rewards stay the potential's, and the step that ends the
episode (any ending: bag empty, invalid placement, reward floor, uncertainty threshold) adds
:func:`molgym.reward.reference_correction`, so the episode's undiscounted return is the reference's build return of
the final canvas plus the rule penalties. That needs one reference evaluation of the final canvas (and, once per
start structure, of a solute), so it is the second half of the vector-step protocol
(:mod:`molgym.envs.base`): the step that ends an episode leaves a pending ending (:attr:`ending_pending`),
:meth:`ReferenceCorrection.ending_structures` lists what the reference must evaluate, and
:meth:`ReferenceCorrection.settle_ending` adds the correction to the step's result. A vector environment settles
the endings of all its sub-environments in one reference call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from molgym.chem import symbol
from molgym.envs.potentials import shared_potential
from molgym.potentials.base import Potential
from molgym.reward import build_return, isolated_atom_energies, reference_correction

__all__ = ["ReferenceCorrection", "load_reference"]


@dataclass
class _Ending:
    """An episode that ended and waits for its reference correction (:meth:`ReferenceCorrection.settle_ending`)."""

    result: tuple
    final: Atoms
    start: Atoms | None  # the start structure, when its reference energy is not known yet


class ReferenceCorrection:
    """The reference-correction part of :class:`~molgym.envs.base.MolecularEnv` (a mixin: it reads the episode's
    state, ``_numbers``, ``_positions``, ``_n_start``, ``_energy``, ``_start_energy``, ``_atom_energy``,
    ``_floor_total``, ``_return``, ``_frames``, and the settings ``reference`` and ``invalid_reward``)."""

    reference: Potential | None
    _ending: _Ending | None
    _reference_start_energy: dict[bytes, float]

    @property
    def ending_pending(self) -> bool:
        """Whether the last :meth:`~molgym.envs.base.MolecularEnv.finish_step` ended an episode whose reference
        correction waits for :meth:`settle_ending` (only with a reference)."""
        return self._ending is not None

    def ending_structures(self) -> list[Atoms]:
        """The structures whose reference energies the pending ending needs: the final canvas, then the start
        structure when its energy is not cached. Empty when no ending is pending or it needs no evaluation
        (nothing placed, or a canvas of one atom, whose energy is the cached isolated-atom energy)."""
        ending = self._ending
        if ending is None or len(ending.final) <= max(1, self._n_start):
            return []
        return [ending.final] + ([ending.start] if ending.start is not None else [])

    def settle_ending(self, evaluated: Sequence[tuple] = ()) -> tuple:
        """Finish the pending ending with the reference energies of :meth:`ending_structures` (``evaluated``:
        ``(energy, error, members)`` per structure, as :func:`molgym.potentials.batching.evaluate_batch` gives) and
        return its step result ``(obs, reward, terminated, truncated, info)``, the correction added to its reward."""
        ending, self._ending = self._ending, None
        if ending is None:
            raise RuntimeError("settle_ending() without a pending ending")
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


def load_reference(
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
