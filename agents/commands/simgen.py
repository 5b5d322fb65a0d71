"""``molgym generate simgen``: SiMGen from the command line (zero-shot generation from MACE descriptors with
shape priors; see docs/simgen.md). Registered in :data:`molgym.cli.generate.METHODS`."""

from __future__ import annotations

import argparse
import json

from molgym.cli.generate import add_common_arguments, pair, positive_int, check_output_path, run_generation

__all__ = ["register_generate", "cmd_simgen"]


def register_generate(commands) -> None:
    """``molgym generate simgen``."""
    p = commands.add_parser(
        "simgen",
        help="SiMGen: zero-shot generation from MACE descriptors with shape priors",
        description="Zero-shot molecular generation with a similarity kernel over MACE descriptors of a shipped "
        "QM9 reference sample (Elijošius et al.). Shape priors set where the heavy atoms go; hydrogens are added "
        "by valence and the molecules relaxed with the potential. See docs/simgen.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_arguments(p)
    p.add_argument("--atoms", type=positive_int, default=None,
                   help="heavy atoms per molecule (default: implied by the prior, else 9)")
    p.add_argument("--prior", default="gaussian",
                   help="gaussian[:sigma=S] | gaussian:sigmas=SX,SY,SZ | line[:length=L] | ring:radius=R | "
                        "points:FILE.xyz")
    p.add_argument("--model", default="default",
                   help="MACE model for the descriptors: 'default' or a MACE model file")
    p.add_argument("--potential", default=None,
                   help="potential for the final relaxation (default: the --model); any molgym potential spec")
    p.add_argument("--elements", default=None, help="allowed heavy elements, comma separated (default C,N,O,F)")
    p.add_argument("--fragment", default=None, help="structure file whose heavy atoms stay fixed and are grown from")
    p.add_argument("--reference", default=None, help="reference molecules (extended XYZ; default: shipped QM9 sample)")
    p.add_argument("--particles", type=positive_int, default=8, help="trajectories per molecule; the best is kept")
    p.add_argument("--steps", type=positive_int, default=40, help="integration steps")
    p.add_argument("--kernel-width", type=pair, default=None, help="START,END kernel width (reference NN units)")
    p.add_argument("--noise", type=pair, default=None, help="START,END noise per step (Å)")
    p.add_argument("--prior-strength", type=float, default=None, help="multiplies the prior's restoring rate")
    p.add_argument("--cohesion", type=float, default=None,
                   help="rate (0..1, 0: off) at which separate pieces are pulled together during the dynamics "
                        "(default 0.3)")
    p.add_argument("--cohesion-start", type=float, default=None,
                   help="fraction of the schedule after which the cohesion pull acts (default 0.5)")
    p.add_argument("--piece-penalty", type=float, default=None,
                   help="element search: score penalty per separate piece the elements leave (0: off; default "
                        "50 with --fragment, else 0)")
    p.add_argument("--relax-steps", type=int, default=None, help="FIRE relaxation steps (0: none)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="molecules per batch")
    p.add_argument("--device", default=None, help="device of the descriptor model (default: GPU if present)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's; 1 is often fastest on a busy shared machine)")
    p.set_defaults(func=cmd_simgen)


def cmd_simgen(args) -> int:
    check_output_path(args.out)  # before the generator loads its models
    from molgym.agents.simgen import SiMGen

    options = {}
    for name in ("kernel_width", "noise", "prior_strength", "cohesion", "cohesion_start", "piece_penalty",
                 "relax_steps", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    elements = None
    if args.elements:
        elements = [e.strip() for e in args.elements.split(",") if e.strip()]
    generator = SiMGen(
        model=args.model, potential=args.potential, reference=args.reference, prior=args.prior,
        n_atoms=args.atoms, elements=elements, fragment=args.fragment, particles=args.particles,
        steps=args.steps, device=args.device, threads=args.threads, **options,
    )
    command = "molgym generate simgen " + json.dumps({k: v for k, v in vars(args).items()
                                                      if k not in ("func", "group_parser")}, default=str)
    return run_generation(generator, args.num, args.seed, args.out, not args.no_progress, command, task=args.task)
