"""``molgym potential ...``: inspect and evaluate potentials.

One ``register_<command>`` function per subcommand adds its parser, next to the ``cmd_<command>`` function that
runs it; ``refine`` (the HAL loop) lives in :mod:`molgym.cli.potential_refine`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from molgym.cli import CLIError, duration
from molgym.cli.potential_refine import register_refine
from molgym.cli.potential_study import register_campaign, register_study


def register(subparsers) -> None:
    """Add the ``potential`` group and its subcommands, in the order ``molgym potential --help`` lists them."""
    group = subparsers.add_parser("potential", help="inspect, evaluate, build data for and train potentials")
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(title="potential commands", metavar="COMMAND")
    register_info(commands)
    register_evaluate(commands)
    register_dataset(commands)
    register_train(commands)
    register_study(commands)
    register_campaign(commands)
    register_card(commands)
    register_committee(commands)
    register_refine(commands)


def register_info(commands) -> None:
    """``molgym potential info SPEC``: describe a potential (species, backend, model card)."""
    info = commands.add_parser("info", help="describe a potential (species, backend, model card)")
    info.add_argument("spec", help="'default', 'xtb', 'gfn1-xtb', 'pm6' or the path of a MACE model file")
    info.add_argument("--device", default=None, help="device for MACE models (default: GPU if present)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    import contextlib
    import sys

    from ase.data import chemical_symbols

    from molgym.potentials import load_potential

    # Backends print while they import and load (mace: "cuequivariance ... is not available"): send that to
    # stderr, so that stdout holds only our output and `--json` is valid JSON.
    with contextlib.redirect_stdout(sys.stderr):
        pot = load_potential(args.spec, device=args.device)
    info: dict = {
        "spec": args.spec,
        "name": pot.name,
        "backend": type(pot).__name__,
        "species": [chemical_symbols[z] for z in sorted(pot.species)],
    }
    if hasattr(pot, "r_max"):
        info.update(r_max=pot.r_max, dtype=str(pot.dtype).replace("torch.", ""), device=str(pot.device),
                    parameters=int(sum(p.numel() for p in pot.model.parameters())), path=pot.path)
    if args.spec == "default":
        from molgym.potentials import shipped_model_card

        info["model_card"] = shipped_model_card("default")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    species = info.pop("species")
    for key, value in info.items():
        if key != "model_card":
            print(f"{key:>10}: {value}")
    print(f"{'species':>10}: {' '.join(species) if len(species) <= 20 else f'{species[0]}..{species[-1]} ({len(species)})'}")
    return 0


def register_evaluate(commands) -> None:
    """``molgym potential evaluate``: energy and force errors against a reference."""
    ev = commands.add_parser(
        "evaluate",
        help="energy and force errors of a potential against a reference",
        description="Energy and force errors of --potential against --reference on the structures of --data, "
        "per category (atoms.info['category']), as a table and as JSON.",
    )
    ev.add_argument("--potential", required=True, help="the potential to assess (spec or MACE model file)")
    ev.add_argument(
        "--reference",
        default="stored",
        help="reference potential spec, or 'stored' to use the energies/forces stored in --data (default)",
    )
    ev.add_argument("--data", required=True,
                    help="structure file (extended XYZ, ...), 'qm9:N', or a dataset directory from "
                         "`molgym potential dataset` (then its test.xyz, nonqm9.xyz and isomers.xyz)")
    ev.add_argument("--seed", type=int, default=0, help="seed for 'qm9:N' sampling (default 0)")
    ev.add_argument("--device", default=None)
    ev.add_argument("--out", default=None, help="directory for evaluation.json (and the table as .txt)")
    ev.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if Path(args.data).is_dir():
        return _evaluate_dataset(args)
    from molgym.data.qm9 import read_data_spec
    from molgym.io import write_json, write_text
    from molgym.potentials import load_potential
    from molgym.potentials.evaluation import STORED, error_table, format_table, predict, stored_labels

    # Everything that can fail on bad input fails here, before any energy is computed.
    structures = read_data_spec(args.data, seed=args.seed)
    potential = load_potential(args.potential, device=args.device)
    potential.check_species(structures)
    if args.reference == STORED:
        reference_labels = stored_labels(structures)
        reference_name = "stored labels"
    else:
        reference = load_potential(args.reference, device=args.device)
        reference.check_species(structures)
        reference_name = reference.name

    start = time.perf_counter()
    predicted = predict(potential, structures, progress=True)
    if args.reference != STORED:
        reference_labels = predict(reference, structures, progress=True)
    table = error_table(structures, predicted, reference_labels)
    elapsed = time.perf_counter() - start

    text = format_table(table)
    print(f"{potential.name} vs {reference_name} on {len(structures)} structures from {args.data}")
    print(text)
    if args.out:
        out = Path(args.out)
        result = {
            "potential": potential.name,
            "reference": reference_name,
            "data": str(args.data),
            "seed": args.seed,
            "seconds": elapsed,
            "errors": table,
        }
        write_json(out / "evaluation.json", result)
        write_text(out / "evaluation.txt", text + "\n")
        print(f"wrote {out / 'evaluation.json'}")
    return 0


def _evaluate_dataset(args: argparse.Namespace) -> int:
    from molgym.io import write_json, write_text
    from molgym.potentials.evaluation import evaluate_dataset, format_dataset_result

    if args.reference != "stored":
        raise ValueError("a dataset directory carries its own labels; use --reference stored (the default)")
    result = evaluate_dataset(args.potential, args.data, device=args.device, progress=True)
    text = format_dataset_result(result)
    print(text)
    if args.out:
        out = Path(args.out)
        write_json(out / "evaluation.json", result)
        write_text(out / "evaluation.txt", text + "\n")
        print(f"wrote {out / 'evaluation.json'}")
    return 0


def register_dataset(commands) -> None:
    """``molgym potential dataset``: build the reward potential's dataset."""
    ds = commands.add_parser(
        "dataset",
        help="build the reward potential's dataset (QM9-derived, GFN2-xTB labels)",
        description="Configurations derived from QM9 (equilibrium, thermal MD, build prefixes, misplaced atoms, "
        "close contacts, isolated atoms, diatomics), split by molecule, plus non-QM9 and C7H10O2-isomer test "
        "sets, labelled with GFN2-xTB. Resumable: rerun the same command to finish an interrupted build.",
    )
    ds.add_argument("--out", required=True, help="output directory")
    ds.add_argument("--size", default="default", help="preset: tiny, small or default (default: default)")
    ds.add_argument("--seed", type=int, default=0)
    ds.add_argument("--workers", type=int, default=None, help="worker processes (default: every core)")
    ds.add_argument("--train-molecules", type=int, default=None, help="override the preset's train molecules")
    ds.add_argument("--test-molecules", type=int, default=None, help="override the preset's test molecules")
    ds.add_argument("--extra-train-molecules", type=int, default=None, metavar="N",
                    help="N more train-split QM9 molecules in shards of their own; valid, test, nonqm9 and isomers "
                    "stay byte-identical, and a rerun into an existing --out labels only the new molecules")
    ds.add_argument("--extra-train-xyz", action="append", default=[], metavar="FILE",
                    help="extended XYZ of structures already labelled (REF_energy, REF_forces; H C N O F only), "
                    "e.g. a refinement round's labelled.xyz, appended to train.xyz (repeatable)")
    ds.set_defaults(func=cmd_dataset)


