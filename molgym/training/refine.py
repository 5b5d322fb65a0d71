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

The steps live in their own modules: settings in :mod:`molgym.training.refine_config`, sampling in
:mod:`molgym.training.refine_sampling`, selection and labelling in :mod:`molgym.training.refine_labelling`;
this module holds the loop, one function per step of a round.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from ase import Atoms

from molgym.training.refine_config import RefineConfig
from molgym.training.refine_labelling import label_with_xtb, select_uncertain, xtb_relaxation_frames
from molgym.training.refine_sampling import _biased_md, _generator_samples, _relaxation_paths

__all__ = ["RefineConfig", "refine", "read_log"]


def read_log(out: str | os.PathLike) -> list[dict]:
    """The per-round records of a refinement run (``OUT/log.jsonl``), oldest first."""
    path = Path(out) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------ the loop
def refine(config: RefineConfig, out: str | os.PathLike, progress: bool = True) -> list[dict]:
    """Run (or resume) the HAL loop of ``config`` in ``out``; returns the per-round log (see module docstring)."""
    import torch

    from molgym.io import write_json, write_text
    from molgym.potentials.committee import CommitteeMACEPotential

    config.validate()
    out = Path(out)
    _claim(out, config)
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
            committee = _start_committee(config, model_path, data, out, progress)
        pot = CommitteeMACEPotential(model_path, committee, device=config.device)

        candidates = _sample(config, pot, data, rdir, r, say)
        _, sigma_before = pot.energies_and_uncertainties(candidates)
        labelled, counts = _select_and_label(config, candidates, sigma_before, rdir, say)
        errors_before = _errors(pot, labelled)
        new_model, new_committee = _refit(config, out, data, rdir, r, train_dir, progress, say)
        new_pot = CommitteeMACEPotential(new_model, new_committee, device=config.device)

        previous = records[-1]["fresh_sigma_before"]["mean"] if records else None
        record = _evaluate(config, r, rdir, pot, new_pot, candidates, labelled, counts, sigma_before,
                           errors_before, previous, new_model, new_committee, t_round)
        write_json(done, record)
        records.append(record)
        record_log(records)
        say(f"  round {r}: fresh σ mean {record['fresh_sigma_before']['mean']:.3f} -> "
            f"{record['fresh_sigma_after']['mean']:.3f} eV, new "
            f"structures MAE {errors_before.get('mae_eV', float('nan')):.3f} -> "
            f"{record['new_structure_errors_after_refit'].get('mae_eV', float('nan')):.3f} eV, test MAE "
            f"{record['test_before']['energy_mae_meV']:.0f} -> {record['test_after']['energy_mae_meV']:.0f} meV")
        train_dir, committee, model_path = rdir / "train", str(new_committee), new_model
        if record["stop"]:
            say(f"  fresh-sample uncertainty stopped falling ({record['fresh_sigma_before']['mean']:.3f} vs "
                f"{previous:.3f} eV): done")
            break
    record_log(records)
    return records


def _claim(out: Path, config: RefineConfig) -> None:
    """Make ``out`` and record ``config`` in ``out/settings.json``, refusing a directory that holds a refinement
    of another training run or dataset."""
    from molgym.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    settings = out / "settings.json"
    if settings.is_file():
        previous = json.loads(settings.read_text())
        if previous.get("data") != config.data or previous.get("train_dir") != config.train_dir:
            raise ValueError(f"{out} holds a refinement of {previous.get('train_dir')} on {previous.get('data')}; "
                             "use another --out to refine something else")
    write_json(settings, asdict(config))


def _start_committee(config: RefineConfig, model_path: Path, data: Path, out: Path, progress: bool) -> str:
    """Fit the starting model's committee (when none was given); returns its file, ``out/start-committee.npz``."""
    from molgym.training.committee import fit_dataset_committee

    pot, _ = fit_dataset_committee(model_path, data, members=config.members, ridge=config.ridge,
                                   seed=config.seed, device=config.device, progress=progress)
    pot.heads.save(out / "start-committee.npz")
    return str(out / "start-committee.npz")


def _sample(config: RefineConfig, pot, data: Path, rdir: Path, r: int, say) -> list[Atoms]:
    """1. The round's candidates: generator samples, relaxation paths, then biased MD from training molecules
    and generator molecules (``rdir/candidates.xyz``; a rerun reads them back)."""
    from molgym.io import read_structures, write_xyz

    cand_path = rdir / "candidates.xyz"
    if cand_path.is_file():
        return read_structures(cand_path)
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
    return candidates


def _select_and_label(config: RefineConfig, candidates: Sequence[Atoms], sigma_before: np.ndarray, rdir: Path,
                      say) -> tuple[list[Atoms], dict]:
    """2-3. Select the most uncertain candidates and label them with GFN2-xTB (``rdir/labelled.xyz``, counts in
    ``rdir/labelled.json``; a rerun reads them back). Returns the labelled structures and the counts."""
    from molgym.io import read_structures, write_json, write_xyz

    labelled_path = rdir / "labelled.xyz"
    failures_path = rdir / "labelled.json"
    if labelled_path.is_file() and failures_path.is_file():
        return read_structures(labelled_path), json.loads(failures_path.read_text())
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
    return labelled, counts


def _refit(config: RefineConfig, out: Path, data: Path, rdir: Path, r: int, train_dir: Path, progress: bool,
           say) -> tuple[Path, Path]:
    """4. Fine-tune on train + everything labelled so far, then fit the committee on the new model (each kept in
    ``rdir``; a rerun skips what is done). Returns the new model and committee files."""
    from molgym.io import read_structures, write_json, write_xyz

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
    return new_model, new_committee


def _evaluate(config: RefineConfig, r: int, rdir: Path, pot, new_pot, candidates: Sequence[Atoms],
              labelled: Sequence[Atoms], counts: dict, sigma_before: np.ndarray, errors_before: dict,
              previous: float | None, new_model: Path, new_committee: Path, t_round: float) -> dict:
    """5. The round's record: the fresh candidates' σ and the new structures' errors before and after the refit,
    test MAE, and whether to stop (the mean σ of fresh candidates fell by less than ``tolerance``)."""
    _, sigma_after = new_pot.energies_and_uncertainties(candidates)
    data = Path(config.data)
    mean_before = float(np.mean(sigma_before))
    stop = previous is not None and mean_before > (1 - config.tolerance) * previous
    return {
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
        "scf_failures": counts["scf_failures"],
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


def _model_of(train_dir: Path) -> Path:
    """The model file a training run wrote (``model.model``), with a clear error when it has none."""
    path = Path(train_dir) / "model.model"
    if not path.is_file():
        raise FileNotFoundError(f"training run {train_dir} has no model.model; finish it with `molgym potential train`")
    return path
