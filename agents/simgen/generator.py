"""SiMGen: zero-shot molecular generation with a similarity kernel over MACE descriptors.

After Elijošius et al., "Zero Shot Molecular Generation via Similarity Kernels". No training: a pretrained MACE
model provides per-atom invariant descriptors, a small reference set of QM9 molecules provides examples of
chemically sensible atomic environments, and a time-dependent similarity kernel between the two turns into a
score (a force on the atoms) that moves noisy atoms into such environments. See ``docs/simgen.md`` for the
algorithm and every option.

Pipeline of one batch (all trajectories of a batch go through MACE together):

1. start the heavy atoms from the shape prior (a fragment, if given, stays fixed);
2. integrate ``steps`` annealed Langevin steps: kernel score (autograd through
   :meth:`~molgym.potentials.mace.MACEPotential.torch_descriptors`) + prior restoring force + short-range
   repulsion + noise, with the kernel width and the noise shrinking along the schedule; from ``cohesion_start``
   of the schedule on, separate pieces of a skeleton are pulled rigidly towards their nearest atom (cohesion);
3. element assignment: for every trajectory ("particle"), a greedy search over the allowed heavy elements
   maximising the typed kernel log-density (minus penalties for over-valent atoms and, with ``piece_penalty``,
   for separate pieces);
4. bond orders from geometry, hydrogens by valence, relaxation with the potential;
5. of the ``particles`` candidates for each molecule, keep the best: valid and connected first, then the
   highest kernel log-density.

``progress`` callbacks hear of every step of every phase (fractions of molecules), not only finished batches.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from molgym.generator import Generator, Progress, check_sample_count
from molgym.chem import atomic_number, bag_from_numbers, element, symbol
from molgym.potentials.base import Potential

from molgym.agents.simgen import hydrogens
from molgym.agents.simgen.priors import GaussianPrior, PointCloudPrior, Prior, parse_prior
from molgym.agents.simgen.reference import BLIND_ELEMENT, ReferenceDescriptors, reference_descriptors

__all__ = ["SiMGen", "load_descriptor_model", "DEFAULT_ELEMENTS", "MAX_HEAVY_ATOMS"]

#: Heavy elements SiMGen chooses from by default (QM9's).
DEFAULT_ELEMENTS: tuple[str, ...] = ("C", "N", "O", "F")
#: Largest number of heavy atoms one molecule may have (the kernel and the search are sized for small molecules).
MAX_HEAVY_ATOMS = 64


def load_descriptor_model(spec, device: str | None = None):
    """The MACE model that gives the descriptors: ``"default"``, a MACE model file, a ``MACEPotential``, or
    ``"untrained:PRESET[:SEED]"`` (a randomly initialised MACE of a :mod:`molgym.potentials.mace_arch` preset,
    whose descriptors are random but smooth features of each environment: for tests and for when no trained
    model is at hand)."""
    from molgym.potentials.mace import MACEPotential

    if isinstance(spec, Potential):
        inner = getattr(spec, "inner", spec)
        if not isinstance(inner, MACEPotential):
            raise ValueError(f"SiMGen needs a MACE model for its descriptors, got {spec.name}")
        return inner
    text = str(spec)
    if text.startswith("untrained:"):
        from molgym.potentials.mace_arch import ARCHITECTURES, build_untrained_mace

        parts = text.split(":")
        preset = parts[1]
        if preset not in ARCHITECTURES:
            raise ValueError(f"unknown MACE preset {preset!r} in {text!r}; presets: {', '.join(ARCHITECTURES)}")
        seed = int(parts[2]) if len(parts) > 2 else 0
        model = build_untrained_mace(preset, seed=seed, dtype="float32")
        return MACEPotential(model, device=device or "cpu", name=f"MACE(untrained {preset}, seed {seed})")
    if text.lower() in ("xtb", "gfn2-xtb", "gfn1-xtb", "ipea1-xtb", "pm6"):
        raise ValueError(f"SiMGen's descriptors come from a MACE model, not {text!r}; use 'default' or a MACE "
                         "model file (the relaxation potential can be any potential: potential=...)")
    from molgym.potentials import load_potential

    pot = load_potential(text, device=device)
    if not isinstance(pot, MACEPotential):
        raise ValueError(f"SiMGen needs a MACE model for its descriptors, got {pot.name}")
    return pot


#: Share of a batch's progress given to each phase, ``(start, end)`` (roughly their share of the time).
_PHASES = {"diffusion": (0.0, 0.25), "elements": (0.25, 0.35), "relaxation": (0.35, 1.0)}


class _Progress:
    """Feeds a ``progress(k)`` callback with the molecules done, fractions included, never going back.

    :meth:`batch` starts a batch of ``size`` molecules after ``offset`` done; :meth:`phase` gives the function a
    phase calls with its own fraction done (0..1), mapped onto its share of the batch; :meth:`whole` reports a
    whole number when a batch ends. Fractional values are rounded down to hundredths of a molecule and passed on
    only when they grow, so a callback sees at most ~100 calls per molecule."""

    def __init__(self, callback: Callable[[float], None] | None):
        self.callback = callback
        self.offset, self.size = 0, 0
        self.last: float = 0.0

    def batch(self, offset: int, size: int) -> None:
        self.offset, self.size = offset, size

    def phase(self, start: float, end: float) -> Callable[[float], None]:
        def report(fraction: float) -> None:
            if self.callback is None:
                return
            f = start + (end - start) * min(max(float(fraction), 0.0), 1.0)
            value = math.floor(100 * (self.offset + self.size * f)) / 100
            if value > self.last and value < self.offset + self.size:
                self.last = value
                self.callback(value)
        return report

    def whole(self, done: int) -> None:
        if self.callback is not None and done > self.last:
            self.last = done
            self.callback(done)


@dataclass
class _Job:
    """One molecule to make: heavy-atom count, element choices and hydrogen target."""

    n_heavy: int
    elements: tuple[int, ...]  # allowed atomic numbers of free atoms
    multiset: tuple[int, ...] | None  # exact heavy elements of free atoms (formula tasks), else None
    n_hydrogens: int | None  # exact total hydrogens (formula tasks), else None


class SiMGen(Generator):
    """Similarity-kernel molecular generation (zero shot, from MACE descriptors).

    Args:
        model: MACE model for the descriptors (see :func:`load_descriptor_model`; default ``"default"``).
        potential: potential for the final relaxation; ``None`` (default) relaxes with ``model``.
        reference: reference molecules (extended XYZ); default the shipped QM9 sample.
        prior: shape prior, a :class:`~molgym.agents.simgen.priors.Prior` or spec (default ``"gaussian"``).
        n_atoms: heavy atoms per molecule; default: from the task (its bag), else from the prior, else 9.
        elements: heavy elements to choose from (default C, N, O, F; those the model covers).
        fragment: ``ase.Atoms`` or structure file: its heavy atoms are kept fixed and grown from.
        center_fragment: translate the fragment so its centroid sits at the origin (the prior's centre).
        particles: trajectories per molecule; the best is kept.
        steps: integration steps.
        kernel_width: ``(start, end)`` kernel width along the schedule, in units of the reference set's median
            nearest-neighbour descriptor distance (so the same values suit any model).
        noise: ``(start, end)`` standard deviation (Å) of the per-step noise along the schedule.
        quench: fraction of final steps without noise (pure descent into the nearest environment).
        step_size: drift step (Å^2) on the width-normalised kernel score.
        max_step: per-atom displacement cap per step (Å).
        prior_strength: multiplies the prior's restoring rate.
        repulsion: ``(distance Å, rate)`` of the short-range repulsion between heavy atoms.
        cohesion: fraction of the gap by which each separate piece of a skeleton is pulled (rigidly) towards its
            nearest atom outside it, every step from ``cohesion_start`` of the schedule on (0: off).
        cohesion_start: fraction of the schedule after which cohesion acts.
        piece_penalty: element search: score penalty per piece beyond one that an assignment leaves (bonds by the
            elements' connectivity cutoffs, so an F 1.5 Å from a C is a piece of its own); ``None``: 50 when
            growing from a ``fragment``, else 0 (off).
        assignment_width: kernel width used to assign elements (same units, on the typed descriptors).
        assignment_rounds: rounds of the greedy element search.
        element_prior: ``"reference"`` (an element's share of the reference atoms is its prior probability) or
            ``"uniform"`` (every allowed element equally likely before the kernel speaks).
        relax_steps, relax_fmax: BFGS relaxation with the potential (0 steps: no relaxation).
        batch_size: molecules whose trajectories go through MACE together.
        device: device of the descriptor model.
        threads: torch CPU threads while generating (restored afterwards); ``None`` leaves torch's setting. On
            a busy shared machine 1 thread can be several times faster than 2.
    """

    name = "simgen"
    version = "1"
    unconditional = True

    def __init__(
        self,
        model="default",
        potential=None,
        reference: str | os.PathLike | None = None,
        prior: str | Prior | None = "gaussian",
        n_atoms: int | None = None,
        elements: Sequence[str] | None = None,
        fragment: Atoms | str | os.PathLike | None = None,
        center_fragment: bool = True,
        particles: int = 8,
        steps: int = 40,
        kernel_width: tuple[float, float] = (8.0, 1.0),
        noise: tuple[float, float] = (0.3, 0.02),
        quench: float = 0.25,
        step_size: float = 0.1,
        max_step: float = 0.25,
        prior_strength: float = 1.0,
        repulsion: tuple[float, float] = (1.35, 0.5),
        cohesion: float = 0.3,
        cohesion_start: float = 0.5,
        piece_penalty: float | None = None,
        assignment_width: float = 1.0,
        assignment_rounds: int = 4,
        element_prior: str = "uniform",
        relax_steps: int = 60,
        relax_fmax: float = 0.05,
        batch_size: int = 16,
        device: str | None = None,
        threads: int | None = None,
    ):
        self.prior = parse_prior(prior)
        if n_atoms is not None:
            if isinstance(n_atoms, bool) or not isinstance(n_atoms, (int, np.integer)) or n_atoms < 1:
                raise ValueError(f"n_atoms must be a positive integer (heavy atoms), got {n_atoms!r}")
            if n_atoms > MAX_HEAVY_ATOMS:
                raise ValueError(f"n_atoms={n_atoms} is more heavy atoms than SiMGen handles; allowed: 1..{MAX_HEAVY_ATOMS}")
        self.elements = tuple(elements) if elements is not None else None
        if self.elements is not None:
            if not self.elements:
                raise ValueError("elements is empty; give at least one heavy element, e.g. C,N,O")
            for sym in self.elements:
                if element(sym).number == 1:
                    raise ValueError("elements lists heavy elements only; hydrogens are added by valence")
        _check_pair("kernel_width", kernel_width, strictly_positive=True)
        _check_pair("noise", noise, strictly_positive=False)
        _check_pair("repulsion", repulsion, strictly_positive=False)
        for name_, value, lo, hi in (("particles", particles, 1, 256), ("steps", steps, 1, 10000),
                                     ("batch_size", batch_size, 1, 100000), ("relax_steps", relax_steps, 0, 100000),
                                     ("assignment_rounds", assignment_rounds, 0, 1000)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise ValueError(f"{name_} must be an integer in {lo}..{hi}, got {value!r}")
        for name_, value in (("step_size", step_size), ("max_step", max_step), ("assignment_width", assignment_width),
                             ("relax_fmax", relax_fmax)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name_} must be a positive number, got {value!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        if element_prior not in ("reference", "uniform"):
            raise ValueError(f"element_prior must be 'reference' or 'uniform', got {element_prior!r}")
        if not (0 <= quench < 1):
            raise ValueError(f"quench must be in [0, 1), got {quench!r}")
        if not (isinstance(prior_strength, (int, float)) and prior_strength >= 0):
            raise ValueError(f"prior_strength must be >= 0, got {prior_strength!r}")
        if not (isinstance(cohesion, (int, float)) and not isinstance(cohesion, bool) and 0 <= cohesion <= 1):
            raise ValueError(f"cohesion must be a number in [0, 1] (0: off), got {cohesion!r}")
        if piece_penalty is None:  # on where separate pieces were the main failure: growing from a fragment
            piece_penalty = FRAGMENT_PIECE_PENALTY if fragment is not None else 0.0
        if not (isinstance(piece_penalty, (int, float)) and not isinstance(piece_penalty, bool)
                and math.isfinite(piece_penalty) and piece_penalty >= 0):
            raise ValueError(f"piece_penalty must be a non-negative number (0: off), got {piece_penalty!r}")
        if not (isinstance(cohesion_start, (int, float)) and not isinstance(cohesion_start, bool)
                and 0 <= cohesion_start <= 1):
            raise ValueError(f"cohesion_start must be a fraction of the schedule in [0, 1], got {cohesion_start!r}")
        super().__init__(
            potential=potential if potential is not None else model,
            model=model if isinstance(model, (str, os.PathLike)) else getattr(model, "name", repr(model)),
            relax_potential=potential if potential is None or isinstance(potential, str) else potential.name,
            prior=self.prior.spec(), n_atoms=n_atoms, elements=list(self.elements) if self.elements else None,
            fragment=None if fragment is None else (str(fragment) if not isinstance(fragment, Atoms)
                                                    else fragment.get_chemical_formula()),
            particles=particles, steps=steps, kernel_width=list(kernel_width), noise=list(noise), quench=quench,
            step_size=step_size, max_step=max_step, prior_strength=prior_strength, repulsion=list(repulsion),
            cohesion=cohesion, cohesion_start=cohesion_start, piece_penalty=piece_penalty,
            assignment_width=assignment_width, assignment_rounds=assignment_rounds, element_prior=element_prior, relax_steps=relax_steps, relax_fmax=relax_fmax,
        )
        self.model_spec = model
        self.reference_path = reference
        self.n_atoms = None if n_atoms is None else int(n_atoms)
        self.fragment = _load_fragment(fragment, center_fragment and not isinstance(self.prior, PointCloudPrior))
        self.particles, self.steps = int(particles), int(steps)
        self.kernel_width = (float(kernel_width[0]), float(kernel_width[1]))
        self.noise = (float(noise[0]), float(noise[1]))
        self.quench, self.step_size, self.max_step = float(quench), float(step_size), float(max_step)
        self.prior_strength = float(prior_strength)
        self.repulsion = (float(repulsion[0]), float(repulsion[1]))
        self.cohesion, self.cohesion_start = float(cohesion), float(cohesion_start)
        self.piece_penalty = float(piece_penalty)
        self.assignment_width = float(assignment_width)
        self.assignment_rounds = int(assignment_rounds)
        self.element_prior = element_prior
        self.relax_steps, self.relax_fmax = int(relax_steps), float(relax_fmax)
        self.batch_size = int(batch_size)
        self.device = device
        self.threads = None if threads is None else int(threads)
        self._model = None
        self._reference: ReferenceDescriptors | None = None
        self.descriptor_calls = 0
        self.relaxations = 0
        self.timings: dict[str, float] = {}

    # --- set-up ---------------------------------------------------------------------------------------------
    def descriptor_model(self):
        """The MACE model giving the descriptors (loaded on first use)."""
        if self._model is None:
            spec = self.model_spec
            if self.potential_spec is spec and not isinstance(spec, Potential):
                # relax with the very same model: load it once
                self._model = load_descriptor_model(spec, device=self.device)
                self.potential_spec = self._model
            else:
                self._model = load_descriptor_model(spec, device=self.device)
        return self._model

    def reference(self) -> ReferenceDescriptors:
        """Reference descriptors under the descriptor model (computed once, cached per model)."""
        if self._reference is None:
            self._reference = reference_descriptors(self.descriptor_model(), self.reference_path)
        return self._reference

    def _allowed_elements(self, model) -> tuple[int, ...]:
        if self.elements is None:  # the defaults that both the model and the reference have
            present = set(self.reference().numbers.tolist()) & set(model.species)
            syms = tuple(s for s in DEFAULT_ELEMENTS if atomic_number(s) in present)
        else:
            syms = self.elements
        numbers = tuple(atomic_number(s) for s in syms)
        missing = [symbol(z) for z in numbers if z not in model.species]
        if missing:
            raise ValueError(f"element(s) {', '.join(missing)} not covered by {model.name}; it covers "
                             f"{', '.join(symbol(z) for z in sorted(model.species) if z in _KNOWN)}")
        ref_numbers = set(self.reference().numbers.tolist())
        absent = [symbol(z) for z in numbers if z not in ref_numbers]
        if absent:
            raise ValueError(f"element(s) {', '.join(absent)} do not occur in the reference molecules, so the "
                             f"kernel cannot place them; the reference has "
                             f"{', '.join(symbol(z) for z in sorted(ref_numbers))}")
        return numbers

    def _jobs(self, task, n: int, seed: int) -> list[_Job]:
        model = self.descriptor_model()
        allowed = self._allowed_elements(model)
        n_fixed = 0 if self.fragment is None else len(self.fragment)
        jobs = []
        if task is None or getattr(task, "kind", None) == "unconditional":
            bags = task.bags(n, seed) if task is not None and self.n_atoms is None else [None] * n
            for bag in bags:
                if bag is not None:  # unconditional task: the size of a QM9 molecule, any allowed elements
                    size = sum(k for s, k in bag.items() if s != "H") - n_fixed
                elif self.n_atoms is not None:
                    size = self.n_atoms
                elif self.prior.n_atoms() is not None:  # the shape implies the total, fragment included
                    size = self.prior.n_atoms() - n_fixed
                else:
                    size = 9
                jobs.append(_Job(size, allowed, None, None))
        else:
            for bag in task.bags(n, seed):
                heavy = tuple(sorted(atomic_number(s) for s, k in bag.items() if s != "H" for _ in range(k)))
                if self.fragment is not None:
                    heavy = list(heavy)
                    for z in self.fragment.numbers:
                        if int(z) in heavy:
                            heavy.remove(int(z))
                    heavy = tuple(heavy)
                missing = [symbol(z) for z in set(heavy) if z not in model.species]
                if missing:
                    raise ValueError(f"task {task.name} needs {', '.join(missing)}, which {model.name} does not cover")
                jobs.append(_Job(len(heavy), tuple(sorted(set(heavy))), heavy, int(bag.get("H", 0))))
        for job in jobs:
            total = job.n_heavy + n_fixed
            if job.n_heavy < 1:
                raise ValueError("nothing to generate: the fragment already holds every heavy atom of the task")
            if total > MAX_HEAVY_ATOMS:
                raise ValueError(f"{total} heavy atoms is more than SiMGen handles; allowed: 1..{MAX_HEAVY_ATOMS}")
            limit = getattr(model, "max_atoms_per_batch", None)
            if limit is not None and total * 5 > limit:
                raise ValueError(f"{total} heavy atoms (about {total * 5} atoms with hydrogens) is more than "
                                 f"{model.name} evaluates in one batch (max_atoms_per_batch={limit})")
        return jobs

    # --- public API -----------------------------------------------------------------------------------------
    def generate(self, task, n: int, seed: int, progress: Progress | None = None) -> list[Atoms]:
        """``n`` molecules for a benchmark ``task`` (its bag sets the size and, except for unconditional tasks,
        the elements; a shape task's target becomes the prior), or with ``task=None`` for the free settings
        (``n_atoms``, ``elements``, ``prior``); deterministic in ``seed``.

        ``progress(k)`` is called with the molecules done so far: during a batch with fractions of molecules (a
        ``float`` rounded to hundredths, advanced by every integration step, element-search round and relaxation
        step, so it moves within seconds even for ``n=1``), and after each batch with the whole number done (an
        ``int``). The values never decrease; the last call is ``progress(n)``."""
        n = check_sample_count(n)
        if n == 0:
            return []
        if self.threads is None:
            return self._generate(n, seed, task, progress)
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._generate(n, seed, task, progress)
        finally:
            torch.set_num_threads(previous)

    def _generate(self, n: int, seed: int, task, progress) -> list[Atoms]:
        prior = self.prior
        if task is not None and getattr(task, "kind", None) == "shape":
            prior = PointCloudPrior(task.target_array, source=task.name)
        jobs = self._jobs(task, n, seed)
        self.potential()  # fail fast on a bad relaxation potential
        rng = np.random.default_rng([int(seed), 0x5133])
        out: list[Atoms | None] = [None] * n
        # same-size jobs share a batch (the prior energy works on (batch, atoms, 3) tensors)
        order = sorted(range(n), key=lambda i: (jobs[i].n_heavy, i))
        done = 0
        report = _Progress(progress)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            groups: dict[int, list[int]] = {}
            for i in idx:
                groups.setdefault(jobs[i].n_heavy, []).append(i)
            offset = done
            for size, members in groups.items():
                batch_rng = np.random.default_rng(rng.integers(2**63))
                report.batch(offset, len(members))
                for i, mol in zip(members, self._make_batch([jobs[i] for i in members], prior, batch_rng, report)):
                    out[i] = mol
                offset += len(members)
            done += len(idx)
            report.whole(done)
        return [m for m in out if m is not None]

    # --- one batch --------------------------------------------------------------------------------------------
    def _make_batch(self, jobs: list[_Job], prior: Prior, rng: np.random.Generator,
                    report: _Progress | None = None) -> list[Atoms]:
        n_free = jobs[0].n_heavy
        fixed = self.fragment
        n_fixed = 0 if fixed is None else len(fixed)
        n_traj = len(jobs) * self.particles
        if isinstance(prior, GaussianPrior) and prior.sigma is None and prior.sigmas is None:
            prior = GaussianPrior(sigma=float(prior.widths(n_free + n_fixed)[0]))  # sized to the molecule
        starts = np.stack([prior.sample(n_free, rng) for _ in range(n_traj)])  # (T, n_free, 3)
        clock = time.perf_counter()
        report = report if report is not None else _Progress(None)
        positions = self._diffuse(starts, prior, rng, report=report.phase(*_PHASES["diffusion"]))
        # element assignment for every trajectory, then hydrogens, relaxation and the choice per molecule
        particle_jobs = [job for job in jobs for _ in range(self.particles)]
        clock = self._tick("diffusion", clock)
        numbers, scores = self._assign_elements(positions, particle_jobs, rng,
                                                report=report.phase(*_PHASES["elements"]))
        clock = self._tick("elements", clock)
        candidates = [
            [self._build(scores[t], numbers[t], positions[t], job)
             for t in range(k * self.particles, (k + 1) * self.particles)]
            for k, job in enumerate(jobs)
        ]
        chosen = self._choose(candidates, report=report.phase(*_PHASES["relaxation"]))
        self._tick("hydrogens_relaxation", clock)
        return chosen

    def _tick(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - since
        return now

    def _full(self, free_positions: np.ndarray, free_numbers: np.ndarray) -> Atoms:
        if self.fragment is None:
            return Atoms(numbers=free_numbers, positions=free_positions)
        return Atoms(numbers=np.concatenate([self.fragment.numbers, free_numbers]),
                     positions=np.concatenate([self.fragment.positions, free_positions]))

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

    def _typed_scores(self, structures: list[Atoms]) -> list[np.ndarray]:
        """Per-atom typed kernel log-density of each structure (at ``assignment_width``)."""
        import torch

        model = self.descriptor_model()
        ref = self.reference()
        feats = model.descriptors(structures)
        self.descriptor_calls += len(structures)
        z = (np.concatenate(feats) - ref.typed_mean) / ref.typed_std
        numbers = np.concatenate([s.numbers for s in structures])
        out = np.empty(len(z))
        h = self.assignment_width * float(ref.typed_scale)
        zt = torch.as_tensor(z)
        for el in np.unique(numbers):
            rows = np.nonzero(numbers == el)[0]
            refs = torch.as_tensor(ref.typed[ref.numbers == el])
            if len(refs) == 0:
                out[rows] = -np.inf
                continue
            d2 = torch.cdist(zt[rows], refs).pow(2) / ref.n_features
            # "reference": sum over the element's reference atoms (its frequency acts as a prior);
            # "uniform": mean over them (every allowed element equally likely a priori)
            norm = len(ref.numbers) if self.element_prior == "reference" else len(refs)
            out[rows] = (torch.logsumexp(-d2 / (2 * h * h), dim=1) - math.log(norm)).numpy()
        ptr = np.cumsum([0] + [len(s) for s in structures])
        return [out[ptr[i]:ptr[i + 1]] for i in range(len(structures))]

    def _score(self, atoms: Atoms, per_atom: np.ndarray) -> float:
        """Total typed log-density, with a large penalty per atom bonded beyond its largest valence and, with
        ``piece_penalty``, a penalty per piece beyond one (bonds by the elements' connectivity cutoffs)."""
        from molgym.chem import valences

        bonds = hydrogens.heavy_bonds(atoms.numbers, atoms.positions)
        degree = np.zeros(len(atoms), dtype=int)
        for i, j, _ in bonds:
            degree[i] += 1
            degree[j] += 1
        over = sum(max(0, d - max(valences(int(z)))) for d, z in zip(degree, atoms.numbers))
        value = float(per_atom.sum()) - 100.0 * over
        if self.piece_penalty > 0 and len(atoms) > 1:
            value -= self.piece_penalty * (_count_pieces(len(atoms), bonds) - 1)
        return value

    def _assign_elements(self, positions: np.ndarray, jobs: list[_Job], rng: np.random.Generator,
                         report: Callable[[float], None] | None = None):
        """Greedy search over the free atoms' elements of every trajectory; returns (numbers, scores).

        Each round scores the current assignment and every single change (one atom to another allowed element;
        for a fixed multiset of elements, one swap of two atoms) in one batched descriptor call, then applies
        the improving changes: with free elements, the best change of each atom whose bonded neighbours are not
        changing in the same round; with a multiset, the best swap. At most ``assignment_rounds`` rounds.
        """
        T, n_free, _ = positions.shape
        current = []
        for job in jobs:
            if job.multiset is not None:
                current.append(rng.permutation(np.array(job.multiset, dtype=int)))
            else:
                current.append(np.full(n_free, 6 if 6 in job.elements else job.elements[0], dtype=int))
        scores = np.full(T, -np.inf)
        close = [np.linalg.norm(p[:, None] - p[None], axis=-1) < 1.8 for p in positions]
        active = list(range(T))
        for _round in range(self.assignment_rounds + 1):
            structs, meta = [], []  # meta: (trajectory, atoms changed, new elements)
            for t in active:
                job, base = jobs[t], current[t]
                structs.append(self._full(positions[t], base))
                meta.append((t, (), base))
                if _round == self.assignment_rounds:
                    continue  # last pass only scores the final assignment
                if job.multiset is not None:
                    for i in range(n_free):
                        for j in range(i + 1, n_free):
                            if base[i] != base[j]:
                                m = base.copy()
                                m[i], m[j] = m[j], m[i]
                                structs.append(self._full(positions[t], m))
                                meta.append((t, (i, j), m))
                else:
                    for i in range(n_free):
                        for z in job.elements:
                            if z != base[i]:
                                m = base.copy()
                                m[i] = z
                                structs.append(self._full(positions[t], m))
                                meta.append((t, (i,), m))
            if not structs:
                break
            per_atom = self._typed_scores(structs)
            if report is not None:
                report((_round + 1) / (self.assignment_rounds + 1))
            moves: dict[int, list[tuple[float, tuple, np.ndarray]]] = {}
            for (t, changed, m), atoms, pa in zip(meta, structs, per_atom):
                value = self._score(atoms, pa)
                if not changed:
                    scores[t] = value
                else:
                    moves.setdefault(t, []).append((value, changed, m))
            improved = []
            for t, options in moves.items():
                better = sorted((o for o in options if o[0] > scores[t] + 1e-9), key=lambda o: -o[0])
                if not better:
                    continue
                if jobs[t].multiset is not None:
                    current[t] = better[0][2]
                else:
                    new, taken = current[t].copy(), []
                    for _value, (i,), m in better:
                        if i in taken or any(close[t][i, k] for k in taken):
                            continue
                        new[i] = m[i]
                        taken.append(i)
                    current[t] = new
                improved.append(t)
            active = improved
            if not active:
                break
        return current, scores

    def _build(self, score: float, numbers: np.ndarray, pos: np.ndarray, job: _Job) -> tuple[float, Atoms, bool]:
        """Bond orders and hydrogens for one candidate skeleton: ``(score, molecule, feasible)``."""
        skel = self._full(pos, numbers)
        whole = hydrogens.hydrogenate(skel, job.n_hydrogens)
        if whole is None:  # some atom has more bonds than its valence allows: scored as invalid
            return score - 1e6, skel, False
        return score, whole, True

    def _choose(self, candidates: list[list[tuple[float, Atoms, bool]]],
                report: Callable[[float], None] | None = None) -> list[Atoms]:
        """For each molecule, relax its candidates best-score first (one batched relaxation per round, over every
        molecule still without a valid, connected, uncharged candidate) and keep the first valid, connected one
        without formal charges; failing that the first valid and connected one, then the first valid one, then the
        best-scored one. A candidate whose relaxation made it worse by that order is kept unrelaxed.

        A round relaxes the next candidate of every molecule still searching, or, when fewer than
        ``RELAX_ROUND_MIN`` (8) molecules are, the next ``ceil(8 / searching)`` candidates of each (a batched
        relaxation of a few molecules costs little more than of one: the cost of a call is mostly overhead up to
        a few molecules), examined in the same order: the choice is the same as with one candidate per round, in
        fewer rounds (what made small ``n`` slow: 3 molecules took up to 8 rounds of 60 steps)."""
        from molgym.metrics.chemistry import perceive

        order = [sorted(c, key=lambda b: -b[0]) for c in candidates]
        chosen: list[tuple[Atoms, int] | None] = [None] * len(order)  # (molecule, quality 0..3)
        taken = [0] * len(order)  # candidates of each molecule examined so far
        rnd = 0
        while True:
            todo = [k for k in range(len(order))
                    if (chosen[k] is None or chosen[k][1] < 3) and taken[k] < len(order[k])]
            if not todo:
                break
            per = max(1, -(-RELAX_ROUND_MIN // len(todo)))
            picks = []  # (molecule, candidate)
            for k in todo:
                picks += [(k, c) for c in order[k][taken[k]:taken[k] + per]]
                taken[k] = min(taken[k] + per, len(order[k]))
            feasible = [i for i, (_k, p) in enumerate(picks) if p[2]]
            relaxed = [p[1] for _k, p in picks]
            if feasible:
                def step(fraction: float, rnd=rnd) -> None:
                    if report is not None:
                        report(1 - 0.5**rnd * (1 - 0.5 * fraction))
                for i, mol in zip(feasible, self._relax_batch([picks[i][1][1] for i in feasible], step)):
                    relaxed[i] = mol
            for (k, (score, unrelaxed, _ok)), mol in zip(picks, relaxed):
                if chosen[k] is not None and chosen[k][1] == 3:
                    continue  # an earlier candidate of this round already made it
                quality = _quality(perceive(mol))
                if mol is not unrelaxed:
                    # the potential may disagree with the bonding found by the kernel (an under-trained model can
                    # break or form bonds): keep the unrelaxed molecule when it is the better one
                    before = _quality(perceive(unrelaxed))
                    if before > quality:
                        mol, quality = unrelaxed, before
                        mol.info["relaxed"] = False
                    else:
                        mol.info["relaxed"] = True
                mol.info["simgen_score"] = float(score)
                if chosen[k] is None or quality > chosen[k][1]:
                    chosen[k] = (mol, quality)
            rnd += 1
            if report is not None:
                report(1 - 0.5**rnd)
        return [c[0] for c in chosen]

    def _relax_batch(self, molecules: list[Atoms], callback: Callable[[float], None] | None = None) -> list[Atoms]:
        """Relax all ``molecules`` together with FIRE (one batched energies-and-forces call per step; the
        fragment's atoms stay fixed; ``callback(fraction)`` after every step). Molecules whose evaluation fails are
        returned unrelaxed."""
        from molgym.potentials.base import PotentialError

        if self.relax_steps == 0 or not molecules:
            return molecules
        pot = self.potential()
        self.relaxations += len(molecules)
        n_fixed = 0 if self.fragment is None else len(self.fragment)
        try:
            relaxed, energies = fire_relax(pot, molecules, steps=self.relax_steps, fmax=self.relax_fmax,
                                           n_fixed=n_fixed, callback=callback)
        except (PotentialError, ValueError):
            if len(molecules) == 1:
                return molecules
            return [m for chunk in ([x] for x in molecules) for m in self._relax_batch(chunk)]
        for mol, e in zip(relaxed, energies):
            mol.info["energy"] = float(e)
        return relaxed

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["descriptor_model"] = None if self._model is None else self._model.name
        meta["descriptor_calls"] = self.descriptor_calls
        meta["relaxations"] = self.relaxations
        meta["seconds"] = {k: round(v, 2) for k, v in self.timings.items()}
        return meta


_KNOWN = {1, 5, 6, 7, 8, 9, 15, 16, 17, 35, 53}


def _quality(perception) -> int:
    """0 invalid, 1 valid, 2 valid and connected, 3 valid, connected and without formal charges."""
    quality = int(perception.valid) + int(perception.valid and perception.connected)
    if quality == 2 and not any(a.GetFormalCharge() for a in perception.mol.GetAtoms()):
        quality = 3
    return quality


#: The element search's penalty per separate piece when growing from a fragment (``piece_penalty=None``).
FRAGMENT_PIECE_PENALTY = 50.0

#: Fewest candidates one relaxation round of :meth:`SiMGen._choose` relaxes while enough remain.
RELAX_ROUND_MIN = 8

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


def _count_pieces(n: int, bonds) -> int:
    """Connected pieces of ``n`` atoms joined by ``bonds`` (``(i, j, ...)`` tuples)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in bonds:
        parent[root(i)] = root(j)
    return len({root(i) for i in range(n)})


def fire_relax(potential: Potential, molecules: list[Atoms], steps: int = 60, fmax: float = 0.05,
               n_fixed: int = 0, max_move: float = 0.2,
               callback: Callable[[float], None] | None = None) -> tuple[list[Atoms], np.ndarray]:
    """FIRE (Bitzek et al. 2006) on many molecules at once: one ``energies_and_forces`` call per step for all
    molecules not yet converged (max force below ``fmax`` eV/Å). The first ``n_fixed`` atoms of each stay put.
    ``callback(fraction)`` is called after every step with the fraction of ``steps`` done.

    Returns the relaxed molecules (new ``ase.Atoms``) and their final energies (eV).
    """
    pos = [m.positions.copy() for m in molecules]
    vel = [np.zeros_like(p) for p in pos]
    dt = np.full(len(molecules), 0.1)
    alpha = np.full(len(molecules), 0.1)
    since_negative = np.zeros(len(molecules), dtype=int)
    energies = np.full(len(molecules), np.nan)
    active = list(range(len(molecules)))
    for _step in range(steps + 1):
        if not active:
            break
        batch = [Atoms(numbers=molecules[i].numbers, positions=pos[i]) for i in active]
        e, forces = potential.energies_and_forces(batch)
        still = []
        for k, i in enumerate(active):
            f = forces[k].copy()
            f[:n_fixed] = 0.0
            energies[i] = e[k]
            if np.abs(f).max(initial=0.0) < fmax or _step == steps or not np.all(np.isfinite(f)):
                continue
            still.append(i)
            power = float(np.sum(f * vel[i]))
            fn = np.linalg.norm(f)
            vn = np.linalg.norm(vel[i])
            vel[i] = (1 - alpha[i]) * vel[i] + alpha[i] * (f / max(fn, 1e-12)) * vn
            if power > 0:
                since_negative[i] += 1
                if since_negative[i] > 5:
                    dt[i] = min(dt[i] * 1.1, 1.0)
                    alpha[i] *= 0.99
            else:
                since_negative[i] = 0
                dt[i] *= 0.5
                alpha[i] = 0.1
                vel[i][:] = 0.0
            vel[i] = vel[i] + dt[i] * f
            move = dt[i] * vel[i]
            norm = np.linalg.norm(move, axis=1, keepdims=True)
            move = move * np.minimum(1.0, max_move / np.maximum(norm, 1e-12))
            move[:n_fixed] = 0.0
            pos[i] = pos[i] + move
        active = still
        if callback is not None:
            callback((_step + 1) / (steps + 1))
    return [Atoms(numbers=m.numbers.copy(), positions=p) for m, p in zip(molecules, pos)], energies


def _check_pair(name: str, value, strictly_positive: bool) -> None:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (start, end), got {value!r}") from None
    ok = (a > 0 and b > 0) if strictly_positive else (a >= 0 and b >= 0)
    if not (ok and math.isfinite(a) and math.isfinite(b)):
        need = "positive" if strictly_positive else "non-negative"
        raise ValueError(f"{name} must be two {need} numbers (start, end), got {value!r}")


def _load_fragment(fragment, center: bool) -> Atoms | None:
    """The heavy atoms of ``fragment`` (``ase.Atoms`` or a structure file), optionally centred at the origin."""
    if fragment is None:
        return None
    if not isinstance(fragment, Atoms):
        from molgym.io import read_structures

        fragment = read_structures(fragment)[0]
    for z in set(fragment.numbers.tolist()):
        element(int(z))  # unknown elements: clear error
    heavy = fragment[fragment.numbers > 1]
    if len(heavy) == 0:
        raise ValueError(f"fragment {fragment.get_chemical_formula()} has no heavy atoms to grow from")
    if len(heavy) > MAX_HEAVY_ATOMS:
        raise ValueError(f"fragment has {len(heavy)} heavy atoms; allowed: 1..{MAX_HEAVY_ATOMS}")
    out = Atoms(numbers=heavy.numbers.copy(), positions=heavy.positions.copy())
    if center:
        out.positions -= out.positions.mean(axis=0)
    return out


def describe(atoms: Atoms) -> str:
    """Formula of a generated molecule (for logs)."""
    return "".join(f"{s}{k if k > 1 else ''}" for s, k in bag_from_numbers(atoms.numbers).items())
