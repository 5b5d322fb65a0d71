"""Relaxed self-imitation: PPO plus a likelihood term on locally relaxed copies of the agent's best molecules.

Why. Under exact returns the agents reach 0.93-0.96 of the best-known return on the C7 tasks, but their molecules
are strained (docs/agents.md, "Which skeleton bonds"): the agent builds the whole skeleton before any hydrogen, so
when it places a C-C bond it cannot yet see whether the bond will end single or double, and the reward that says
so arrives only at the end of the episode. The relaxed copy of a built molecule says it at once: it is the same
molecule, built in the same order, with every atom where the run's return potential wants it.

What. During training, after each rollout, the complete episode with the highest return of that rollout is
relaxed (ASE BFGS) under the run's **return potential** (the reference, GFN2-xTB under ``--reference xtb``,
else the reward potential). When the relaxation keeps the bond graph, the relaxed molecule becomes a
demonstration: for each atom ``t >= 1`` in placement order, the observation of the relaxed canvas of atoms
``0..t-1`` with the bag then left, and the action that places atom ``t`` at its relaxed position. A buffer keeps
the :data:`BUFFER` demonstrations with the highest relaxed returns (one per bond graph in build order, so one
molecule built in two orders can hold two entries);
after every PPO update the policy takes :data:`STEPS_PER_UPDATE` gradient steps on
``coef * mean(-log pi(action | observation))`` over a random minibatch of the buffer's pairs (the placement
density is exact, marginal over the focus atom), with PPO's own optimiser and gradient clipping.

The episode returns are untouched: every return is still the environment's (exactly the reference's under
``--reference``); only the policy's updates change. The relaxations are extra potential calls beyond the
environment steps, counted in ``summary.json`` (``imitation``) with their wall time.

Polish (``molgym train --polish-steps N``, fixed-bag tasks). The imitation term above shapes the policy while PPO
explores, but with eight demonstrations of different molecules and two steps per update it never makes the greedy
molecule one of them: the final C7 greedy molecules stay strained by 0.4-1.6 eV. After the last PPO update,
:meth:`RelaxedImitation.polish` fits the policy to the buffer's best demonstration alone (``N`` steps of its
negative log-likelihood through one focus per atom, at :data:`POLISH_LR`, on the demonstration's canvases and on
those of the policy's own greedy build), so that the greedy policy builds that relaxed molecule in its order: the
run's best find, without its strain. ``molgym train`` scores the policy by a greedy episode along the way and keeps
the best-scored one, the PPO policy unless a polished one ranks higher. The training checkpoints stay the PPO
policies (a resumed run trains on from them); only the final policy (``model.zip``) and the final molecules can be
polished ones.
"""

from __future__ import annotations

import copy
import heapq
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

__all__ = ["BUFFER", "STEPS_PER_UPDATE", "MINIBATCH", "RELAX_FMAX", "RELAX_STEPS", "POLISH_LR", "Demonstration",
           "demonstration", "RelaxedImitation"]

#: demonstrations kept (the highest relaxed returns seen so far)
BUFFER = 8
#: gradient steps on the imitation term after each PPO update
STEPS_PER_UPDATE = 2
#: (observation, action) pairs per imitation gradient step
MINIBATCH = 64
#: relaxation of a candidate: BFGS until the largest force is below this (eV/Å) ...
RELAX_FMAX = 0.05
#: ... or this many steps
RELAX_STEPS = 100
#: learning rate of the polish steps (PPO's Adam; its own rate is restored afterwards)
POLISH_LR = 1e-3
#: the polish replays the policy's greedy build (its on-policy pairs) every this many steps
POLISH_REFRESH = 200
#: ... up to the first canvas further than this (RMSD, Å) from the demonstration's
POLISH_MAX_RMSD = 0.3
#: with a score (``molgym train``: a greedy episode), the polish scores the policy every this many steps
POLISH_SCORE_EVERY = 500


