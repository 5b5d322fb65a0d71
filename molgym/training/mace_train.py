"""Train a MACE reward potential on a molgym dataset with mace-torch's own trainer.

``train_mace(data, out, ...)`` (CLI: ``molgym potential train --data DIR --out DIR``) turns a dataset written by
:func:`molgym.data.dataset.build_dataset` into the argument list of ``mace_run_train`` (parsed by mace's own
``build_default_arg_parser``) and calls ``mace.cli.run_train.run``. Nothing of the training loop is
re-implemented here.

- **E0s** are the isolated-atom GFN2-xTB energies from the dataset manifest, so the model's energy of a lone
  atom equals xTB's and ``E(atom)`` in the reward is consistent between the two.
- **Architecture**: a preset of :mod:`molgym.potentials.mace_arch` (default ``cpu``).
- **dtype**: ``float32`` by default: on the 2-core CPU molgym's default model was trained on it is ~2x faster than
  ``float64`` for training and evaluation, and its rounding error on total energies of ~1000 eV is ~0.1 meV,
  far below the accuracy target (tens of meV).
- **Stage two** (``stage_two_from=N``): from epoch N mace switches to its stage-two loss (energy weight
  ``stage_two_energy_weight``, default 1000, forces ``stage_two_forces_weight``, default 10) and learning rate
  (``stage_two_lr``, default 1e-3) and averages weights (SWA). The reward is an energy difference, so the
  energy error matters most. Continuing the default model's 44-epoch run into stage two (forces weight 20) took
  its validation energy MAE from 43 to 32 meV/atom in 11 epochs while the force MAE went from 239 to 253 meV/Å.
  The model is then ``OUT/<name>_stagetwo.model`` (mace's name); it is what :func:`train_mace` returns (the
  stage-one model when a time limit stops the run before stage two begins).
  Resuming a finished stage-one run with ``stage_two_from`` set continues it into stage two.
- **Speed on a small CPU** (docs/potential.md, "Training speed on 2 CPU cores"): torch threads default to one per
  core found idle at the start (:func:`training_threads`), mace's end-of-run plots (a second pass over the whole
  train and valid sets) are off, and memory is not pinned on the CPU. None of it changes the trained model beyond
  float rounding; validation stays every epoch (mace's plateau scheduler and checkpoints follow it).
- **Resumable**: mace's ``--restart_latest``: rerunning the same command continues from the newest checkpoint.
  ``time_limit`` stops between epochs and writes the model from the newest checkpoint (``--time-limit``).
  Rerunning with ``epochs`` at or below the epochs already done writes the model from the best checkpoint
  without training further (how a time-boxed run is finished).

The finished model is ``OUT/<name>.model``; logs are in ``OUT/logs``, checkpoints in ``OUT/checkpoints``.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from molgym.data.labels import ENERGY_KEY, FORCES_KEY
from molgym.potentials.mace_arch import ARCHITECTURES, MACEArchitecture

DTYPES = ("float32", "float64")


def idle_cores(interval: float = 0.5) -> float | None:
    """How many CPU cores were idle over the next ``interval`` seconds (Linux ``/proc/stat``), or None if unknown."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])

    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


def training_threads(threads: int | None, default: int) -> tuple[int, str]:
    """torch's CPU threads for a training run and why: ``threads`` if given, ``OMP_NUM_THREADS``'s choice
    (``default``) if that is set, else one per idle core (at least 1, at most ``default``).

    On the 2-core machine molgym's model is trained on, torch's default of one thread per core while another job
    kept one core busy trained 6-7 structures/s against ~270 with one thread (docs/potential.md, "Training speed
    on 2 CPU cores"): torch's threads wait for each other at every operation, and one of them is often descheduled.
    """
    if threads:
        return int(threads), "requested"
    if os.environ.get("OMP_NUM_THREADS"):
        return default, "OMP_NUM_THREADS"
    idle = idle_cores()
    if idle is None:
        return default, "torch default (idle cores unknown)"
    return max(1, min(default, int(idle + 0.25))), f"idle cores at start: {idle:.1f}"


#: the train set with each structure's category as mace's config_type (when category weights are given)
WEIGHTED_TRAIN_FILE = "train_weighted.xyz"


