"""Hyperactive learning (HAL) of the reward potential: sample where the committee disagrees, label, refit, repeat.

An agent that optimises a learned reward finds the model's errors. HAL (van der Oord et al.) drives a physical
sampler toward high model uncertainty, labels what it finds with the reference, and refits. One round of
:func:`refine` (CLI: ``molgym potential refine``):

1. **Sample** candidates with the current model + committee:
   - *biased MD*: Langevin dynamics (ASE) on ``E - tau * σ`` (:class:`~molgym.potentials.committee.HALCalculator`),
     started from training molecules and from generator samples, snapshots every few steps;
   - *relaxation paths*: random structure search under the current model (random valid placement of each
     formula's atoms, BFGS on the model), keeping every few frames of the path: an optimiser walking into one
     of the model's holes passes through structures the reference can still label, even when the end point is
     a collapsed structure on which GFN2-xTB's SCF no longer converges;
   - *generator samples* (optional, e.g. ``rl_policy`` for agent rollouts through the environments): molecules
     the generators produce for the ``formulas`` under the current model, with the build prefixes an
     environment rollout building them would visit (heavy atoms first, then H).
2. **Select** the ``select`` most uncertain candidates (one batched σ evaluation), skipping near-duplicates and
   structures with atoms closer than ``min_distance``.
3. **Label** them with GFN2-xTB (``load_potential("xtb")``); SCF failures are skipped and counted.
4. **Refit**: fine-tune the MACE model from its latest checkpoint on train + everything labelled so far for
   ``epochs`` epochs (:func:`molgym.training.finetune.finetune_mace`; harvested structures repeated
   ``harvest_weight`` times), then refit and recalibrate the committee
   on the new model (:func:`molgym.training.committee.fit_dataset_committee`).
5. **Log** one JSON line per round: candidates, labelled, failures, the new structures' errors vs xTB before
   and after the refit, mean/max σ of the fresh candidates before and after, test MAE, timings.

It stops after ``rounds`` rounds, or once the mean σ of a round's fresh candidates is no longer below the previous
round's by more than ``tolerance`` (relative). Each round lives in ``OUT/round-NN/`` and is finished by writing
``round.json`` last (atomically); a rerun skips finished rounds and resumes an unfinished one at its first
unfinished step (candidates, labels and the fine-tuning run are each kept on disk).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from molgym.data.labels import labelled_copy

__all__ = ["RefineConfig", "refine", "read_log"]


@dataclass
class RefineConfig:
    """Settings of a refinement run (all validated by :meth:`validate` before any work)."""

    #: dataset directory (train/valid/test.xyz, manifest) from ``molgym potential dataset``
    data: str
    #: training run to start from (its checkpoints), e.g. ``runs/train-default``
    train_dir: str
    #: committee heads (``.npz``) of the starting model; ``None``: fit them first
    committee: str | None = None
    rounds: int = 3
    formulas: tuple[str, ...] = ("C7H10O2", "C7H8N2O2")
    relaxations_per_formula: int = 8
    relax_steps: int = 200
    relax_interval: int = 4
    generators: tuple[str, ...] = ()
    samples_per_formula: int = 0
    md_starts: int = 8
    md_steps: int = 60
    md_interval: int = 5
    temperature_K: float = 500.0
    timestep_fs: float = 0.5
    tau: float = 1.0
    max_sigma: float = 20.0
    select: int = 64
    min_distance: float = 0.6
    #: for each selected final molecule of a generator, also label this many frames of its GFN2-xTB relaxation
    #: (BFGS, at most ``xtb_relax_steps`` steps); 0 = off. A strained agent molecule alone teaches the refit only
    #: that its energy is higher; with frames down to its xTB minimum the refit sees the strain energy itself
    xtb_relax_frames: int = 0
    xtb_relax_steps: int = 60
    epochs: int = 1
    #: learning rate of the fine-tuning (the start checkpoint's own, 0.008 for the default, made the model worse)
    lr: float = 1e-3
    #: each harvested structure enters the fine-tuning set this many times (a few hundred new structures
    #: among ~14k would otherwise barely move one epoch)
    harvest_weight: int = 4
    members: int = 8
    ridge: float = 1e-3
    tolerance: float = 0.02
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    #: options per generator name, e.g. ``{"random_search": {"steps": 100}}`` or ``{"rl_policy": {"checkpoint": ...}}``
    generator_options: dict = field(default_factory=lambda: {"random_search": {"steps": 100}})

    def validate(self) -> None:
        """Raise ``ValueError``/``FileNotFoundError`` naming the bad setting and what is allowed."""
        from molgym.chem import parse_formula

        data = Path(self.data)
        for name in ("manifest.json", "train.xyz", "valid.xyz", "test.xyz"):
            if not (data / name).is_file():
                raise FileNotFoundError(f"dataset {data} has no {name}; build it with `molgym potential dataset`")
        from molgym.training.finetune import latest_checkpoint

        latest_checkpoint(self.train_dir)  # raises with a clear message
        if self.committee is not None and not Path(self.committee).is_file():
            raise FileNotFoundError(f"committee file {self.committee!r} does not exist")
        positive_ints = {"rounds": self.rounds, "select": self.select, "epochs": self.epochs,
                         "md_interval": self.md_interval, "members": self.members - 1,
                         "harvest_weight": self.harvest_weight}
        for name, value in positive_ints.items():
            if int(value) != value or value < 1:
                allowed = ">= 2" if name == "members" else ">= 1"
                shown = self.members if name == "members" else value
                raise ValueError(f"{name} must be an integer {allowed}, got {shown!r}")
        if int(self.relax_interval) != self.relax_interval or self.relax_interval < 1:
            raise ValueError(f"relax_interval must be an integer >= 1, got {self.relax_interval!r}")
        for name in ("samples_per_formula", "md_starts", "md_steps", "relaxations_per_formula", "relax_steps",
                     "xtb_relax_frames", "xtb_relax_steps"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("temperature_K", "timestep_fs", "max_sigma", "ridge", "min_distance", "lr"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not np.isfinite(self.tau) or self.tau < 0:
            raise ValueError(f"tau must be a finite number >= 0, got {self.tau!r}")
        if not np.isfinite(self.tolerance) or not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance!r}")
        for formula in self.formulas:
            parse_formula(formula)  # raises for malformed formulas / unknown elements
        if self.samples_per_formula and self.formulas and not self.generators:
            raise ValueError("samples_per_formula > 0 needs at least one generator")
        if self.md_starts == 0 and (self.samples_per_formula + self.relaxations_per_formula == 0 or not self.formulas):
            raise ValueError("nothing to sample: set md_starts > 0, or relaxations_per_formula or "
                             "samples_per_formula > 0 with formulas")


def read_log(out: str | os.PathLike) -> list[dict]:
    """The per-round records of a refinement run (``OUT/log.jsonl``), oldest first."""
    path = Path(out) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- sampling
def _too_close(atoms: Atoms, min_distance: float) -> bool:
    if len(atoms) < 2:
        return False
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return bool(d.min() < min_distance)


def _build_prefixes(atoms: Atoms) -> list[Atoms]:
    """Canvases of a rollout that builds ``atoms`` heavy atoms first (then H/F), 2 atoms and more."""
    heavy = [i for i, z in enumerate(atoms.numbers) if z not in (1, 9)]
    order = heavy + [i for i in range(len(atoms)) if i not in heavy]
    return [Atoms(numbers=atoms.numbers[order[:k]], positions=atoms.positions[order[:k]])
            for k in range(2, len(atoms) + 1)]


def _generator_samples(config: RefineConfig, potential, seed: int, say) -> list[Atoms]:
    from molgym.benchmark import get_generator, get_task

    out: list[Atoms] = []
    for name in config.generators:
        generator = get_generator(name, potential=potential, **config.generator_options.get(name, {}))
        for k, formula in enumerate(config.formulas):
            if not config.samples_per_formula:
                continue
            t = time.time()
            molecules = generator.generate(get_task(formula), config.samples_per_formula, seed=seed * 1000 + k)
            for mol in molecules:
                mol = Atoms(numbers=mol.numbers, positions=mol.positions)
                mol.info["source"] = f"{name}:{formula}"
                out.append(mol)
                for prefix in _build_prefixes(mol)[:-1]:
                    prefix.info["source"] = f"{name}:{formula}:prefix"
                    out.append(prefix)
            say(f"  {name} {formula}: {len(molecules)} samples in {time.time() - t:.0f} s")
    return out


def _relaxation_paths(config: RefineConfig, potential, seed: int, say) -> list[Atoms]:
    """Frames of random-structure-search relaxations under ``potential`` (every ``relax_interval`` steps)."""
    from ase.optimize import BFGS

    from molgym.data.placement import random_structure
    from molgym.chem import parse_formula
    from molgym.potentials.base import PotentialError

    frames: list[Atoms] = []
    for k, formula in enumerate(config.formulas):
        t = time.time()
        rng = np.random.default_rng([seed, k, 13])
        bag = parse_formula(formula)
        for j in range(config.relaxations_per_formula):
            atoms = random_structure(bag, rng)
            atoms.calc = potential.as_calculator()
            opt = BFGS(atoms, logfile=None)
            path: list[Atoms] = []

            def keep(atoms=atoms, path=path, j=j):
                snap = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
                snap.info.update(source=f"relax:{formula}:{j}", relax_step=opt.nsteps)
                path.append(snap)

            opt.attach(keep, interval=config.relax_interval)
            try:
                opt.run(fmax=0.05, steps=config.relax_steps)
            except (PotentialError, ValueError) as err:
                say(f"  relaxation {formula} {j} stopped: {type(err).__name__}")
            keep()
            frames.extend(path)
        say(f"  relaxations {formula}: {config.relaxations_per_formula} paths in {time.time() - t:.0f} s")
    return frames


def _biased_md(config: RefineConfig, potential, starts: Sequence[Atoms], seed: int, say) -> list[Atoms]:
    """Langevin MD on ``E - tau σ`` from each start; a snapshot every ``md_interval`` steps (with its σ)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from molgym.potentials.committee import HALCalculator

    snapshots: list[Atoms] = []
    t = time.time()
    for k, start in enumerate(starts):
        atoms = Atoms(numbers=start.numbers, positions=start.positions)
        atoms.calc = HALCalculator(potential, config.tau)
        rng = np.random.default_rng([seed, k, 7])
        MaxwellBoltzmannDistribution(atoms, temperature_K=config.temperature_K, rng=rng)
        dyn = Langevin(atoms, config.timestep_fs * units.fs, temperature_K=config.temperature_K, friction=0.02,
                       rng=rng)
        for step in range(config.md_interval, config.md_steps + 1, config.md_interval):
            try:
                dyn.run(config.md_interval)
            except Exception as err:  # a blown-up trajectory ends; what it found so far is kept
                say(f"  MD {k} stopped at step {step}: {type(err).__name__}")
                break
            sigma = float(atoms.calc.results.get("sigma", np.nan))
            snap = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
            snap.info.update(source=f"hal_md:{k}", md_step=step, sigma=sigma)
            snapshots.append(snap)
            if not np.isfinite(sigma) or sigma > config.max_sigma or _too_close(atoms, config.min_distance):
                break
    say(f"  biased MD: {len(starts)} trajectories, {len(snapshots)} snapshots in {time.time() - t:.0f} s")
    return snapshots


