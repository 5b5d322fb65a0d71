"""Continue training a MACE model from its training checkpoint, on new data, for a few epochs.

Used by the refinement loop (:mod:`molgym.training.refine`: refit on the training set plus the structures HAL
found) and for committee members. mace-torch's trainer is reused as is (:func:`molgym.training.mace_train.train_mace`):
the source run's newest checkpoint is copied into the new run's checkpoint folder under the new run's tag, and
mace's ``--restart_latest`` picks it up, optimizer and learning-rate schedule included. Only the training file
changes (``--train_file``); E0s, architecture and loss are those of the dataset and preset.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["latest_checkpoint", "finetune_mace"]

_EPOCH = re.compile(r"_epoch-(\d+)\.pt$")


def latest_checkpoint(train_dir: str | os.PathLike) -> tuple[Path, int]:
    """The newest ``*_epoch-N.pt`` checkpoint of a training run and its epoch N."""
    folder = Path(train_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("*.pt") if (m := _EPOCH.search(p.name))]
    if not found:
        raise FileNotFoundError(
            f"no mace checkpoint (*_epoch-N.pt) under {folder}; fine-tuning needs the training run's checkpoints"
        )
    epoch, path = max(found)
    return path, epoch


def finetune_mace(
    source_dir: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    epochs: int = 1,
    train_file: str | os.PathLike | None = None,
    seed: int = 0,
    name: str = "model",
    threads: int | None = 1,
    architecture: str = "cpu",
    lr: float | None = 1e-3,
    **options,
) -> Path:
    """Train ``epochs`` more epochs starting from the newest checkpoint of ``source_dir``; returns the model path.

    Args:
        source_dir: a training run (``molgym potential train --out``) or an earlier fine-tuning ``out``.
        data: the dataset directory (manifest, valid.xyz; E0s).
        out: this run's directory. Rerunning with the same arguments resumes (or only writes the model).
        epochs: epochs to add (>= 1).
        train_file: training structures (extended XYZ with REF labels); default ``data/train.xyz``.
        seed: mace seed (also the run tag: ``{name}_run-{seed}``).
        lr: learning rate to continue with (the checkpoint's optimizer state would otherwise restore the source
            run's, e.g. 0.008, which undoes more than a few epochs of new data can teach); ``None`` keeps it.
        options: more :func:`molgym.training.mace_train.mace_arguments` options (``lr``, ``batch_size``...).
    """
    from molgym.training.mace_train import train_mace

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    source, start_epoch = latest_checkpoint(source_dir)
    if train_file is not None and not Path(train_file).is_file():
        raise FileNotFoundError(f"training file {str(train_file)!r} does not exist")
    out = Path(out)
    done = out / "finetune_done.json"
    if done.is_file() and (out / f"{name}.model").is_file():
        return out / f"{name}.model"  # finished earlier: never train the same epochs twice
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    tag = f"{name}_run-{seed}"
    if not any(checkpoints.glob(f"{tag}_epoch-*.pt")):
        tmp = checkpoints / f".{tag}.tmp"
        if lr is None:
            shutil.copyfile(source, tmp)
        else:
            _copy_with_lr(source, tmp, float(lr))
        os.replace(tmp, checkpoints / f"{tag}_epoch-{start_epoch}.pt")
    extra = list(options.pop("extra", []) or [])
    if lr is not None:
        options["lr"] = lr
    if train_file is not None:
        extra += ["--train_file", str(train_file)]
    # mace's loop restarts at the saved epoch number and runs while epoch < max_num_epochs
    model = train_mace(data, out, architecture=architecture, epochs=start_epoch + int(epochs), seed=seed,
                       name=name, threads=threads, extra=extra, **options)
    from molgym.io import write_json

    write_json(done, {"source": str(source), "start_epoch": start_epoch, "epochs": int(epochs),
                      "train_file": str(train_file) if train_file else None, "seed": seed})
    return model


def _copy_with_lr(source: Path, target: Path, lr: float) -> None:
    """Copy a mace checkpoint with its optimizer's (and plateau scheduler's) learning rate set to ``lr``."""
    import mace  # noqa: F401  (before e3nn; see molgym.potentials.mace)
    import torch

    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    for group in checkpoint["optimizer"]["param_groups"]:
        group["lr"] = lr
    scheduler = checkpoint.get("lr_scheduler") or {}
    if "_last_lr" in scheduler:
        scheduler["_last_lr"] = [lr] * len(scheduler["_last_lr"])
    torch.save(checkpoint, target)
