"""``DiffusionSampler``: the energy-based diffusion model as a molgym generator (``get_generator("diffusion")``).

What it generates for each kind of benchmark task:

- ``unconditional`` (``qm9-unconditional``) and no task: the number of atoms of each molecule is drawn (seeded)
  from QM9's training-split distribution stored in the checkpoint, or fixed by ``n_atoms``; elements and
  positions are sampled jointly (EDM's unconditional QM9 setting).
- ``formula``, ``bag`` and ``shape``: the task's bag fixes the elements (replacement conditioning of the element
  channels, see :func:`~molgym.agents.diffusion.sampler.heun_sample`) and only positions are sampled. A shape
  task's target points are not used (the model has no shape conditioning); its formula is.

Elements outside H, C, N, O, F raise a ``ValueError`` naming the task, before any sampling.

**Heavy-atom models** (trained with ``molgym diffusion train --heavy-atoms``: the checkpoint's config has
``hydrogens: false``) sample heavy atoms only: sizes count heavy atoms (QM9's heavy-atom distribution, or the
task's bag without its hydrogens), a formula fixes the heavy elements, and each skeleton is completed by valence
rules (:func:`molgym.agents.simgen.hydrogens.hydrogenate`: bond orders from distances, hydrogens in VSEPR
directions; for a formula, the assignment with the formula's hydrogen count is preferred). A skeleton with no
valence-consistent bond orders is returned without hydrogens (it scores invalid). ``info["skeleton_valid"]``
says whether rules found bond orders, so the gain from the rules is visible.

**A physical last stage** (``relax_steps > 0``): the molecules are relaxed together with FIRE under the
generator's potential (``potential=``, the benchmark's by default); ``info["relaxed"]`` marks it. Off by default,
so the benchmark's ``diffusion`` row is the sampler's own; ``diffusion_relaxed``
(:class:`RelaxedDiffusionSampler`, 100 FIRE steps by default) is the same sampler with the stage on, so a
benchmark run reports the raw and the relaxed samples side by side.
"""

from __future__ import annotations

import os
import time

import numpy as np
from ase import Atoms

from molgym.generator import Generator, Progress, check_sample_count
from molgym.chem import atomic_number

__all__ = ["DiffusionSampler", "RelaxedDiffusionSampler", "MAX_ATOMS", "RELAX_STEPS"]

#: Largest molecule (atoms, hydrogens included) the sampler accepts: the graph is fully connected.
MAX_ATOMS = 64