def _fingerprint(atoms: Atoms) -> tuple:
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    return (atoms.get_chemical_formula(), np.sort(d[np.triu_indices(len(atoms), 1)]))


def select_uncertain(candidates: Sequence[Atoms], sigma: np.ndarray, n: int, min_distance: float,
                     tolerance: float = 0.05) -> list[int]:
    """Indices of the ``n`` most uncertain candidates, skipping clashes and near-duplicates (sorted distances
    within ``tolerance`` Å, same formula)."""
    chosen: list[int] = []
    prints: list[tuple] = []
    for i in np.argsort(-np.asarray(sigma), kind="stable"):
        if len(chosen) >= n:
            break
        atoms = candidates[int(i)]
        if len(atoms) < 2 or not np.isfinite(sigma[i]) or _too_close(atoms, min_distance):
            continue
        fp = _fingerprint(atoms)
        if any(fp[0] == p[0] and len(fp[1]) == len(p[1]) and np.max(np.abs(fp[1] - p[1])) < tolerance
               for p in prints):
            continue
        chosen.append(int(i))
        prints.append(fp)
    return chosen


def label_with_xtb(structures: Sequence[Atoms], say=None) -> tuple[list[Atoms], int]:
    """GFN2-xTB energies/forces as ``REF_energy``/``REF_forces``; SCF failures are skipped and counted."""
    from molgym.potentials import SCFConvergenceError, load_potential

    xtb = load_potential("xtb")
    labelled, failures = [], 0
    for atoms in structures:
        try:
            e, f = xtb.energies_and_forces([atoms])
        except SCFConvergenceError:
            failures += 1
            continue
        labelled.append(labelled_copy(atoms, float(e[0]), f[0], category="hal"))
    return labelled, failures