def _check_category_weights(category_weights: dict[str, float] | None) -> None:
    for name, weight in (category_weights or {}).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"category_weights keys must be category names, got {name!r}")
        if not float(weight) >= 0:
            raise ValueError(f"category weight of {name!r} must be >= 0, got {weight}")


def write_weighted_train_file(data: str | os.PathLike, out: str | os.PathLike,
                              category_weights: dict[str, float]) -> Path:
    """Copy ``DATA/train.xyz`` to ``OUT/train_weighted.xyz`` (atomically) with ``info["config_type"]`` set to
    each structure's category, the key mace-torch's ``--config_type_weights`` reads. A weighted category that no
    training structure has is an error (naming the categories there are)."""
    import ase.io

    from molgym.io import atomic_path

    structures = ase.io.read(Path(data) / "train.xyz", index=":")
    for atoms in structures:
        atoms.info["config_type"] = str(atoms.info.get("category", "Default"))
    present = sorted({a.info["config_type"] for a in structures})
    missing = [name for name in category_weights if name not in present]
    if missing:
        raise ValueError(f"category_weights names {missing}, which no structure of {Path(data) / 'train.xyz'} has; "
                         f"categories there: {', '.join(present)}")
    target = Path(out) / WEIGHTED_TRAIN_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        ase.io.write(tmp, structures, format="extxyz")
    return target


def read_dataset_manifest(data: str | os.PathLike) -> dict:
    """DATA/manifest.json of a molgym dataset; a clear error (how to build one) when there is none."""
    data = Path(data)
    manifest = data / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{data} is not a molgym dataset (no manifest.json); build one with `molgym potential dataset --out DIR`"
        )
    return json.loads(manifest.read_text())


