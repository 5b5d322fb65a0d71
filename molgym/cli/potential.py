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
    ev.add_argument("--data", required=True, help="structure file (extended XYZ, ...) or 'qm9:N'")
    ev.add_argument("--seed", type=int, default=0, help="seed for 'qm9:N' sampling (default 0)")
    ev.add_argument("--device", default=None)
    ev.add_argument("--out", default=None, help="directory for evaluation.json (and the table as .txt)")
    ev.set_defaults(func=cmd_evaluate)


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