class DiffusionSampler(Generator):
    """Energy-based diffusion sampler (EDM preconditioning, stochastic Heun), trained on QM9.

    Args:
        model: checkpoint path, or a shipped model's name: ``"default"`` (QM9 heavy atoms, hydrogens by valence
            rules: ``models/qm9-heavy.pt``) or ``"explicit-h"`` (QM9 with hydrogens: ``models/qm9.pt``).
        steps: Heun steps (each costs two network evaluations except the last).
        churn: EDM's ``S_churn`` (0: deterministic probability-flow ODE given the initial noise).
        sigma_max, sigma_min, rho: noise schedule (Å).
        n_atoms: atoms per molecule (hydrogens included) for unconditional generation; default: drawn from QM9.
        batch_size: molecules integrated together.
        ema: use the exponential-moving-average weights (default) rather than the raw ones.
        threads: torch CPU threads while sampling (default: torch's).
        relax_steps: FIRE steps of a final relaxation under the potential (0, the default: none).
    """

    name = "diffusion"
    version = "1"
    unconditional = True

    def __init__(self, model: str = "default", steps: int = 20, churn: float = 10.0, sigma_max: float = 10.0,
                 sigma_min: float = 0.002, rho: float = 7.0, n_atoms: int | None = None, batch_size: int = 128,
                 ema: bool = True, threads: int | None = None, potential=None, relax_steps: int = 0):
        from molgym.agents.diffusion.sampler import SamplerSettings

        self.sampler_settings = SamplerSettings(steps=int(steps), sigma_min=float(sigma_min),
                                                sigma_max=float(sigma_max), rho=float(rho), s_churn=float(churn))
        self.sampler_settings.check()
        if n_atoms is not None and not 1 <= int(n_atoms) <= MAX_ATOMS:
            raise ValueError(f"n_atoms must be between 1 and {MAX_ATOMS}, got {n_atoms}")
        if int(batch_size) < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if int(relax_steps) < 0:
            raise ValueError(f"relax_steps must be 0 (no relaxation) or more, got {relax_steps}")
        from molgym.agents.diffusion.checkpoint import SHIPPED_MODELS

        if str(model) not in SHIPPED_MODELS and not os.path.isfile(str(model)):
            raise FileNotFoundError(f"diffusion model file {str(model)!r} does not exist (or name a shipped one: "
                                    f"{', '.join(SHIPPED_MODELS)})")
        super().__init__(potential=potential, model=str(model), steps=int(steps), churn=float(churn),
                         sigma_max=float(sigma_max), sigma_min=float(sigma_min), rho=float(rho),
                         n_atoms=None if n_atoms is None else int(n_atoms), batch_size=int(batch_size),
                         ema=bool(ema), threads=threads, relax_steps=int(relax_steps))
        self.relax_steps = int(relax_steps)
        self.model_spec = str(model)
        self.n_atoms = None if n_atoms is None else int(n_atoms)
        self.batch_size = int(batch_size)
        self.ema = bool(ema)
        self.threads = None if threads is None else int(threads)
        self._model = None
        self._sizes: np.ndarray | None = None

    def _load(self):
        if self._model is None:
            from molgym.agents.diffusion.checkpoint import denoiser_from_checkpoint, load_checkpoint

            state = load_checkpoint(self.model_spec)
            self._model = denoiser_from_checkpoint(state, ema=self.ema)
            self._sizes = np.asarray(state["size_distribution"], dtype=float)
        return self._model

    def _jobs(self, task, n: int, seed: int) -> tuple[list[list[int] | int], list[int | None]]:
        """Per molecule: a list of atomic numbers (elements fixed) or an atom count (elements sampled); and the
        hydrogens a heavy-atom model's skeleton should get (``None``: whatever the valences give)."""
        rng = np.random.default_rng([int(seed), 0xD1FF])
        kind = getattr(task, "kind", None)
        heavy = not self._load().config.hydrogens
        if task is None or kind == "unconditional":
            if self.n_atoms is not None:
                return [self.n_atoms] * n, [None] * n
            if task is not None:  # the task's own seeded QM9 draw fixes the sizes, as for every generator
                bags = task.bags(n, seed)
                return [sum(c for e, c in bag.items() if not (heavy and e == "H")) for bag in bags], [None] * n
            return rng.choice(len(self._sizes), size=n, p=self._sizes).astype(int).tolist(), [None] * n
        jobs, hydrogens = [], []
        for bag in task.bags(n, seed):
            numbers = [atomic_number(sym) for sym, count in sorted(bag.items()) for _ in range(count)]
            bad = sorted({sym for sym in bag if atomic_number(sym) not in (1, 6, 7, 8, 9)})
            if bad:
                raise ValueError(f"task {task.name!r} needs elements {bad}; the diffusion model supports only "
                                 "H, C, N, O and F")
            if len(numbers) > MAX_ATOMS:
                raise ValueError(f"task {task.name!r} asks for {len(numbers)} atoms; the diffusion sampler "
                                 f"supports at most {MAX_ATOMS}")
            if heavy:
                hydrogens.append(numbers.count(1))
                numbers = [z for z in numbers if z != 1]
                if not numbers:
                    raise ValueError(f"task {task.name!r} has no heavy atoms for the heavy-atom diffusion model")
            else:
                hydrogens.append(None)
            jobs.append(numbers)
        return jobs, hydrogens

    def generate(self, task, n: int, seed: int, progress: Progress | None = None) -> list[Atoms]:
        """``n`` molecules for a benchmark ``task`` (see the module docstring), or with ``task=None`` sizes drawn
        from the training set (or ``n_atoms``); deterministic in ``seed``. ``progress(k)`` is called after each
        batch with the molecules done."""
        n = check_sample_count(n)
        if n == 0:
            return []
        jobs, hydrogens = self._jobs(task, n, int(seed))
        model = self._load()
        import torch

        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            molecules = self._sample(model, jobs, int(seed), progress)
        finally:
            torch.set_num_threads(previous)
        if not model.config.hydrogens:
            molecules = [self._complete(m, h) for m, h in zip(molecules, hydrogens)]
        if self.relax_steps > 0:
            molecules = self.relax(molecules)
        return molecules

    @staticmethod
    def _complete(skeleton: Atoms, n_hydrogens: int | None) -> Atoms:
        """A heavy-atom sample completed with hydrogens by valence rules (or left as it is, marked, if none fit)."""
        from molgym.agents.simgen.hydrogens import hydrogenate

        whole = hydrogenate(skeleton, n_hydrogens)
        out = skeleton.copy() if whole is None else whole
        out.info = {**skeleton.info, "skeleton_valid": whole is not None, "hydrogens": "valence rules"}
        return out

    def relax(self, molecules: list[Atoms], steps: int | None = None) -> list[Atoms]:
        """The physical last stage: FIRE under the generator's potential, all molecules in one batch per step
        (``steps``, default ``relax_steps``). Public so that raw samples can be scored before and after it."""
        from molgym.agents.simgen.generator import fire_relax

        potential = self.potential()
        covered = set(int(z) for z in potential.species)
        todo = [i for i, m in enumerate(molecules) if len(m) > 1 and set(int(z) for z in m.numbers) <= covered]
        relaxed, _energies = fire_relax(potential, [molecules[i] for i in todo],
                                        steps=self.relax_steps if steps is None else int(steps))
        out = list(molecules)
        for i, atoms in zip(todo, relaxed):
            atoms.info = {**molecules[i].info, "relaxed": True}
            out[i] = atoms
        return out

    def _sample(self, model, jobs, seed: int, progress) -> list[Atoms]:
        import torch

        from molgym.agents.diffusion.data import encode_elements
        from molgym.agents.diffusion.sampler import heun_sample

        out: list[Atoms] = []
        for b, lo in enumerate(range(0, len(jobs), self.batch_size)):
            chunk = jobs[lo:lo + self.batch_size]
            sizes = [len(j) if isinstance(j, list) else int(j) for j in chunk]
            fixed = None
            if all(isinstance(j, list) for j in chunk):
                fixed = encode_elements(np.concatenate([np.asarray(j) for j in chunk]))
            elif any(isinstance(j, list) for j in chunk):
                raise AssertionError("a batch mixes fixed and free elements")  # _jobs never does this
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, b]).generate_state(1)[0]))
            t0 = time.perf_counter()
            x, numbers, batch = heun_sample(model, sizes, gen, self.sampler_settings, fixed_h=fixed,
                                            heavy_only=not model.config.hydrogens)
            per_molecule = (time.perf_counter() - t0) / len(chunk)
            x, numbers, batch = x.numpy().astype(float), numbers.numpy(), batch.numpy()
            for i in range(len(chunk)):
                mask = batch == i
                atoms = Atoms(numbers=numbers[mask], positions=x[mask])
                atoms.info["generator"] = self.name
                atoms.info["sample_seconds"] = round(per_molecule, 4)
                out.append(atoms)
            if progress is not None:
                progress(len(out))
        return out


#: FIRE steps of ``diffusion_relaxed``'s last stage (40 and 100 gave the same figures, 15 fewer: docs/diffusion.md).
RELAX_STEPS = 100


class RelaxedDiffusionSampler(DiffusionSampler):
    """:class:`DiffusionSampler` with its physical last stage on (``relax_steps`` FIRE steps under the potential):
    the benchmark's ``diffusion_relaxed``, beside ``diffusion``'s raw samples."""

    name = "diffusion_relaxed"

    def __init__(self, *args, relax_steps: int = RELAX_STEPS, **kwargs):
        super().__init__(*args, relax_steps=relax_steps, **kwargs)