def xtb_relaxation_frames(structures: Sequence[Atoms], frames: int, steps: int,
                          generators: Sequence[str]) -> list[Atoms]:
    """``frames`` evenly spaced frames (the last one included) of the GFN2-xTB BFGS relaxation of each structure
    that is a generator's final molecule (``source`` is ``"<generator>:<formula>"``, not a build prefix).

    Each frame carries the GFN2-xTB energy and forces the relaxation computed at it (labelled as
    :func:`label_with_xtb` labels). A relaxation that fails to converge an SCF keeps the frames it reached.
    """
    from ase.optimize import BFGS

    from molgym.potentials import SCFConvergenceError, load_potential

    xtb = load_potential("xtb")
    out: list[Atoms] = []
    for atoms in structures:
        source = str(atoms.info.get("source", ""))
        if source.split(":")[0] not in generators or source.endswith(":prefix"):
            continue
        work = Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
        work.calc = xtb.as_calculator()
        path: list[Atoms] = []

        def keep(work=work, path=path):  # observers run after the forces at the new positions are computed
            frame = Atoms(numbers=work.numbers, positions=work.positions.copy())
            path.append(labelled_copy(frame, work.get_potential_energy(), work.get_forces(), category="hal"))

        opt = BFGS(work, logfile=None)
        opt.attach(keep, interval=1)
        try:
            opt.run(fmax=0.05, steps=steps)
        except SCFConvergenceError:
            pass
        if len(path) < 2:
            continue
        picks = np.unique(np.linspace(1, len(path) - 1, frames).round().astype(int))
        for k in picks:
            path[k].info.update(source=f"{source}:xtb-relax", xtb_relax_step=int(k))
            out.append(path[k])
    return out


