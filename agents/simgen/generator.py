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

This module holds the set-up and the batch driver; the steps live beside it, as mixins of :class:`SiMGen`:
:mod:`~molgym.agents.simgen.settings` (checks, fragment), :mod:`~molgym.agents.simgen.jobs` (what to make),
:mod:`~molgym.agents.simgen.integration` (step 2), :mod:`~molgym.agents.simgen.elements` (step 3) and
:mod:`~molgym.agents.simgen.relaxation` (steps 4-5).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
from ase import Atoms

from molgym.generator import Generator, Progress, check_sample_count
from molgym.chem import bag_from_numbers
from molgym.potentials.base import Potential

from molgym.agents.simgen.elements import ElementSearch
from molgym.agents.simgen.integration import Integration
from molgym.agents.simgen.jobs import JobPlanning
from molgym.agents.simgen.priors import GaussianPrior, PointCloudPrior, Prior, parse_prior
from molgym.agents.simgen.reference import ReferenceDescriptors, reference_descriptors
from molgym.agents.simgen.relaxation import Relaxation
from molgym.agents.simgen.settings import (
    DEFAULT_ELEMENTS,
    FRAGMENT_PIECE_PENALTY,
    MAX_HEAVY_ATOMS,
    _Job,
    _load_fragment,
    check_settings,
)

# reached through this module by other code: the diffusion sampler (fire_relax) and the tests
from molgym.agents.simgen.integration import PIECE_CUTOFF, PIECE_TARGET, cohesion_moves, pieces  # noqa: F401
from molgym.agents.simgen.relaxation import fire_relax  # noqa: F401

__all__ = ["SiMGen", "load_descriptor_model", "DEFAULT_ELEMENTS", "MAX_HEAVY_ATOMS"]


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


class SiMGen(JobPlanning, Integration, ElementSearch, Relaxation, Generator):
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
        self.elements = tuple(elements) if elements is not None else None
        if piece_penalty is None:  # on where separate pieces were the main failure: growing from a fragment
            piece_penalty = FRAGMENT_PIECE_PENALTY if fragment is not None else 0.0
        check_settings(
            n_atoms=n_atoms, elements=self.elements, kernel_width=kernel_width, noise=noise, repulsion=repulsion,
            particles=particles, steps=steps, batch_size=batch_size, relax_steps=relax_steps,
            assignment_rounds=assignment_rounds, step_size=step_size, max_step=max_step,
            assignment_width=assignment_width, relax_fmax=relax_fmax, threads=threads, element_prior=element_prior,
            quench=quench, prior_strength=prior_strength, cohesion=cohesion, piece_penalty=piece_penalty,
            cohesion_start=cohesion_start,
        )
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

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["descriptor_model"] = None if self._model is None else self._model.name
        meta["descriptor_calls"] = self.descriptor_calls
        meta["relaxations"] = self.relaxations
        meta["seconds"] = {k: round(v, 2) for k, v in self.timings.items()}
        return meta


def describe(atoms: Atoms) -> str:
    """Formula of a generated molecule (for logs)."""
    return "".join(f"{s}{k if k > 1 else ''}" for s, k in bag_from_numbers(atoms.numbers).items())
