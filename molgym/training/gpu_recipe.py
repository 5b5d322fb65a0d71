"""GPU recipe for the reward potential: train the campaign's configuration (or a larger preset) on the same data
within a wall-time budget on one NVIDIA GPU, then write the model and its card.

Used only if a machine with a GPU is available; molgym's own models are trained on 2-core CPUs
(``molgym potential campaign``). On such a machine, from a checkout::

    make setup                                   # installs the CUDA build of torch when nvidia-smi works
    .venv/bin/python -m molgym.training.gpu_recipe --data runs/data-default --out runs/gpu --minutes 10

Steps and budget (``--minutes``, default 10, covers all of them):

1. the dataset: ``--data`` if it is a finished dataset, else it is built there with every CPU core (GFN2-xTB runs
   on the CPU; the default set took about 80 core-minutes on this project's CPUs, about 5 minutes on 16 cores);
2. training with mace-torch on the GPU (``--device cuda``, float32, batch 64 by default) until the time left minus
   what the card needs (``--card-minutes``, default 1.5) runs out, stopping between epochs;
3. ``OUT/card/NAME.model``, ``NAME.json``, ``NAME.md``: the model card, evaluated against the dataset's test files
   exactly as for the shipped model, and a row-by-row comparison with the shipped default printed at the end.

Nothing is shipped automatically: copy the card into molgym/potentials/models only after reading it (docs/potential.md,
"Shipping a new default"). ``--device cpu`` runs the same path on the CPU (the test suite does, on a tiny dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from molgym.potentials.mace_arch import ARCHITECTURES


def _configuration(architecture: str | None, state: Path):
    """The campaign's variant (its architecture and loss settings), or a named preset with the shipped loss."""
    from molgym.training.campaign import CAMPAIGN_FILE, load_campaign, variant_of
    from molgym.training.study import VARIANTS_BY_NAME

    if architecture is None and (state / CAMPAIGN_FILE).is_file():
        variant = variant_of(load_campaign(state))
        # from random weights: the study's learning rate, not a warm-started campaign's lower one
        return variant.name, {**variant.train_options(), "lr": VARIANTS_BY_NAME["base"].lr}
    name = architecture or "cpu"
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}")
    options = VARIANTS_BY_NAME["base"].train_options()
    options["architecture"] = name
    return name, options


def run_recipe(data: str | os.PathLike, out: str | os.PathLike, minutes: float = 10.0, device: str = "cuda",
               architecture: str | None = None, batch_size: int = 64, card_minutes: float = 1.5,
               dataset_size: str = "default", state: str | os.PathLike | None = None, name: str = "gpu",
               progress=print) -> dict:
    """Dataset (if missing), time-boxed training and the model card, all within ``minutes``; returns a summary."""
    from molgym.training.campaign import STATE_DIR

    start = time.time()
    data, out = Path(data), Path(out)
    if not minutes > 0 or not 0 <= card_minutes < minutes:
        raise ValueError(f"need minutes > 0 and 0 <= card_minutes < minutes, got {minutes} and {card_minutes}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                               "use --device cpu to run this recipe's CPU path")
    label, options = _configuration(architecture, Path(state) if state else STATE_DIR)
    options["batch_size"] = batch_size
    if not (data / "manifest.json").is_file() or not (data / "train.xyz").is_file():
        from molgym.data.dataset import build_dataset

        progress(f"gpu recipe: building the {dataset_size!r} dataset in {data} with {os.cpu_count()} workers")
        build_dataset(data, dataset_size, workers=os.cpu_count() or 1, progress=True)
    dataset_seconds = time.time() - start
    budget = minutes * 60.0 - (time.time() - start) - card_minutes * 60.0
    if budget <= 0:
        raise RuntimeError(f"no time left to train: the dataset took {dataset_seconds:.0f} s of the {minutes:g} "
                           "minutes; rerun with the dataset in place")
    from molgym.training.mace_train import train_mace

    progress(f"gpu recipe: training {label} on {device} for up to {budget:.0f} s")
    train_start = time.time()
    model = train_mace(data, out / "train", epochs=100_000, device=device, time_limit=budget, **options)
    train_seconds = time.time() - train_start

    from molgym.potentials.card import write_model_card
    from molgym.training.campaign import against_shipped, format_comparison

    progress("gpu recipe: writing the model card")
    note = (f"GPU recipe (python -m molgym.training.gpu_recipe): {label}, device {device}, batch {batch_size}, "
            f"{train_seconds:.0f} s of training within a {minutes:g}-minute budget")
    paths = write_model_card(model, data, train_dir=out / "train", out=out / "card", name=name, device=device,
                             notes=[note])
    card = json.loads(paths[1].read_text())
    comparison = against_shipped(card["summary"])
    summary = {"configuration": label, "device": device, "dataset_seconds": round(dataset_seconds, 1),
               "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.time() - start, 1),
               "card": [str(p) for p in paths], "status": card["status"],
               "better_than_shipped_everywhere": comparison["better_everywhere"]}
    (out / "recipe_summary.json").write_text(json.dumps(summary, indent=1))
    progress(format_comparison(comparison))
    progress(f"gpu recipe: {summary['wall_seconds']:.0f} s wall in all; card in {out / 'card'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m molgym.training.gpu_recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset directory (built there if missing)")
    parser.add_argument("--out", required=True, help="output directory (train/, card/, recipe_summary.json)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time budget for everything (default 10)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (the tested path)")
    parser.add_argument("--architecture", default=None,
                        help="a preset (e.g. medium) instead of the campaign's configuration")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--card-minutes", type=float, default=1.5, help="time kept for the card (default 1.5)")
    parser.add_argument("--size", default="default", help="dataset preset if the dataset is built (default)")
    parser.add_argument("--state", default=None, help="campaign state to take the configuration from")
    parser.add_argument("--name", default="gpu", help="card and model name (default gpu)")
    args = parser.parse_args(argv)
    try:
        run_recipe(args.data, args.out, minutes=args.minutes, device=args.device, architecture=args.architecture,
                   batch_size=args.batch_size, card_minutes=args.card_minutes, dataset_size=args.size,
                   state=args.state, name=args.name)
    except (ValueError, RuntimeError, FileNotFoundError) as err:
        print(f"gpu recipe: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