def mace_arguments(
    data: str | os.PathLike,
    out: str | os.PathLike,
    architecture: str | MACEArchitecture = "cpu",
    epochs: int = 100,
    device: str = "cpu",
    seed: int = 0,
    dtype: str = "float32",
    batch_size: int = 16,
    lr: float = 0.01,
    energy_weight: float = 40.0,
    forces_weight: float = 10.0,
    name: str = "model",
    stage_two_from: int | None = None,
    stage_two_energy_weight: float = 1000.0,
    stage_two_forces_weight: float = 10.0,
    stage_two_lr: float = 1e-3,
    eval_interval: int = 1,
    num_workers: int = 0,
    plot: bool = False,
    pair_repulsion: bool = False,
    category_weights: dict[str, float] | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """The ``mace_run_train`` command-line arguments for training on dataset ``data`` into ``out``.

    ``eval_interval``: validate every N epochs (mace's ``--eval_interval``; 1, the default, keeps the training
    trajectory of earlier molgym versions: mace's plateau scheduler and checkpoints follow the validation loss).
    ``num_workers``: DataLoader worker processes (0: collate batches in the training process). ``plot``: mace's
    end-of-run plots (they evaluate the whole train and valid sets once more; off by default, the model is the
    same either way). ``pair_repulsion``: add mace's ZBL pair repulsion to the model. ``category_weights``: loss
    weight per dataset category (``{"build": 2.0}``; categories not named weigh 1); training then reads
    ``OUT/train_weighted.xyz``, a copy of the train set with each structure's category as mace's ``config_type``
    (written by :func:`train_mace`). Checks every argument (names the bad value and what is allowed) before
    anything is trained.
    """
    data, out = Path(data), Path(out)
    if isinstance(architecture, str):
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
        arch = ARCHITECTURES[architecture]
    else:
        arch = architecture
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if stage_two_from is not None and not 1 <= stage_two_from < epochs:
        raise ValueError(f"stage_two_from must be an epoch in [1, epochs) = [1, {epochs}), got {stage_two_from}")
    check_stage_two_settings(stage_two_energy_weight, stage_two_forces_weight, stage_two_lr)
    if eval_interval < 1:
        raise ValueError(f"eval_interval must be >= 1, got {eval_interval}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if not str(device).startswith(("cpu", "cuda", "mps")):
        raise ValueError(f"device must be 'cpu', 'cuda[:N]' or 'mps', got {device!r}")
    _check_category_weights(category_weights)
    manifest = read_dataset_manifest(data)
    for split in ("train", "valid"):
        if not (data / f"{split}.xyz").is_file():
            raise FileNotFoundError(f"dataset {data} has no {split}.xyz; was `molgym potential dataset` finished?")
    e0s = {int(z): float(e) for z, e in manifest["isolated_atom_energies"].items()}
    args = [
        "--name", name,
        "--seed", str(seed),
        "--work_dir", str(out),
        "--model_dir", str(out),
        "--log_dir", str(out / "logs"),
        "--checkpoints_dir", str(out / "checkpoints"),
        "--results_dir", str(out / "results"),
        "--downloads_dir", str(out / "downloads"),
        "--train_file", str(out / WEIGHTED_TRAIN_FILE if category_weights else data / "train.xyz"),
        "--valid_file", str(data / "valid.xyz"),
        "--energy_key", manifest.get("energy_key", ENERGY_KEY),
        "--forces_key", manifest.get("forces_key", FORCES_KEY),
        "--E0s", repr(e0s),
        "--atomic_numbers", repr(sorted(e0s)),
        "--model", "MACE",
        "--r_max", str(arch.r_max),
        "--num_channels", str(arch.num_channels),
        "--max_L", str(arch.max_L),
        "--correlation", str(arch.correlation),
        "--num_interactions", str(arch.num_interactions),
        "--max_ell", str(arch.max_ell),
        "--num_radial_basis", str(arch.num_radial_basis),
        "--num_cutoff_basis", str(arch.num_cutoff_basis),
        "--radial_MLP", "[" + ",".join(str(w) for w in arch.radial_MLP) + "]",
        "--MLP_irreps", "16x0e",
        "--scaling", "rms_forces_scaling",
        "--loss", "weighted",
        "--energy_weight", str(energy_weight),
        "--forces_weight", str(forces_weight),
        "--error_table", "PerAtomMAE",
        "--batch_size", str(batch_size),
        "--valid_batch_size", str(max(batch_size, 32)),
        "--max_num_epochs", str(epochs),
        "--lr", str(lr),
        "--scheduler_patience", "4",
        "--ema",
        "--ema_decay", "0.99",
        "--amsgrad",
        "--default_dtype", dtype,
        "--device", str(device),
        "--eval_interval", str(eval_interval),
        "--restart_latest",
        "--save_cpu",
        "--num_workers", str(num_workers),
        # pinned memory only helps copies to a GPU; on the CPU it is a no-op that makes torch warn
        "--pin_memory", str(not str(device).startswith("cpu")),
        "--plot", str(bool(plot)),
    ]
    if pair_repulsion:
        args += ["--pair_repulsion"]
    if category_weights:
        args += ["--config_type_weights", json.dumps({str(k): float(v) for k, v in category_weights.items()})]
    if stage_two_from is not None:
        args += [
            "--stage_two",
            "--start_stage_two", str(stage_two_from),
            "--stage_two_energy_weight", str(stage_two_energy_weight),
            "--stage_two_forces_weight", str(stage_two_forces_weight),
            "--stage_two_lr", str(stage_two_lr),
        ]
    return args + list(extra or [])


def check_stage_two_settings(energy_weight: float, forces_weight: float, lr: float) -> None:
    """Refuse stage-two loss weights or a learning rate that is not > 0, naming the value; one place for the
    check that ``train_mace`` and the campaign's ``begin_stage_two`` (which must refuse before it writes) share."""
    for label, value in (("stage_two_energy_weight", energy_weight), ("stage_two_forces_weight", forces_weight),
                         ("stage_two_lr", lr)):
        if not value > 0:
            raise ValueError(f"{label} must be > 0, got {value}")


def _prepare_stage_two_resume(checkpoints: Path, stage_two_lr: float) -> None:
    """Make the checkpoint mace resumes from carry stage two's learning rate ``stage_two_lr``.

    mace builds its stage-two scheduler (torch's ``SWALR``, which keeps the rate it anneals to as ``swa_lr`` in
    each optimizer parameter group) before it loads the checkpoint; loading replaces the parameter groups with the
    saved ones, so the saved ``swa_lr`` wins over ``--stage_two_lr``. Hence, on the newest checkpoint (rewritten
    atomically, and only when something changes):

    - a stage-one checkpoint (no ``_swa`` checkpoint yet) has no ``swa_lr``, and the first stage-two epoch would
      fail with ``KeyError: 'swa_lr'``: it gets ``stage_two_lr`` (its own rate anneals to it over one epoch);
    - a stage-two checkpoint whose rate differs (the campaign lowered it) gets ``stage_two_lr`` as both ``swa_lr``
      and the current rate, so the change holds from the first epoch of the run.
    """
    import torch

    from molgym.io import atomic_path

    if not checkpoints.is_dir():
        return
    stage_two = any(checkpoints.glob("*_swa.pt"))
    numbered = [(epoch, path) for path in checkpoints.glob("*_epoch-*_swa.pt" if stage_two else "*_epoch-*.pt")
                if (epoch := _checkpoint_epoch(path)) is not None]
    if not numbered:
        return
    latest = max(numbered)[1]
    state = torch.load(latest, map_location="cpu", weights_only=False)
    groups = state.get("optimizer", {}).get("param_groups", [])
    if stage_two:
        if not groups or all(g.get("swa_lr") == stage_two_lr and g.get("lr") == stage_two_lr for g in groups):
            return
        for group in groups:
            group["swa_lr"] = group["lr"] = stage_two_lr
    else:
        if not groups or all("swa_lr" in g for g in groups):
            return
        for group in groups:
            group.setdefault("swa_lr", stage_two_lr)
    with atomic_path(latest) as tmp:
        torch.save(state, tmp)


class _TimeUp(Exception):
    """Raised inside mace's epoch loop when the next epoch would end after the time limit."""


@contextmanager
def _epoch_deadline(deadline: float | None):
    """Stop mace-torch's epoch loop, between epochs, before an epoch that would end after ``deadline``.

    mace has no time limit of its own. Its loop calls ``mace.tools.train.train_one_epoch`` once per epoch; the
    wrapper measures the time between two calls (one epoch with its validation and checkpoint) and raises
    :class:`_TimeUp` before starting one that would not finish in time, so no checkpoint is ever half-written
    (killing the process could interrupt ``torch.save``). At least one epoch always runs.
    """
    if deadline is None:
        yield {}
        return
    import importlib

    # importlib, not `import mace.tools.train as ...`: mace.tools re-exports a function named `train`
    mace_train_loop = importlib.import_module("mace.tools.train")
    original = mace_train_loop.train_one_epoch
    state: dict = {"epoch_seconds": None, "last_start": None}

    def guarded(*args, **kwargs):
        now = time.time()
        if state["last_start"] is not None:
            state["epoch_seconds"] = now - state["last_start"]
            if now + state["epoch_seconds"] > deadline:
                raise _TimeUp
        state["last_start"] = now
        return original(*args, **kwargs)

    mace_train_loop.train_one_epoch = guarded
    try:
        yield state
    finally:
        mace_train_loop.train_one_epoch = original


def _checkpoint_epoch(path: Path) -> int | None:
    """N of a mace checkpoint named ``*_epoch-N.pt`` or ``*_epoch-N_swa.pt`` (None for any other name)."""
    tail = path.stem.rsplit("_epoch-", 1)[-1].removesuffix("_swa")
    return int(tail) if "_epoch-" in path.stem and tail.isdigit() else None


def latest_checkpoint_epoch(checkpoints: str | os.PathLike) -> int | None:
    """The epoch of the newest mace checkpoint in ``checkpoints`` (``*_epoch-N.pt`` or ``*_epoch-N_swa.pt``)."""
    epochs = [e for path in Path(checkpoints).glob("*_epoch-*.pt") if (e := _checkpoint_epoch(path)) is not None]
    return max(epochs) if epochs else None


def train_mace(
    data: str | os.PathLike,
    out: str | os.PathLike,
    architecture: str | MACEArchitecture = "cpu",
    epochs: int = 100,
    device: str = "cpu",
    seed: int = 0,
    dtype: str = "float32",
    name: str = "model",
    threads: int | None = None,
    time_limit: float | None = None,
    **options,
) -> Path:
    """Train (or resume training) a MACE model with mace-torch's trainer; returns the model file's path.

    ``options`` go to :func:`mace_arguments` (``batch_size``, ``lr``, ``energy_weight``, ``forces_weight``,
    ``stage_two_from`` and its weights, ``extra``: more raw mace arguments). ``threads`` sets torch's CPU
    threads for the run (default on the CPU: one per core found idle at the start, see :func:`training_threads`;
    ``OMP_NUM_THREADS``, when set, is respected; the previous setting is restored afterwards).
    ``time_limit`` (seconds): stop between epochs before one that would end after the limit, then write the model
    from the newest checkpoint (mace checkpoints an epoch whose validation loss is the lowest so far); rerunning
    continues from there. A ``train_settings.json`` with the exact arguments and timings is written to ``out``.
    """
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
    argv = mace_arguments(data, out, architecture=architecture, epochs=epochs, device=device, seed=seed,
                          dtype=dtype, name=name, **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    import mace  # noqa: F401  (before e3nn; see molgym.potentials.mace)
    import torch
    from mace.cli.run_train import run
    from mace.tools import build_default_arg_parser

    from molgym.io import write_json

    previous_threads = torch.get_num_threads()
    if str(device).startswith("cpu"):
        n_threads, why_threads = training_threads(threads, previous_threads)
    else:
        n_threads, why_threads = (int(threads) if threads else previous_threads), "requested or torch default"
    torch.set_num_threads(n_threads)
    args = build_default_arg_parser().parse_args(argv)
    settings_path = out / "train_settings.json"
    history = json.loads(settings_path.read_text()).get("runs", []) if settings_path.is_file() else []
    start = time.time()
    arch = ARCHITECTURES[architecture] if isinstance(architecture, str) else architecture
    record = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), "seconds": None,
              "epochs": epochs, "torch_threads": torch.get_num_threads(), "threads_chosen_by": why_threads}

    def save_settings() -> None:  # written before training too, so an interrupted run is still described
        write_json(settings_path, {
            "mace_arguments": argv,
            "architecture": architecture if isinstance(architecture, str) else "custom",
            "architecture_settings": arch.as_dict(),
            "dtype": dtype,
            "runs": history + [record],
        })

    save_settings()
    if options.get("category_weights"):
        write_weighted_train_file(data, out, options["category_weights"])
    if options.get("stage_two_from") is not None:
        _prepare_stage_two_resume(out / "checkpoints", float(options.get("stage_two_lr", 1e-3)))
    previous_dtype = torch.get_default_dtype()
    try:
        with _epoch_deadline(None if time_limit is None else start + time_limit) as deadline:
            try:
                run(args)  # mace sets torch's default dtype; restored below
            except _TimeUp:
                reached = latest_checkpoint_epoch(out / "checkpoints")
                if reached is None:
                    raise RuntimeError(f"time limit reached before mace wrote any checkpoint in {out}") from None
                record["stopped_by_time_limit"] = True
                record["epoch_seconds"] = round(deadline["epoch_seconds"], 1)
                record["newest_checkpoint_epoch"] = reached
                # rerun with the epochs done: mace loads the newest checkpoint, trains nothing, writes the model
                argv_finish = list(argv)
                argv_finish[argv_finish.index("--max_num_epochs") + 1] = str(reached)
                if "--start_stage_two" in argv_finish:
                    # mace drops stage two (and writes no stage-two model) unless it starts before the last epoch
                    i = argv_finish.index("--start_stage_two") + 1
                    argv_finish[i] = str(max(1, min(int(argv_finish[i]), reached - 1)))
                run(build_default_arg_parser().parse_args(argv_finish))
    finally:
        torch.set_default_dtype(previous_dtype)
        torch.set_num_threads(previous_threads)
    record["seconds"] = round(time.time() - start, 1)
    save_settings()
    stem = f"{name}_stagetwo" if options.get("stage_two_from") is not None else name
    model = out / f"{stem}.model"
    if not model.is_file() and stem != name:
        reached = latest_checkpoint_epoch(out / "checkpoints")
        if reached is not None and reached < int(options["stage_two_from"]):
            model = out / f"{name}.model"  # stopped by the time limit before stage two began: stage one's model
    if not model.is_file():
        raise RuntimeError(f"mace's trainer finished without writing {model}; see {out / 'logs'}")
    return model
