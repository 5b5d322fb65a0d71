"""``molgym diffusion train|analyse|evaluate``: train the energy-based diffusion model on QM9, analyse its score,
and measure EDM's QM9 figures on its samples.

``molgym generate diffusion`` (sampling) is registered from here too (:func:`register_generate`), so all of the
diffusion sampler's command-line options live in one module. Heavy imports (torch, MACE) happen inside the
command functions only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from molgym.cli import duration
from molgym.cli.generate import add_common_arguments, positive_int, check_output_path, run_generation, sample_with_progress


def _float_at_least(text: str, low: float, strict: bool, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not (value > low if strict else value >= low):  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _float_at_least(text, 0.0, True, "a positive number")


def _non_negative_float(text: str) -> float:
    return _float_at_least(text, 0.0, False, "a number >= 0")


def _sigmas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated noise levels like 10,1,0.1, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"noise levels must be positive numbers, got {text!r}")
    return values


def register(subparsers) -> None:
    group = subparsers.add_parser("diffusion", help="train and analyse the energy-based diffusion model (QM9)",
                                  description="Energy-based diffusion model on QM9: training and score analysis. "
                                  "Sample with `molgym generate diffusion`. See docs/diffusion.md.")
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(title="commands", metavar="COMMAND")

    p = commands.add_parser(
        "train", help="train on QM9 (EDM split) with EDM's loss; checkpoints, resume, learning curve",
        description="Train the noise-conditioned energy network on QM9's EDM split (100,000 training molecules). "
        "Writes OUT/checkpoint.pt (resumable), OUT/model.pt (EMA weights, for sampling), OUT/learning_curve.csv "
        "and OUT/train.log. Stops at --max-steps, --epochs or --time-limit, whichever comes first.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--max-steps", type=positive_int, default=None, help="total optimiser steps")
    p.add_argument("--epochs", type=_positive_float, default=None, help="total epochs over the training split")
    p.add_argument("--time-limit", type=duration, default=None, help="wall time of this call (3600, 45m, 1.5h)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="molecules per step")
    p.add_argument("--lr", type=_positive_float, default=2e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and noise")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's; 1 is best on a shared machine)")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    p.add_argument("--channels", type=positive_int, default=32, help="channels of the network")
    p.add_argument("--max-L", type=int, choices=(0, 1, 2), default=1, help="highest irrep order of hidden features")
    p.add_argument("--correlation", type=int, choices=(1, 2, 3), default=2, help="body order of the product basis")
    p.add_argument("--interactions", type=positive_int, default=2, help="message-passing layers")
    p.add_argument("--snapshot-every", type=positive_int, default=None,
                   help="also keep the EMA weights every N steps under OUT/snapshots/ (for learning curves)")
    p.add_argument("--heavy-atoms", action="store_true",
                   help="train on heavy atoms only (about 4x fewer pairs per molecule); the sampler then adds "
                        "hydrogens by valence rules")
    p.add_argument("--train-subset", type=positive_int, default=None,
                   help="train on the first N training molecules only (smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser(
        "analyse", aliases=["analyze"],
        help="compare the score with a restoring force (high noise) and the MACE forces (low noise)",
        description="Score analysis after SiMGen: on QM9 test molecules noised to each sigma, the model's score is "
        "compared with the restoring force of a Gaussian with the data's spread and with the forces of a MACE "
        "potential. Prints a table and writes OUT/score_analysis.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="explicit-h",
                   help="checkpoint with hydrogens, or 'explicit-h' for the shipped one (the forces it is compared "
                        "with need whole molecules)")
    p.add_argument("--out", required=True, help="output directory (score_analysis.json)")
    p.add_argument("--molecules", type=positive_int, default=100, help="QM9 test molecules")
    p.add_argument("--sigmas", type=_sigmas, default=None, help="noise levels in Å (default 10,5,2,1,0.5,...,0.01)")
    p.add_argument("--potential", default="default",
                   help="potential whose forces the score is compared with ('none' to skip)")
    p.add_argument("--seed", type=int, default=0, help="seed of the molecules drawn and the noise")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_analyse)

    p = commands.add_parser(
        "evaluate", help="sample N molecules and compute EDM's QM9 figures (stability, validity, uniqueness, novelty)",
        description="Sample N molecules unconditionally (sizes from QM9) and score them with molgym's metrics in "
        "EDM's terms: atom and molecule stability, validity, valid and unique, novelty; also the sampling cost "
        "per molecule. Writes OUT/molecules.xyz and OUT/metrics.json. --molecules-from scores an existing file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="default",
                   help="checkpoint, or a shipped model: 'default' (heavy atoms + valence rules) or 'explicit-h'")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("-n", "--num", type=positive_int, default=1000, help="molecules to sample")
    p.add_argument("--steps", type=positive_int, default=20, help="Heun steps (default 20, as measured)")
    p.add_argument("--churn", type=_non_negative_float, default=10.0, help="EDM's S_churn (default 10, as measured: with 20 steps, the largest churn EDM allows)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="molecules integrated together")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--molecules-from", default=None, help="score this extended XYZ file instead of sampling")
    p.add_argument("--relax-steps", type=int, default=0,
                   help="FIRE steps of a final relaxation under --potential (default 0: the raw samples only); the "
                        "raw samples are scored too, beside the relaxed ones (molecules.xyz, molecules-relaxed.xyz)")
    p.add_argument("--potential", default="auto", help="potential of the relaxation (default: the shipped MACE)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def _check_device(device: str) -> None:
    from molgym.cli import CLIError

    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CLIError(f"unknown --device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device!r}: no CUDA device is available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device!r} is not supported; use cpu or cuda[:N]")


def cmd_train(args) -> int:
    from molgym.cli import CLIError

    if args.max_steps is None and args.epochs is None and args.time_limit is None:
        raise CLIError("give --max-steps, --epochs or --time-limit, or training never stops")
    out = Path(args.out)
    if args.resume and not (out / "checkpoint.pt").is_file():
        raise CLIError(f"--resume: no checkpoint at {out / 'checkpoint.pt'}")
    if not args.resume and (out / "checkpoint.pt").is_file():
        raise CLIError(f"{out / 'checkpoint.pt'} exists; pass --resume to continue it or choose another --out")
    import torch

    _check_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from molgym.agents.diffusion.model import ModelConfig
    from molgym.agents.diffusion.training import TrainSettings, train

    settings = TrainSettings(batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps, epochs=args.epochs,
                             time_limit=args.time_limit, seed=args.seed, train_subset=args.train_subset,
                             snapshot_every=args.snapshot_every)
    settings.check()
    config = ModelConfig(channels=args.channels, max_L=args.max_L, correlation=args.correlation,
                         num_interactions=args.interactions, radial_mlp=(args.channels, args.channels),
                         hydrogens=not args.heavy_atoms, avg_num_neighbors=8.0 if args.heavy_atoms else 17.0)
    summary = train(out, settings, config, resume=args.resume, progress=not args.no_progress, device=args.device)
    last = summary["last"] or {}
    print(f"trained to step {summary['step']} (epoch {summary['epoch']:.3f}, {summary['seconds']:.0f} s, "
          f"stopped: {summary['stop_reason']}); last train loss {last.get('train_loss')}, valid loss "
          f"{last.get('valid_loss')}; model: {summary['model']}")
    return 0


def cmd_analyse(args) -> int:
    import time

    import numpy as np

    from molgym.agents.diffusion.analysis import DEFAULT_SIGMAS, format_table, score_analysis
    from molgym.agents.diffusion.checkpoint import denoiser_from_checkpoint, load_checkpoint
    from molgym.io import write_json

    state = load_checkpoint(args.model)  # fails fast on a missing or foreign file
    if not state["config"].get("hydrogens", True):
        from molgym.cli import CLIError

        raise CLIError(f"--model {args.model!r} is a heavy-atom model; the score analysis compares the score with "
                       "forces on whole molecules: use --model explicit-h or another model trained with hydrogens")
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    potential = None
    if args.potential.lower() != "none":
        from molgym.potentials import load_potential

        potential = load_potential(args.potential)
    from molgym.agents.diffusion.data import MoleculeSet

    test = MoleculeSet.from_split("test")
    if args.molecules > len(test):
        raise ValueError(f"--molecules {args.molecules}: the test split has only {len(test)}")
    rows_idx = np.random.default_rng(args.seed).choice(len(test), size=args.molecules, replace=False)
    molecules = [test.qm9.atoms(int(test.rows[i])) for i in np.sort(rows_idx)]
    model = denoiser_from_checkpoint(state)
    sigmas = args.sigmas or DEFAULT_SIGMAS
    start = time.perf_counter()
    rows = score_analysis(model, molecules, sigmas, potential=potential, seed=args.seed)
    table = format_table(rows)
    print(table)
    path = Path(args.out) / "score_analysis.json"
    write_json(path, {"model": args.model, "model_step": state.get("step"), "potential": args.potential,
                      "molecules": args.molecules, "split": "test (EDM split)", "seed": args.seed,
                      "seconds": round(time.perf_counter() - start, 1), "rows": rows, "table": table})
    print(f"wrote {path}")
    return 0


def _print_metrics(metrics: dict, title: str | None) -> None:
    from molgym.agents.diffusion.evaluation import EDM_QM9

    if title:
        print(f"-- {title}")
    for key in ("atom_stability", "molecule_stability", "validity", "valid_and_unique"):
        print(f"{key:20s} {metrics[key]:.4f}   (EDM {EDM_QM9[key]:.3f})")
    for key in ("valid_largest_fragment", "uniqueness", "novelty", "novelty_unique", "connected",
                "skeleton_valid"):
        if key not in metrics:
            continue
        value = metrics[key]
        print(f"{key:20s} {'n/a' if value is None else f'{value:.4f}'}")


def cmd_evaluate(args) -> int:
    import platform
    import time

    from molgym.agents.diffusion.evaluation import EDM_QM9, qm9_metrics
    from molgym.io import write_json, write_xyz

    from molgym.cli import CLIError

    if args.relax_steps < 0:
        raise CLIError(f"--relax-steps must be 0 (no relaxation) or more, got {args.relax_steps}")
    if args.relax_steps and args.molecules_from is not None:
        raise CLIError("--relax-steps relaxes fresh samples; --molecules-from scores a file as it is (score the "
                       "molecules-relaxed.xyz of an earlier run instead)")
    out = Path(args.out)
    sampling = relaxed = None
    if args.molecules_from is not None:
        import ase.io

        if not Path(args.molecules_from).is_file():
            raise FileNotFoundError(f"--molecules-from {args.molecules_from!r} does not exist")
        molecules = ase.io.read(args.molecules_from, index=":")
    else:
        from molgym.agents.diffusion import DiffusionSampler
        import torch

        generator = DiffusionSampler(model=args.model, steps=args.steps, churn=args.churn,
                                     batch_size=args.batch_size, threads=args.threads, potential=args.potential)
        molecules, seconds = sample_with_progress(generator, args.num, args.seed, progress=not args.no_progress,
                                                  desc="diffusion sample")
        write_xyz(out / "molecules.xyz", molecules)
        sampling = {"seconds": round(seconds, 1), "seconds_per_molecule": round(seconds / len(molecules), 4),
                    "steps": args.steps, "network_evaluations_per_molecule": 2 * args.steps - 1,
                    "churn": args.churn, "batch_size": args.batch_size, "seed": args.seed,
                    "threads": torch.get_num_threads() if args.threads is None else args.threads,
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "generator": generator.metadata()}
        if args.relax_steps > 0:
            start = time.perf_counter()
            relaxed_molecules = generator.relax(molecules, steps=args.relax_steps)
            relax_seconds = time.perf_counter() - start
            write_xyz(out / "molecules-relaxed.xyz", relaxed_molecules)
            relaxed = {"relax_steps": args.relax_steps, "potential": generator.metadata()["potential"],
                       "seconds": round(relax_seconds, 1),
                       "seconds_per_molecule": round((seconds + relax_seconds) / len(molecules), 4),
                       "molecules_file": str(out / "molecules-relaxed.xyz")}
    start = time.perf_counter()
    metrics = qm9_metrics(molecules)
    result = {"model": args.model, "metrics": metrics, "sampling": sampling, "edm_published": EDM_QM9,
              "metrics_seconds": round(time.perf_counter() - start, 1),
              "molecules_file": args.molecules_from or str(out / "molecules.xyz")}
    if relaxed is not None:
        relaxed["metrics"] = qm9_metrics(relaxed_molecules)
        result["relaxed"] = relaxed
    write_json(out / "metrics.json", result)
    _print_metrics(metrics, "raw samples" if relaxed else None)
    if relaxed is not None:
        _print_metrics(relaxed["metrics"], f"after {args.relax_steps} FIRE steps under {relaxed['potential']} "
                                           f"({relaxed['seconds_per_molecule']} s/molecule in all)")
    if sampling:
        print(f"sampling: {sampling['seconds_per_molecule']} s/molecule ({args.steps} Heun steps, batch "
              f"{args.batch_size}); EDM: {EDM_QM9['seconds_per_molecule_gtx1080ti']} s/sample on a GTX 1080 Ti")
    print(f"wrote {out / 'metrics.json'}")
    return 0


def register_generate(commands) -> None:
    """``molgym generate diffusion`` (added to :data:`molgym.cli.generate.METHODS`)."""
    p = commands.add_parser(
        "diffusion", help="energy-based diffusion sampler trained on QM9 (EDM Heun sampler)",
        description="Sample molecules from the energy-based diffusion model (docs/diffusion.md). Without --task "
        "(or with qm9-unconditional) sizes follow QM9 and elements are sampled; a formula task fixes the elements.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_arguments(p)
    p.add_argument("--model", default="default",
                   help="checkpoint, or a shipped model: 'default' (heavy atoms + valence rules) or 'explicit-h'")
    p.add_argument("--steps", type=positive_int, default=20, help="Heun steps (default 20, as measured)")
    p.add_argument("--churn", type=_non_negative_float, default=10.0, help="EDM's S_churn (0: deterministic ODE; default 10, as measured)")
    p.add_argument("--sigma-max", type=_positive_float, default=10.0, help="initial noise level (Å)")
    p.add_argument("--atoms", type=positive_int, default=None,
                   help="atoms per molecule, hydrogens included (default: drawn from QM9)")
    p.add_argument("--batch-size", type=positive_int, default=128, help="molecules integrated together")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    check_output_path(args.out)  # before the sampler loads its model
    from molgym.agents.diffusion import DiffusionSampler

    generator = DiffusionSampler(model=args.model, steps=args.steps, churn=args.churn, sigma_max=args.sigma_max,
                                 n_atoms=args.atoms, batch_size=args.batch_size, threads=args.threads)
    command = "molgym generate diffusion " + json.dumps({k: v for k, v in vars(args).items()
                                                        if k not in ("func", "group_parser")}, default=str)
    return run_generation(generator, args.num, args.seed, args.out, not args.no_progress, command, task=args.task)