def cmd_dataset(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from molgym.data.dataset import SIZES, build_dataset

    if args.size not in SIZES:
        raise ValueError(f"unknown dataset size {args.size!r}; allowed: {', '.join(SIZES)}")
    config = replace(SIZES[args.size], seed=args.seed)
    if args.train_molecules is not None:
        config = replace(config, train_molecules=args.train_molecules)
    if args.test_molecules is not None:
        config = replace(config, test_molecules=args.test_molecules)
    if args.extra_train_molecules is not None:
        config = replace(config, extra_train_molecules=args.extra_train_molecules)
    config.validate()
    manifest = build_dataset(args.out, config, workers=args.workers, extra_train_xyz=args.extra_train_xyz)
    for name, counts in manifest["counts"].items():
        print(f"{name:>8}: {counts['total']:6d} structures from {counts['molecules']} molecules  "
              + ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("total", "molecules")))
    for record in manifest["extra_train_xyz"]:
        print(f"  train.xyz includes {record['structures']} structures of {record['path']}")
    if manifest["failures"]:
        print("skipped (SCF failures): " + ", ".join(f"{k[7:]} {v}" for k, v in manifest["failures"].items()))
    print(f"wrote {Path(args.out) / 'manifest.json'}")
    return 0


def register_train(commands) -> None:
    """``molgym potential train``: train a MACE potential with mace-torch's trainer."""
    tr = commands.add_parser(
        "train",
        help="train a MACE potential on a dataset with mace-torch's trainer",
        description="Runs mace-torch's trainer (mace.cli.run_train) on DATA/train.xyz and DATA/valid.xyz with the "
        "isolated-atom xTB energies as E0s. Resumable: rerun the same command to continue from the newest "
        "checkpoint; rerun with --epochs at or below the epochs done to write the model from the best checkpoint.",
    )
    tr.add_argument("--data", required=True, help="dataset directory from `molgym potential dataset`")
    tr.add_argument("--out", required=True, help="output directory (model, checkpoints, logs)")
    tr.add_argument("--architecture", default="cpu", help="preset from molgym.potentials.mace_arch (default cpu)")
    tr.add_argument("--epochs", type=int, default=100)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--lr", type=float, default=0.01)
    tr.add_argument("--energy-weight", type=float, default=40.0)
    tr.add_argument("--forces-weight", type=float, default=10.0)
    tr.add_argument("--stage-two-from", type=int, default=None, metavar="EPOCH",
                    help="switch to mace's stage two (energy-weighted loss, lower lr, weight averaging) at EPOCH; "
                    "the model is then OUT/NAME_stagetwo.model")
    tr.add_argument("--stage-two-energy-weight", type=float, default=1000.0)
    tr.add_argument("--stage-two-forces-weight", type=float, default=10.0)
    tr.add_argument("--stage-two-lr", type=float, default=1e-3)
    tr.add_argument("--pair-repulsion", action="store_true", help="add mace's ZBL pair repulsion to the model")
    tr.add_argument("--category-weight", action="append", default=[], metavar="CATEGORY=WEIGHT",
                    help="loss weight of a dataset category, e.g. build=2 (repeatable; others weigh 1)")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--time-limit", type=duration, default=None,
                    help="stop between epochs before this wall time (3600, 45m, 1.5h) and write the model from the "
                    "newest checkpoint; rerun to continue")
    tr.add_argument("--name", default="model", help="model file name stem (default: model -> OUT/model.model)")
    tr.set_defaults(func=cmd_train)