@dataclass
class Demonstration:
    """A relaxed molecule in the order it was built, and its relaxed return under the run's return potential."""

    numbers: np.ndarray
    positions: np.ndarray
    relaxed_return: float
    built_return: float
    key: str

    def to_json(self) -> dict[str, Any]:
        return {"numbers": self.numbers.tolist(), "positions": self.positions.tolist(),
                "relaxed_return": self.relaxed_return, "built_return": self.built_return, "key": self.key}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Demonstration:
        return cls(np.asarray(d["numbers"], dtype=int), np.asarray(d["positions"], dtype=float),
                   float(d["relaxed_return"]), float(d["built_return"]), str(d["key"]))

    def pairs(self, elements: Sequence[str], max_atoms: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """The ``(observation, action)`` pairs that rebuild this molecule in its order (atoms 1..n-1; the first
        atom's placement, a Gaussian about the origin, is left to PPO)."""
        from ase.data import chemical_symbols

        from molgym.envs.spaces import observation

        symbols = [chemical_symbols[int(z)] for z in self.numbers]
        left = {s: symbols.count(s) for s in elements}
        left[symbols[0]] -= 1
        observations, actions = [], []
        for t in range(1, len(symbols)):
            observations.append(observation(self.numbers[:t], self.positions[:t], left, elements, max_atoms))
            actions.append([float(elements.index(symbols[t])), *self.positions[t]])
            left[symbols[t]] -= 1
        return observations, np.asarray(actions, dtype=np.float32)

    def greedy_labelled(self) -> Demonstration:
        """This molecule with its first two atoms swapped when greedy decoding could not build it as labelled.

        A canvas of two atoms of one element is symmetric: the policy gives both the same focus probability and
        greedy decoding takes the first. When the third atom is bonded to the second, the same molecule with the
        first two labels swapped (bonded to the first) is the one greedy decoding builds; fitting the other would
        teach a path it never takes."""
        if len(self.numbers) < 3 or self.numbers[0] != self.numbers[1] or self.foci()[1] != 1:
            return self
        order = [1, 0, *range(2, len(self.numbers))]
        return Demonstration(self.numbers[order], self.positions[order], self.relaxed_return, self.built_return,
                             self.key)

    def foci(self) -> np.ndarray:
        """For each pair of :meth:`pairs`, the placed atom nearest to the atom it places (its bonded neighbour in
        a molecule built connected): the focus the polish teaches greedy decoding to take."""
        return np.array([int(np.argmin(np.linalg.norm(self.positions[:t] - self.positions[t], axis=1)))
                         for t in range(1, len(self.numbers))], dtype=np.int64)


def _superposed_next(reference: np.ndarray, canvas: np.ndarray, placed: np.ndarray,
                     tie: float = 0.01) -> tuple[np.ndarray, float]:
    """Where ``reference``'s last atom goes when ``reference[:-1]`` is superposed on ``canvas``, and the RMSD of
    that superposition (Å): centroids matched, then the rotation or reflection of least squares (Kabsch), with the
    last atom also paired, at weight ``tie``, with ``placed`` (the policy's own placement), which settles the
    rotations the canvas leaves free."""
    cm, cf = reference[:-1].mean(0), canvas.mean(0)
    w = np.ones(len(reference))
    w[-1] = tie
    u, _, vt = np.linalg.svd(((reference - cm) * w[:, None]).T @ (np.vstack([canvas, placed]) - cf))
    rotation = u @ vt
    rmsd = float(np.sqrt((((reference[:-1] - cm) @ rotation + cf - canvas) ** 2).sum(1).mean()))
    return (reference[-1] - cm) @ rotation + cf, rmsd


def demonstration(atoms: Atoms, built_return: float, potential) -> Demonstration | None:
    """The relaxed copy of a complete built molecule as a :class:`Demonstration`, or ``None`` when the relaxation
    fails (an SCF error, a non-finite energy) or changes the bond graph (then it relaxed into another molecule,
    not the one the agent built)."""
    from molgym.metrics.physics import graph_kept, relax
    from molgym.potentials.base import PotentialError

    try:
        result = relax(atoms, potential, fmax=RELAX_FMAX, steps=RELAX_STEPS)
    except (PotentialError, ValueError, np.linalg.LinAlgError):
        return None
    drop = result.start_energy - result.energy
    if not (np.isfinite(drop) and graph_kept(atoms, result.atoms)):
        return None
    from molgym.metrics.bonds import connectivity

    graph = connectivity(atoms)
    key = f"{atoms.get_chemical_formula()}:{np.packbits(graph).tobytes().hex()}"
    return Demonstration(atoms.numbers.copy(), result.atoms.positions.copy(), built_return + max(drop, 0.0),
                         built_return, key)


class RelaxedImitation:
    """The demonstration buffer and the imitation updates of one training run (see the module docstring).

    ``offer`` is called with each finished episode of a rollout, ``end_rollout`` relaxes the best complete one,
    ``update`` takes the gradient steps; ``save``/``load`` keep the buffer with the run's checkpoints so a resumed
    run goes on with it."""

    def __init__(self, coef: float, potential, elements: Sequence[str], max_atoms: int, max_grad_norm: float = 0.5,
                 seed: int = 0):
        if not (np.isfinite(coef) and coef > 0):
            raise ValueError(f"imitation coefficient must be a positive number, got {coef!r}")
        self.coef = float(coef)
        self.max_grad_norm = float(max_grad_norm)
        self.potential = potential
        self.elements = list(elements)
        self.max_atoms = int(max_atoms)
        self.rng = np.random.default_rng(seed)
        self.buffer: list[Demonstration] = []
        self.candidate: tuple[float, Atoms] | None = None
        self.stats = {"relaxations": 0, "kept": 0, "relax_wall_s": 0.0, "updates": 0, "update_wall_s": 0.0,
                      "last_loss": None}

    # --------------------------------------------------------------------------- collecting demonstrations
    def offer(self, terminal_observation: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        """Consider a finished episode (its terminal observation and final ``info``): complete episodes only."""
        if info.get("invalid") or "episode_return" not in info:
            return
        if int(np.asarray(terminal_observation["bag"]).sum()) != 0:
            return
        ret = float(info["episode_return"])
        if not np.isfinite(ret) or (self.candidate is not None and ret <= self.candidate[0]):
            return
        mask = np.asarray(terminal_observation["mask"]).astype(bool)
        atoms = Atoms(numbers=np.asarray(terminal_observation["atomic_numbers"])[mask],
                      positions=np.asarray(terminal_observation["positions"], dtype=float)[mask])
        self.candidate = (ret, atoms)

    def end_rollout(self) -> None:
        """Relax the rollout's best complete episode and keep it if it ranks among the best :data:`BUFFER`."""
        if self.candidate is None:
            return
        ret, atoms = self.candidate
        self.candidate = None
        t0 = time.perf_counter()
        demo = demonstration(atoms, ret, self.potential)
        self.stats["relax_wall_s"] += time.perf_counter() - t0
        self.stats["relaxations"] += 1
        if demo is None:
            return
        self.stats["kept"] += 1
        same = [d for d in self.buffer if d.key == demo.key]
        if same and same[0].relaxed_return >= demo.relaxed_return:
            return
        self.buffer = [d for d in self.buffer if d.key != demo.key] + [demo]
        self.buffer = heapq.nlargest(BUFFER, self.buffer, key=lambda d: d.relaxed_return)

    # ------------------------------------------------------------------------------------------ updating
    def update(self, policy) -> float | None:
        """:data:`STEPS_PER_UPDATE` gradient steps of the imitation term on ``policy`` (an SB3 placement policy,
        its own optimiser); returns the last minibatch's mean negative log-likelihood (``None``: empty buffer)."""
        if not self.buffer:
            return None
        import torch

        t0 = time.perf_counter()
        observations: list[dict[str, np.ndarray]] = []
        actions = []
        for demo in self.buffer:
            obs, act = demo.pairs(self.elements, self.max_atoms)
            observations += obs
            actions.append(act)
        all_actions = np.concatenate(actions)
        policy.set_training_mode(True)
        nll = None
        for _ in range(STEPS_PER_UPDATE):
            pick = self.rng.choice(len(observations), size=min(MINIBATCH, len(observations)), replace=False)
            batch = {k: np.stack([observations[i][k] for i in pick]) for k in observations[0]}
            log_prob = policy.log_prob(batch, torch.as_tensor(all_actions[pick], device=policy.device))
            loss = -log_prob.mean()
            policy.optimizer.zero_grad()
            (self.coef * loss).backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
            policy.optimizer.step()
            nll = float(loss.detach())
        self.stats["updates"] += 1
        self.stats["update_wall_s"] += time.perf_counter() - t0
        self.stats["last_loss"] = nll
        return nll

    def polish(self, policy, steps: int, lr: float = POLISH_LR, log=None, score=None,
               score_every: int = POLISH_SCORE_EVERY) -> dict[str, Any]:
        """Fit ``policy`` to the buffer's best demonstration (:meth:`Demonstration.greedy_labelled`): ``steps``
        gradient steps of the mean negative log-likelihood of all its (observation, action) pairs, each taken
        through the placed atom nearest to the new one as the focus (greedy decoding takes one focus, not the sum;
        :meth:`~molgym.agents.common.policy.PlacementDistribution.focus_log_prob`), with PPO's optimiser at rate
        ``lr`` and PPO's gradient clipping; every :data:`POLISH_REFRESH` steps the pairs are renewed with those on
        the policy's own greedy canvases (:meth:`_on_policy_pairs`).

        ``score`` (optional): a callable ranking the policy as it stands (higher is better; ``molgym train`` plays
        a greedy episode in the run's environment). It is called before the first step and every ``score_every``
        steps, and the policy ends as the best-scored of those (the unpolished one if none beats it), since a
        polish can also take the greedy build off the molecule. Returns what it did, for ``summary.json``
        (``chosen_step``: the step kept, 0 for the unpolished policy); with an empty buffer it does nothing and
        says so. ``log`` (a print-like callable) gets a line every tenth of the way."""
        if not self.buffer:
            return {"steps": 0, "skipped": "no demonstration: no complete episode kept its bond graph on relaxation"}
        import torch

        t0 = time.perf_counter()
        best = max(self.buffer, key=lambda d: d.relaxed_return).greedy_labelled()
        obs, act = best.pairs(self.elements, self.max_atoms)
        foci = best.foci()
        rates = [group["lr"] for group in policy.optimizer.param_groups]
        losses, on_policy, scores = [], 0, []
        kept: tuple[Any, int, Any] | None = None  # (score, step, saved state)

        def scored(step: int) -> None:
            nonlocal kept
            if score is None:
                return
            value = score()
            scores.append([step, value])
            if kept is None or value > kept[0]:
                kept = (value, step, copy.deepcopy((policy.state_dict(), policy.optimizer.state_dict())))

        scored(0)
        try:
            for group in policy.optimizer.param_groups:
                group["lr"] = lr
            for i in range(int(steps)):
                if i and i % score_every == 0:
                    scored(i)
                if i % POLISH_REFRESH == 0:  # the demonstration's pairs, and the same moves on the policy's canvases
                    more_obs, more_act, more_foci = self._on_policy_pairs(policy, best)
                    on_policy = len(more_obs)
                    batch = {k: np.stack([o[k] for o in obs + more_obs]) for k in obs[0]}
                    actions = torch.as_tensor(np.concatenate([act, more_act]), device=policy.device)
                    focus = torch.as_tensor(np.concatenate([foci, more_foci]), device=policy.device)
                    policy.set_training_mode(True)
                loss = -policy.focus_log_prob(batch, actions, focus).mean()
                policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
                policy.optimizer.step()
                losses.append(float(loss.detach()))
                if log is not None and (i + 1) % max(1, int(steps) // 10) == 0:
                    log(f"polish: step {i + 1}/{steps}, negative log-likelihood {losses[-1]:.3f}")
        finally:
            for group, rate in zip(policy.optimizer.param_groups, rates):
                group["lr"] = rate
            policy.set_training_mode(False)
        scored(int(steps))
        if kept is not None:  # the best-scored policy, with PPO's own rate (a saved state holds the polish's)
            policy.load_state_dict(kept[2][0])
            policy.optimizer.load_state_dict(kept[2][1])
            for group, rate in zip(policy.optimizer.param_groups, rates):
                group["lr"] = rate
        chosen = int(steps) if kept is None else kept[1]
        return {"steps": int(steps), "lr": float(lr), "pairs": len(obs), "on_policy_pairs_last": on_policy,
                "scores": scores, "chosen_step": chosen,
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None, "wall_s": time.perf_counter() - t0,
                "demonstration_relaxed_return": best.relaxed_return,
                "demonstration_built_return": best.built_return}

    def _on_policy_pairs(self, policy, demo: Demonstration) -> tuple[list[dict[str, np.ndarray]], np.ndarray,
                                                                       np.ndarray]:
        """Pairs on the canvases the policy's own greedy build of ``demo`` reaches (DAgger's idea): at each step
        the demonstration's canvas so far is superposed on the greedy canvas (rotation or reflection, least
        squares, with the demonstration's next atom weakly tied to where the greedy build put it, which settles
        the superpositions a canvas's symmetry leaves free) and the demonstration's next atom, moved with it,
        is the action. Stops where the greedy build picks another element or its canvas is more than
        :data:`POLISH_MAX_RMSD` from the demonstration's (the earlier pairs correct that drift). Fitting only the
        demonstration's own canvases leaves greedy decoding free to drift once an early atom is a little off
        (measured on C7H10O2)."""
        from ase.data import chemical_symbols

        from molgym.envs.spaces import observation

        symbols = [chemical_symbols[int(z)] for z in demo.numbers]
        left = {s: symbols.count(s) for s in self.elements}
        placed: list[np.ndarray] = []
        observations, actions = [], []
        foci = demo.foci()
        for t in range(len(symbols)):
            obs = observation(demo.numbers[:t], np.array(placed).reshape(-1, 3), left, self.elements, self.max_atoms)
            action, _ = policy.predict({k: v[None] for k, v in obs.items()}, deterministic=True)
            element, x = int(round(float(action[0][0]))), np.asarray(action[0][1:], dtype=float)
            if self.elements[element] != symbols[t]:
                break
            if t >= 1:
                target, rmsd = _superposed_next(demo.positions[:t + 1], np.array(placed), x)
                if rmsd > POLISH_MAX_RMSD:  # the build has left the molecule: no sensible next move of it
                    break
                observations.append(obs)
                actions.append([float(element), *target])
            placed.append(x)
            left[symbols[t]] -= 1
        return (observations, np.asarray(actions, dtype=np.float32).reshape(-1, 4),
                foci[:len(observations)].astype(np.int64))

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        """Write the buffer and counters to ``path`` (JSON, atomically)."""
        from molgym.io import write_json

        write_json(path, {"buffer": [d.to_json() for d in self.buffer], "stats": self.stats})

    def load(self, path: Path) -> None:
        """Read what :meth:`save` wrote (nothing when ``path`` does not exist)."""
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        self.buffer = [Demonstration.from_json(d) for d in saved.get("buffer", [])]
        self.stats.update(saved.get("stats", {}))

    def summary(self) -> dict[str, Any]:
        """Counters for ``summary.json``: relaxations run and kept, their wall time, the buffer's returns."""
        return {**self.stats, "coef": self.coef, "buffer_relaxed_returns": [d.relaxed_return for d in self.buffer],
                "buffer_built_returns": [d.built_return for d in self.buffer]}
