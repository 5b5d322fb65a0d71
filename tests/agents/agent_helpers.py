"""Synthetic placement spaces, canvases and policies for the agent tests (no environment, no potential)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from gymnasium import spaces

import mace  # noqa: F401  (e3nn's constants need it on torch >= 2.6)
from molgym.agents.covariant import CovariantPolicy
from molgym.agents.internal import InternalPolicy

POLICIES = {"covariant": CovariantPolicy, "internal": InternalPolicy}
ELEMENT_NUMBERS = (6, 1, 8)  # C, H, O: the action vocabulary of CH4O


def placement_spaces(max_atoms: int, n_elements: int = 3, workspace: float = 8.0):
    obs = spaces.Dict({
        "positions": spaces.Box(-workspace, workspace, (max_atoms, 3), np.float32),
        "atomic_numbers": spaces.Box(0, 8, (max_atoms,), np.int64),
        "mask": spaces.MultiBinary(max_atoms),
        "bag": spaces.Box(0, max_atoms, (n_elements,), np.int64),
    })
    low = np.array([0, -workspace, -workspace, -workspace], np.float32)
    high = np.array([n_elements - 1, workspace, workspace, workspace], np.float32)
    return obs, spaces.Box(low, high, dtype=np.float32)


@functools.lru_cache(maxsize=None)
def make_policy(agent: str, max_atoms: int = 8, seed: int = 0) -> torch.nn.Module:
    """A float64 policy with seeded random weights (weights are seeded through a local fork of torch's RNG).

    Cached: building e3nn layers takes seconds, and the tests only read the policies (no training).
    """
    obs_space, act_space = placement_spaces(max_atoms)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        policy = POLICIES[agent](obs_space, act_space, lambda _: 1e-3, seed=seed)
        # the heads' last layers start at zero (uniform categoricals, default widths): perturb them so that every
        # factor of the density depends on the canvas, at a scale that keeps the densities resolvable by the
        # numerical integrals of the tests
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if name.split(".")[1].endswith(("_net", "_head")) and p.abs().max() == 0:
                    p.add_(0.2 * torch.randn_like(p))
            if agent == "covariant":  # equivariant features are small at initialisation: sharpen the directions
                policy.model.direction_head[-1].weight.mul_(40.0)
                policy.model.direction_head[-1].bias.mul_(40.0)
    return policy.double()


def canvas_positions(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Canvases: 'empty', 'one', 'two', 'collinear' (3 atoms on a line), 'many' (6 atoms, molecule-like)."""
    if kind == "empty":
        return np.zeros((0, 3))
    if kind == "one":
        return rng.normal(size=(1, 3))
    if kind == "two":
        p = rng.normal(size=3)
        return np.stack([p, p + 1.3 * _unit(rng.normal(size=3))])
    if kind == "collinear":
        p, d = rng.normal(size=3), _unit(rng.normal(size=3))
        return np.stack([p, p + 1.2 * d, p + 2.5 * d])
    if kind == "many":
        pts = [np.zeros(3)]
        while len(pts) < 6:
            q = pts[rng.integers(len(pts))] + 1.3 * _unit(rng.normal(size=3))
            if min(np.linalg.norm(q - p) for p in pts) > 1.0:
                pts.append(q)
        return np.array(pts) + rng.normal(size=3)
    raise ValueError(kind)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def observation(positions: np.ndarray, rng: np.random.Generator, max_atoms: int = 8, bag=(1, 2, 1)) -> dict:
    """A batched (B = 1) observation dict for a canvas."""
    n = len(positions)
    pos = np.zeros((max_atoms, 3))
    pos[:n] = positions
    numbers = np.zeros(max_atoms, dtype=np.int64)
    numbers[:n] = rng.choice(ELEMENT_NUMBERS, size=n)
    mask = np.zeros(max_atoms)
    mask[:n] = 1
    return {"positions": pos[None], "atomic_numbers": numbers[None], "mask": mask[None],
            "bag": np.array(bag, dtype=np.int64)[None]}


def repeat(obs: dict, n: int) -> dict:
    return {k: np.repeat(v, n, axis=0) for k, v in obs.items()}


def transform(obs: dict, matrix: np.ndarray, shift: np.ndarray | None = None) -> dict:
    out = dict(obs)
    pos = obs["positions"] @ matrix.T
    if shift is not None:
        pos = pos + shift
    out["positions"] = pos * obs["mask"][..., None]  # padding stays at zero
    return out


def transform_actions(actions: torch.Tensor, matrix: np.ndarray, shift: np.ndarray | None = None) -> torch.Tensor:
    a = actions.clone()
    m = torch.as_tensor(matrix, dtype=a.dtype)
    a[..., 1:] = a[..., 1:] @ m.T
    if shift is not None:
        a[..., 1:] += torch.as_tensor(shift, dtype=a.dtype)
    return a


TINY = '{"channels": 8, "vector_channels": 2, "num_interactions": 1}'
TINY_INTERNAL = '{"channels": 8, "num_interactions": 1}'


def train_args(out, potential, agent: str, steps: int, *extra: str) -> list[str]:
    """`molgym train` arguments for a tiny run on CH2O (plumbing, not learning)."""
    return ["train", "--agent", agent, "--formula", "CH2O", "--potential", str(potential), "--steps", str(steps),
            "--n-envs", "2", "--n-steps", "8", "--batch-size", "8", "--epochs", "1", "--seed", "3",
            "--eval-every", "16", "--eval-episodes", "1", "--checkpoint-every", "16", "--final-molecules", "2",
            "--model-kwargs", TINY if agent == "covariant" else TINY_INTERNAL, "--no-progress", "--out", str(out),
            *extra]