def _category_weights(items: list[str]) -> dict[str, float] | None:
    weights = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise CLIError(f"--category-weight expects CATEGORY=WEIGHT (e.g. build=2), got {item!r}") from None
        if not sep or not name.strip():
            raise CLIError(f"--category-weight expects CATEGORY=WEIGHT (e.g. build=2), got {item!r}")
    return weights or None


def cmd_train(args: argparse.Namespace) -> int:
    from molgym.training.mace_train import mace_arguments, train_mace

    options = dict(batch_size=args.batch_size, lr=args.lr, energy_weight=args.energy_weight,
                   forces_weight=args.forces_weight, stage_two_from=args.stage_two_from,
                   stage_two_energy_weight=args.stage_two_energy_weight,
                   stage_two_forces_weight=args.stage_two_forces_weight, stage_two_lr=args.stage_two_lr,
                   pair_repulsion=args.pair_repulsion, category_weights=_category_weights(args.category_weight))
    # validate everything before importing torch and starting mace
    mace_arguments(args.data, args.out, architecture=args.architecture, epochs=args.epochs, device=args.device,
                   seed=args.seed, dtype=args.dtype, name=args.name, **options)
    model = train_mace(args.data, args.out, architecture=args.architecture, epochs=args.epochs,
                       device=args.device, seed=args.seed, dtype=args.dtype, name=args.name,
                       threads=args.threads, time_limit=args.time_limit, **options)
    print(f"wrote {model}")
    return 0


def register_card(commands) -> None:
    """``molgym potential card``: evaluate a model and write its model card."""
    cd = commands.add_parser(
        "card",
        help="evaluate a model on a dataset and write its model card (JSON + Markdown)",
        description="Evaluates MODEL on the test sets of DATA, copies it to OUT/NAME.model and writes "
        "OUT/NAME.json (file, sha256, data counts, test errors, training time and hardware, reproducing command) "
        "and OUT/NAME.md. With the defaults it regenerates the shipped default model's card.",
    )
    cd.add_argument("--model", required=True, help="MACE model file to describe (and ship)")
    cd.add_argument("--data", required=True, help="dataset directory it was trained on")
    cd.add_argument("--train-dir", default=None, help="training output directory (for timings and arguments)")
    cd.add_argument("--campaign", default=None, metavar="STATE",
                    help="instead of --train-dir: the state of the campaign that trained the model (e.g. "
                    "molgym/potentials/campaign); the card's training time and commands are then the campaign's")
    cd.add_argument("--out", default=None, help="directory for the card (default: molgym's shipped models)")
    cd.add_argument("--name", default="default")
    cd.add_argument("--device", default="cpu")
    cd.add_argument("--note", action="append", default=[], help="a note for the card (repeatable)")
    cd.set_defaults(func=cmd_card)