def _test_mae(potential, data: Path) -> dict:
    from molgym.io import read_structures
    from molgym.potentials.evaluation import stored_labels

    test = [a for a in read_structures(data / "test.xyz") if a.info.get("category") in ("equilibrium", "thermal")]
    err = np.abs(potential.energies(test) - stored_labels(test)[0])
    return {"structures": len(test), "energy_mae_meV": 1000 * float(np.mean(err))}


def _errors(potential, structures: Sequence[Atoms]) -> dict:
    from molgym.potentials.evaluation import stored_labels

    if not structures:
        return {"n": 0}
    err = np.abs(potential.energies(list(structures)) - stored_labels(structures)[0])
    return {"n": len(err), "mae_eV": float(err.mean()), "median_eV": float(np.median(err)),
            "max_eV": float(err.max())}


# ------------------------------------------------------------------------------------------------ the loop
def refine(config: RefineConfig, out: str | os.PathLike, progress: bool = True) -> list[dict]:
    """Run (or resume) the HAL loop of ``config`` in ``out``; returns the per-round log (see module docstring)."""
    import torch

    from molgym.io import read_structures, write_json, write_text, write_xyz
    from molgym.potentials.committee import CommitteeMACEPotential

    config.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = out / "settings.json"
    if settings.is_file():
        previous = json.loads(settings.read_text())
        if previous.get("data") != config.data or previous.get("train_dir") != config.train_dir:
            raise ValueError(f"{out} holds a refinement of {previous.get('train_dir')} on {previous.get('data')}; "
                             "use another --out to refine something else")
    write_json(settings, asdict(config))
    torch.set_num_threads(int(config.threads))
    data = Path(config.data)

    def say(msg: str) -> None:
        if progress:
            print(f"[refine] {msg}", flush=True)

    def record_log(records: list[dict]) -> None:
        write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    records: list[dict] = []
    train_dir, committee = Path(config.train_dir), config.committee
    model_path = None
    for r in range(1, config.rounds + 1):
        rdir = out / f"round-{r:02d}"
        done = rdir / "round.json"
        if done.is_file():
            record = json.loads(done.read_text())
            records.append(record)
            train_dir, committee, model_path = rdir / "train", str(rdir / "committee.npz"), rdir / "train" / "model.model"
            say(f"round {r}: already finished (mean σ of fresh samples {record['fresh_sigma_before']['mean']:.3f} eV)")
            if record.get("stop"):
                break
            continue
        rdir.mkdir(parents=True, exist_ok=True)
        t_round = time.time()
        say(f"round {r}/{config.rounds}")
        # the current potential: the previous round's model + committee (or the start)
        if model_path is None:
            model_path = _model_of(train_dir)
        if committee is None:
            from molgym.training.committee import fit_dataset_committee

            pot, _ = fit_dataset_committee(model_path, data, members=config.members, ridge=config.ridge,
                                           seed=config.seed, device=config.device, progress=progress)
            pot.heads.save(out / "start-committee.npz")
            committee = str(out / "start-committee.npz")
        pot = CommitteeMACEPotential(model_path, committee, device=config.device)

        # 1. candidates
        cand_path = rdir / "candidates.xyz"
        if cand_path.is_file():
            candidates = read_structures(cand_path)
        else:
            t = time.time()
            seed = config.seed * 100 + r
            samples = _generator_samples(config, pot, seed, say) if config.formulas and config.generators else []
            paths = _relaxation_paths(config, pot, seed, say) if config.relaxations_per_formula else []
            samples += paths
            finals = [a for a in samples if not a.info.get("source", "").endswith(":prefix")
                      and not a.info.get("source", "").startswith("relax:")]
            train = read_structures(data / "train.xyz")
            rng = np.random.default_rng([config.seed, r, 11])
            pool = [a for a in train if a.info.get("category") in ("equilibrium", "thermal") and len(a) > 2]
            n_train_starts = max(0, config.md_starts - len(finals)) if finals else config.md_starts
            starts = [pool[int(i)] for i in rng.choice(len(pool), size=min(n_train_starts, len(pool)), replace=False)]
            starts += finals[: max(0, config.md_starts - len(starts))]
            candidates = samples + (_biased_md(config, pot, starts, seed, say) if config.md_steps else [])
            write_xyz(cand_path, candidates)
            say(f"  {len(candidates)} candidates in {time.time() - t:.0f} s")
        _, sigma_before = pot.energies_and_uncertainties(candidates)

        # 2-3. select and label
        labelled_path = rdir / "labelled.xyz"
        failures_path = rdir / "labelled.json"
        if labelled_path.is_file() and failures_path.is_file():
            labelled = read_structures(labelled_path)
            counts = json.loads(failures_path.read_text())
            failures = counts["scf_failures"]
        else:
            chosen = select_uncertain(candidates, sigma_before, config.select, config.min_distance)
            picked = []
            for i in chosen:
                atoms = candidates[i]
                atoms.info["sigma_selected"] = float(sigma_before[i])
                picked.append(atoms)
            t = time.time()
            labelled, failures = label_with_xtb(picked)
            relaxed = (xtb_relaxation_frames(labelled, config.xtb_relax_frames, config.xtb_relax_steps,
                                             config.generators) if config.xtb_relax_frames else [])
            counts = {"selected": len(picked), "labelled": len(labelled), "scf_failures": failures,
                      "xtb_relax_frames": len(relaxed)}
            labelled += relaxed
            write_xyz(labelled_path, labelled)
            write_json(failures_path, counts)
            say(f"  labelled {counts['labelled']} with GFN2-xTB ({failures} SCF failures) and {len(relaxed)} "
                f"frames of their xTB relaxations in {time.time() - t:.0f} s")
        errors_before = _errors(pot, labelled)

        # 4. refit: fine-tune on train + everything labelled so far, then the committee on the new model
        harvested = [out / f"round-{k:02d}" / "labelled.xyz" for k in range(1, r + 1)]
        train_plus = rdir / "train_plus.xyz"
        new_model = rdir / "train" / "model.model"
        if not (rdir / "train" / "finetune_done.json").is_file():
            if not train_plus.is_file():
                structures = read_structures(data / "train.xyz")
                for path in harvested:
                    structures += read_structures(path) * config.harvest_weight
                write_xyz(train_plus, structures)
            from molgym.training.finetune import finetune_mace

            t = time.time()
            say(f"  fine-tuning {config.epochs} epoch(s) from {train_dir}")
            new_model = finetune_mace(train_dir, data, rdir / "train", epochs=config.epochs, train_file=train_plus,
                                      seed=config.seed, threads=config.threads, device=config.device,
                                      lr=config.lr)
            say(f"  fine-tuned in {time.time() - t:.0f} s")
        new_committee = rdir / "committee.npz"
        if not new_committee.is_file():
            from molgym.training.committee import fit_dataset_committee

            refit, report = fit_dataset_committee(new_model, data, members=config.members, ridge=config.ridge,
                                                  seed=config.seed + r, extra_train=harvested,
                                                  device=config.device, progress=progress)
            refit.heads.save(new_committee)
            write_json(rdir / "committee.json", report)
        train_plus.unlink(missing_ok=True)  # 25 MB; rebuilt from the dataset and the labelled files if needed
        new_pot = CommitteeMACEPotential(new_model, new_committee, device=config.device)
        _, sigma_after = new_pot.energies_and_uncertainties(candidates)

        previous = records[-1]["fresh_sigma_before"]["mean"] if records else None
        mean_before = float(np.mean(sigma_before))
        stop = previous is not None and mean_before > (1 - config.tolerance) * previous
        record = {
            "round": r,
            # what this round sampled (a resumed run may change it between rounds; settings.json holds the last)
            "sampling": {"formulas": list(config.formulas), "generators": list(config.generators),
                         "generator_options": config.generator_options,
                         "samples_per_formula": config.samples_per_formula,
                         "relaxations_per_formula": config.relaxations_per_formula,
                         "md_starts": config.md_starts},
            "candidates": len(candidates),
            "selected": counts["selected"],
            "labelled": counts["labelled"],
            "xtb_relax_frames": counts.get("xtb_relax_frames", 0),
            "scf_failures": failures,
            "new_structure_errors_before_refit": errors_before,
            "new_structure_errors_after_refit": _errors(new_pot, labelled),
            "fresh_sigma_before": {"mean": mean_before, "max": float(np.max(sigma_before)),
                                   "median": float(np.median(sigma_before))},
            "fresh_sigma_after": {"mean": float(np.mean(sigma_after)), "max": float(np.max(sigma_after)),
                                  "median": float(np.median(sigma_after))},
            "test_before": _test_mae(pot, data),
            "test_after": _test_mae(new_pot, data),
            "calibration": json.loads((rdir / "committee.json").read_text())["build_trajectories"]
            if (rdir / "committee.json").is_file() else None,
            "model": str(new_model),
            "committee": str(new_committee),
            "seconds": round(time.time() - t_round, 1),
            "stop": bool(stop),
        }
        write_json(done, record)
        records.append(record)
        record_log(records)
        say(f"  round {r}: fresh σ mean {mean_before:.3f} -> {record['fresh_sigma_after']['mean']:.3f} eV, new "
            f"structures MAE {errors_before.get('mae_eV', float('nan')):.3f} -> "
            f"{record['new_structure_errors_after_refit'].get('mae_eV', float('nan')):.3f} eV, test MAE "
            f"{record['test_before']['energy_mae_meV']:.0f} -> {record['test_after']['energy_mae_meV']:.0f} meV")
        train_dir, committee, model_path = rdir / "train", str(new_committee), new_model
        if stop:
            say(f"  fresh-sample uncertainty stopped falling ({mean_before:.3f} vs {previous:.3f} eV): done")
            break
    record_log(records)
    return records


def _model_of(train_dir: Path) -> Path:
    """The model file a training run wrote (``model.model``), with a clear error when it has none."""
    path = Path(train_dir) / "model.model"
    if not path.is_file():
        raise FileNotFoundError(f"training run {train_dir} has no model.model; finish it with `molgym potential train`")
    return path
