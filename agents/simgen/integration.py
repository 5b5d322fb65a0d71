"""SiMGen's step 2, integration: annealed Langevin dynamics of the heavy atoms, driven by the similarity kernel's
score (autograd through the MACE descriptors), the shape prior's restoring force, a short-range repulsion and
noise, with separate pieces of a skeleton pulled together (cohesion) late in the schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from molgym.agents.simgen.priors import Prior
from molgym.agents.simgen.reference import BLIND_ELEMENT


class Integration:
    """Mixin of :class:`~molgym.agents.simgen.SiMGen`: the integration of one batch of trajectories."""

    def _diffuse(self, starts: np.ndarray, prior: Prior, rng: np.random.Generator,
                 report: Callable[[float], None] | None = None) -> np.ndarray:
        """Integrate the annealed Langevin dynamics; returns the free atoms' final ``(T, n_free, 3)`` positions.
        ``report(fraction)`` is called after every step."""
        import torch

        model = self.descriptor_model()
        ref = self.reference()
        dtype, dev = model.dtype, model.device
        ref_blind = torch.as_tensor(ref.blind, dtype=dtype, device=dev)
        mean = torch.as_tensor(ref.blind_mean, dtype=dtype, device=dev)
        std = torch.as_tensor(ref.blind_std, dtype=dtype, device=dev)
        n_feat = ref.n_features
        T, n_free, _ = starts.shape
        n_fixed = 0 if self.fragment is None else len(self.fragment)
        n_all = n_fixed + n_free
        template = self._full(np.zeros((n_free, 3)), np.full(n_free, BLIND_ELEMENT))
        template.numbers[:] = BLIND_ELEMENT
        structures = [template] * T
        fixed_pos = None if self.fragment is None else np.broadcast_to(self.fragment.positions, (T, n_fixed, 3))
        x = starts.copy()
        rate = prior.rate * self.prior_strength
        r0, rep_rate = self.repulsion
        h0, h1 = (w * float(ref.blind_scale) for w in self.kernel_width)
        s0, s1 = self.noise
        noisy_steps = max(1, int(round(self.steps * (1 - self.quench))))
        # pairs within one molecule, for the repulsion
        iu = torch.triu_indices(n_all, n_all, offset=1, device=dev)
        for step in range(self.steps):
            frac = step / max(self.steps - 1, 1)
            h = h0 * (h1 / h0) ** frac
            if step < noisy_steps:
                f2 = step / max(noisy_steps - 1, 1)
                sigma = s0 * (s1 / s0) ** f2 if s0 > 0 and s1 > 0 else s0 + (s1 - s0) * f2
            else:
                sigma = 0.0
            full = x if fixed_pos is None else np.concatenate([fixed_pos, x], axis=1)
            pos = torch.tensor(full.reshape(-1, 3), dtype=dtype, device=dev, requires_grad=True)
            feats, _ptr = model.torch_descriptors(structures, positions=pos)
            self.descriptor_calls += T
            z = (feats - mean) / std
            d2 = torch.cdist(z, ref_blind).pow(2) / n_feat
            log_density = torch.logsumexp(-d2 / (2 * h * h), dim=1).sum()
            (grad_kernel,) = torch.autograd.grad(log_density, pos)
            with torch.no_grad():
                p3 = pos.detach().view(T, n_all, 3)
                drift = (self.step_size * h * h) * grad_kernel.view(T, n_all, 3)
            # prior restoring force on the free atoms
            free = p3[:, n_fixed:].clone().requires_grad_(True)
            (grad_prior,) = torch.autograd.grad(prior.energy(free).sum(), free)
            with torch.no_grad():
                drift[:, n_fixed:] -= rate * grad_prior
                # short-range repulsion between heavy atoms: push each close pair apart to r0
                if rep_rate > 0 and n_all > 1:
                    diff = p3[:, iu[0]] - p3[:, iu[1]]  # (T, pairs, 3)
                    dist = diff.norm(dim=-1).clamp(min=1e-6)
                    push = (r0 - dist).clamp(min=0.0) * rep_rate * 0.5
                    vec = diff / dist[..., None] * push[..., None]
                    drift.index_add_(1, iu[0], vec)
                    drift.index_add_(1, iu[1], -vec)
                step_len = drift.norm(dim=-1, keepdim=True)
                drift = drift * (self.max_step / step_len.clamp(min=self.max_step))
                move = drift[:, n_fixed:].cpu().double().numpy()
            x = x + move
            if sigma > 0:
                x = x + sigma * rng.normal(size=x.shape)
            if self.cohesion > 0 and frac >= self.cohesion_start:
                full = x if fixed_pos is None else np.concatenate([fixed_pos, x], axis=1)
                x = x + cohesion_moves(full, n_fixed, self.cohesion, self.max_step)
            if report is not None:
                report((step + 1) / self.steps)
        return x


#: Heavy atoms closer than this (Å) count as one piece for the cohesion pull (at or below the bonding cutoff of
#: every C, N, O, F pair in molgym's tables but C-F's 1.45 and N-F's 1.46 Å); pieces are pulled until their closest
#: atoms are ``PIECE_TARGET`` apart.
PIECE_CUTOFF = 1.5
PIECE_TARGET = 1.45


def pieces(positions: np.ndarray, cutoff: float = PIECE_CUTOFF) -> tuple[np.ndarray, np.ndarray]:
    """Connected pieces of many point sets at once: ``positions`` ``(T, n, 3)``, two points joined when closer
    than ``cutoff``. Returns ``(labels, distances)``: ``labels[t, i]`` is the smallest index in ``i``'s piece (so
    a set is one piece when all its labels are 0) and ``distances`` the ``(T, n, n)`` distance matrices."""
    d = np.linalg.norm(positions[:, :, None] - positions[:, None], axis=-1)
    reach = (d < cutoff).astype(np.float32)
    n = positions.shape[1]
    for _ in range(max(1, math.ceil(math.log2(max(n, 2))))):  # paths of length up to 2^k
        reach = np.minimum(reach @ reach, 1.0)
    return (reach > 0).argmax(axis=2), d


def cohesion_moves(full: np.ndarray, n_fixed: int, rate: float, max_step: float,
                   cutoff: float = PIECE_CUTOFF, target: float = PIECE_TARGET) -> np.ndarray:
    """Displacements ``(T, n - n_fixed, 3)`` of the free atoms that pull separate pieces together.

    For each structure in ``full`` ``(T, n, 3)`` (the first ``n_fixed`` atoms fixed) that is not one piece, every
    piece but the main one (the one holding the fixed atoms, else the largest) is translated rigidly towards the
    closest atom outside it, by ``rate`` of the gap beyond ``target`` (at most ``max_step`` Å), so the pieces join
    by one bond while keeping their own shapes. Connected structures get zero displacements."""
    T, n, _ = full.shape
    moves = np.zeros((T, n - n_fixed, 3))
    if n < 2 or rate <= 0:
        return moves
    labels, d = pieces(full, cutoff)
    for t in np.nonzero(labels.max(axis=1) > 0)[0]:
        lab = labels[t]
        ids, sizes = np.unique(lab, return_counts=True)
        main = lab[0] if n_fixed else ids[np.argmax(sizes)]
        for c in ids:
            members = np.nonzero(lab == c)[0]
            if c == main or members[0] < n_fixed:
                continue  # the main piece, or a piece of the fixed fragment: stays put
            others = np.nonzero(lab != c)[0]
            sub = d[t][np.ix_(members, others)]
            i, j = np.unravel_index(np.argmin(sub), sub.shape)
            gap = sub[i, j]
            if gap <= target:
                continue
            vec = full[t, others[j]] - full[t, members[i]]
            length = min(rate * (gap - target), max_step)
            moves[t, members - n_fixed] += vec / gap * length
    return moves
