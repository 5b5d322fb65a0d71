"""``molgym potential ...``: inspect and evaluate potentials."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers) -> None:
    group = subparsers.add_parser("potential", help="inspect, evaluate, build data for and train potentials")
    group.set_defaults(group_parser=group)
    commands = group.add_subparsers(title="potential commands", metavar="COMMAND")

    info = commands.add_parser("info", help="describe a potential (species, backend, model card)")
    info.add_argument("spec", help="'default', 'xtb', 'gfn1-xtb', 'pm6' or the path of a MACE model file")
    info.add_argument("--device", default=None, help="device for MACE models (default: GPU if present)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=cmd_info)

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
    ds.set_defaults(func=cmd_dataset)

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
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--name", default="model", help="model file name stem (default: model -> OUT/model.model)")
    tr.set_defaults(func=cmd_train)

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
    cd.add_argument("--out", default=None, help="directory for the card (default: molgym's shipped models)")
    cd.add_argument("--name", default="default")
    cd.add_argument("--device", default="cpu")
    cd.add_argument("--note", action="append", default=[], help="a note for the card (repeatable)")
    cd.set_defaults(func=cmd_card)


def cmd_info(args: argparse.Namespace) -> int:
    from ase.data import chemical_symbols

    from molgym.potentials import load_potential

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


def cmd_evaluate(args: argparse.Namespace) -> int:
    if Path(args.data).is_dir():
        return _evaluate_dataset(args)
    from molgym.io import read_structures, write_json, write_text
    from molgym.potentials import load_potential
    from molgym.potentials.evaluation import STORED, error_table, format_table, predict, stored_labels

    # Everything that can fail on bad input fails here, before any energy is computed.
    structures = read_structures(args.data, seed=args.seed)
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
    config.validate()
    manifest = build_dataset(args.out, config, workers=args.workers)
    for name, counts in manifest["counts"].items():
        print(f"{name:>8}: {counts['total']:6d} structures from {counts['molecules']} molecules  "
              + ", ".join(f"{k} {v}" for k, v in counts.items() if k not in ("total", "molecules")))
    if manifest["failures"]:
        print("skipped (SCF failures): " + ", ".join(f"{k[7:]} {v}" for k, v in manifest["failures"].items()))
    print(f"wrote {Path(args.out) / 'manifest.json'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from molgym.training.mace_train import mace_arguments, train_mace

    options = dict(batch_size=args.batch_size, lr=args.lr, energy_weight=args.energy_weight,
                   forces_weight=args.forces_weight)
    # validate everything before importing torch and starting mace
    mace_arguments(args.data, args.out, architecture=args.architecture, epochs=args.epochs, device=args.device,
                   seed=args.seed, dtype=args.dtype, name=args.name, **options)
    model = train_mace(args.data, args.out, architecture=args.architecture, epochs=args.epochs,
                       device=args.device, seed=args.seed, dtype=args.dtype, name=args.name,
                       threads=args.threads, **options)
    print(f"wrote {model}")
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from molgym.potentials.card import write_model_card

    paths = write_model_card(args.model, args.data, train_dir=args.train_dir, out=args.out, name=args.name,
                             device=args.device, notes=args.note)
    for p in paths:
        print(f"wrote {p}")
    return 0