def cmd_card(args: argparse.Namespace) -> int:
    from molgym.potentials.card import write_model_card

    paths = write_model_card(args.model, args.data, train_dir=args.train_dir, out=args.out, name=args.name,
                             device=args.device, notes=args.note, campaign=args.campaign)
    for p in paths:
        print(f"wrote {p}")
    return 0


def register_committee(commands) -> None:
    """``molgym potential committee``: fit and calibrate a last-layer committee."""
    cm = commands.add_parser(
        "committee",
        help="fit and calibrate a last-layer committee (uncertainties) for a MACE model",
        description="Fits MEMBERS linear heads on bootstrap resamples of DATA/train.xyz to the model's residual "
        "against the stored GFN2-xTB labels, calibrates their spread on DATA/valid.xyz and reports the Spearman "
        "rank correlation between uncertainty and error on the build trajectories of DATA/test.xyz. Writes "
        "OUT/NAME.npz and OUT/NAME.json (with --ship: next to the shipped default model, sha256 in the card).",
    )
    cm.add_argument("--model", default="default", help="'default' (the shipped model) or a MACE model file")
    cm.add_argument("--data", required=True, help="dataset directory from `molgym potential dataset`")
    cm.add_argument("--out", default=None, help="output directory (default: molgym's shipped models with --ship)")
    cm.add_argument("--name", default="default-committee", help="file stem (default default-committee)")
    cm.add_argument("--members", type=int, default=8)
    cm.add_argument("--ridge", type=float, default=1e-3, help="relative L2 penalty of each head (default 1e-3)")
    cm.add_argument("--seed", type=int, default=0)
    cm.add_argument("--extra-train", action="append", default=[], help="more labelled XYZ files (repeatable)")
    cm.add_argument("--ship", action="store_true", help="write into molgym/potentials/models (the shipped one)")
    cm.add_argument("--device", default="cpu")
    cm.set_defaults(func=cmd_committee)


def cmd_committee(args: argparse.Namespace) -> int:
    from molgym.io import write_json
    from molgym.potentials.registry import MODELS_DIR, sha256_of, shipped_model_path
    from molgym.training.committee import fit_dataset_committee

    if args.out is None and not args.ship:
        raise ValueError("give --out DIR, or --ship to write the shipped committee")
    if args.members < 2:
        raise ValueError(f"--members must be >= 2, got {args.members}")
    if not args.ridge > 0:
        raise ValueError(f"--ridge must be > 0, got {args.ridge}")
    model = shipped_model_path("default") if args.model == "default" else Path(args.model)
    if not Path(model).is_file():
        raise FileNotFoundError(f"model file {str(model)!r} does not exist")
    out = Path(args.out) if args.out else MODELS_DIR
    potential, report = fit_dataset_committee(model, args.data, members=args.members, ridge=args.ridge,
                                              seed=args.seed, extra_train=args.extra_train, device=args.device)
    heads_path = out / f"{args.name}.npz"
    potential.heads.save(heads_path)
    card = {**report, "file": heads_path.name, "sha256": sha256_of(heads_path), "model": args.model,
            "model_sha256": sha256_of(model), "data": str(args.data),
            "command": f"molgym potential committee --model {args.model} --data {args.data} --members {args.members} "
                       f"--ridge {args.ridge} --seed {args.seed}" + (" --ship" if args.ship else f" --out {out}")}
    write_json(out / f"{args.name}.json", card)
    b = report["build_trajectories"]
    print(f"calibration scale {report['calibration_scale']:.3f}; build trajectories: Spearman(sigma, |error|) "
          f"{b['spearman_energy']:.3f} (n={b['structures']}), per step {b['spearman_step']:.3f} "
          f"(n={b['steps_evaluated']})")
    print(f"wrote {heads_path} and {out / (args.name + '.json')}")
    return 0
