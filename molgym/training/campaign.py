"""The reward potential's training campaign: one configuration trained a few hours per session, resumed in the
next session from the state committed to the repository.

A session (``molgym potential campaign --data DIR --work DIR --time-limit 2h``)

1. reads the campaign (``STATE/campaign.json``: the configuration, chosen by the learning-curve study, and every
   earlier session) and checks that ``--data`` is the dataset it trains on (same settings and train-set size);
2. puts the committed checkpoint (``STATE/checkpoint.pt``: weights, which mace saves EMA-averaged, optimiser and
   scheduler state, epoch) into the work directory unless the work directory already holds a newer one;
3. trains with mace-torch for at most ``--time-limit`` (stopping between epochs, checkpointing every epoch: mace
   alone keeps only epochs that lower the validation loss, and a session resumed from such an epoch would lose
   the epochs after it), writes the model from the last epoch and evaluates it on the dataset's test files with
   the model card's figures;
4. copies the last epoch's checkpoint back to ``STATE/checkpoint.pt`` and its model to ``STATE/model.model``
   (atomically; the model is what ships when the session is better on every row) and appends the session (wall and
   CPU seconds, epochs, structures, the validation curve, the card figures compared row by row with the shipped
   ``default`` model and with the interim goals) to ``STATE/campaign.json``.

:func:`begin_stage_two` switches a running campaign to mace's stage two (higher energy weight, SWA) from its next
epoch; the switch is recorded, so later sessions continue in stage two.

The state is small (the checkpoint of a model with tens to hundreds of thousands of parameters: a few MB), so each
session commits it. A new ``default`` is shipped only when the campaign's model is better than the shipped one on
every row of the card (:func:`molgym.potentials.card.compare_summaries`); docs/potential.md lists the steps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from molgym.training.study import StudyVariant, VARIANTS_BY_NAME, learning_curve

#: Where the campaign's state is committed (not packaged: it is for people continuing the training).
STATE_DIR = Path(__file__).resolve().parents[1] / "potentials" / "campaign"
CAMPAIGN_FILE = "campaign.json"
CHECKPOINT_FILE = "checkpoint.pt"
#: the model file of the last session (what `molgym potential card` ships when the session qualifies)
MODEL_FILE = "model.model"
#: the repository's root: a warm-start model inside it is recorded by its path relative to the root
_REPO_ROOT = STATE_DIR.parents[2]
#: mace's checkpoint name for run seed 0 (``--name model --seed 0``), which the state is copied to
_MACE_TAG = "model_run-{seed}_epoch-{epoch}.pt"


def _data_fingerprint(data: Path) -> dict:
    """What identifies the campaign's dataset: its fixed settings, train-set size and extra train files.

    The growable setting (``extra_train_molecules``) is left out, as the dataset builder leaves it out of what a
    directory cannot change: its effect shows in the train-set size, and a manifest written before the setting
    existed must match one written after (where it reads 0)."""
    from molgym.data.dataset_config import GROWABLE

    manifest = json.loads((data / "manifest.json").read_text())
    settings = dict(manifest.get("settings", {}))
    settings.pop(GROWABLE, None)
    return {"settings": settings, "train_structures": manifest["counts"]["train"]["total"],
            "extra_train_xyz": [e.get("sha256") for e in manifest.get("extra_train_xyz", [])]}


def start_campaign(state: str | os.PathLike, variant: StudyVariant, data: str | os.PathLike,
                   max_epochs: int = 5000, seed: int = 0, warm_start: str | os.PathLike | None = None) -> dict:
    """Write a new ``STATE/campaign.json`` for ``variant`` trained on ``data``; an existing campaign is an error.

    ``warm_start``: a trained MACE model file of the variant's architecture (e.g. the shipped default) whose
    weights the first session starts from instead of random ones (see :func:`warm_start_checkpoint`).
    """
    from molgym.io import write_json
    from molgym.potentials.registry import sha256_of

    state, data = Path(state), Path(data)
    if (state / CAMPAIGN_FILE).is_file():
        raise FileExistsError(f"{state / CAMPAIGN_FILE} exists: a campaign is already running there "
                              "(continue it without --variant, or choose another --state)")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    _check_dataset(data)
    if warm_start is not None and not Path(warm_start).is_file():
        raise FileNotFoundError(f"warm-start model {str(warm_start)!r} does not exist")
    campaign = {"variant": asdict(variant), "seed": seed, "max_epochs": max_epochs,
                "data": _data_fingerprint(data), "epoch": None, "cpu_seconds": 0.0, "sessions": [],
                "warm_start": None if warm_start is None else {"model": _portable(warm_start),
                                                               "sha256": sha256_of(warm_start),
                                                               "training": _warm_start_training(warm_start)},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    state.mkdir(parents=True, exist_ok=True)
    write_json(state / CAMPAIGN_FILE, campaign)
    return campaign


def _portable(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root when it lies inside it (so ``campaign.json`` and the model card
    name no machine's directories), else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(_REPO_ROOT)) if path.is_relative_to(_REPO_ROOT) else str(path)


def _warm_start_model(campaign: dict) -> Path:
    """The campaign's warm-start model file, checked against the sha256 recorded when the campaign started (the
    shipped ``default`` may have been replaced since): a missing file is a ``FileNotFoundError``, a replaced one the
    registry's ``ValueError`` (:func:`molgym.potentials.registry.check_sha256`)."""
    from molgym.potentials.registry import check_sha256

    warm = campaign["warm_start"]
    path = Path(warm["model"])
    path = path if path.is_absolute() else _REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"the campaign's warm-start model {warm['model']} (sha256 {warm['sha256']}) is not "
                                f"at {path}: it has been moved since the campaign started")
    return check_sha256(path, warm["sha256"], "the campaign's warm-start model", "the sha256 recorded when the "
                        "campaign started", advice=": it has been replaced since; start a new campaign from it")


def _warm_start_training(model: str | os.PathLike) -> dict | None:
    """Wall seconds, epochs and validation curve of the warm-start model's own training, from its card
    (``NAME.json`` beside it, when that card describes this very file), so the campaign's model card can count them
    after the warm-start card is replaced."""
    from molgym.potentials.registry import sha256_of

    card = Path(model).with_suffix(".json")
    if not card.is_file():
        return None
    described = json.loads(card.read_text())
    if described.get("sha256") != sha256_of(model):
        return None
    training = described.get("training", {})
    if training.get("campaign"):  # itself a campaign's model: its whole training, and its first run's curve
        return {"wall_seconds": training.get("wall_seconds"), "epochs_trained": training.get("epochs_trained"),
                "validation_by_epoch": (training.get("warm_start_training") or {}).get("validation_by_epoch")}
    return {k: training.get(k) for k in ("wall_seconds", "epochs_trained", "validation_by_epoch")}


def load_campaign(state: str | os.PathLike) -> dict:
    path = Path(state) / CAMPAIGN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no campaign in {state} (no {CAMPAIGN_FILE}); start one with --variant NAME "
                                f"(the study's choice; variants: {', '.join(VARIANTS_BY_NAME)})")
    return json.loads(path.read_text())


def begin_stage_two(state: str | os.PathLike, energy_weight: float = 1000.0, forces_weight: float = 10.0,
                    lr: float = 1e-3) -> dict:
    """Switch the campaign in ``state`` to mace's stage two from the epoch after the committed one: loss weights
    ``energy_weight`` / ``forces_weight`` and learning rate ``lr`` (mace's ``--stage_two`` with stochastic weight
    averaging), recorded in ``campaign.json`` so every later session trains the same way. Returns the record.
    A campaign in stage two already may change its loss weights and learning rate (from the next epoch; the
    earlier settings are kept under ``earlier`` with the last epoch they trained): lowering the rate once the
    errors level off at a constant one is how the campaign anneals (docs/potential.md, section 6).

    Why: at a constant learning rate this configuration's errors fall as a slow power of the CPU time (docs/
    potential.md, section 6), and on the previous default model's own run mace's stage two lowered the validation energy
    error by a quarter in 11 epochs. Energy errors are what the reward (an energy difference) feels. A campaign
    that has not trained an epoch yet is refused.
    """
    from molgym.io import write_json
    from molgym.training.mace_train import check_stage_two_settings

    campaign = load_campaign(state)
    check_stage_two_settings(energy_weight, forces_weight, lr)
    if campaign.get("epoch") is None:
        raise ValueError("the campaign has no committed epoch yet; train stage one for a session first")
    wanted = {"energy_weight": float(energy_weight), "forces_weight": float(forces_weight), "lr": float(lr)}
    current = campaign.get("stage_two")
    if current is not None:
        settings = {k: current[k] for k in wanted}
        if settings == wanted:
            return current
        # new weights or learning rate from the next epoch; the earlier ones stay on record with the last epoch
        # they trained (mace_train puts a changed rate into the checkpoint it resumes from)
        earlier = current.get("earlier", []) + [{"until_epoch": int(campaign["epoch"]), **settings}]
        campaign["stage_two"] = {**current, **wanted, "reweighted_from": int(campaign["epoch"]) + 1,
                                 "earlier": earlier}
    else:
        campaign["stage_two"] = {"from_epoch": int(campaign["epoch"]) + 1, **wanted}
    write_json(Path(state) / CAMPAIGN_FILE, campaign)
    return campaign["stage_two"]


def _stage_two_options(campaign: dict) -> dict:
    """:func:`~molgym.training.mace_train.train_mace` options of the campaign's stage two (none before it)."""
    two = campaign.get("stage_two")
    if two is None:
        return {}
    return {"stage_two_from": int(two["from_epoch"]), "stage_two_energy_weight": float(two["energy_weight"]),
            "stage_two_forces_weight": float(two["forces_weight"]), "stage_two_lr": float(two["lr"])}


def _checkpoint_name(campaign: dict, epoch: int) -> str:
    """mace's file name of the campaign's checkpoint at ``epoch`` (stage-two epochs end in ``_swa``: mace resumes
    stage two only from such a file)."""
    name = _MACE_TAG.format(seed=int(campaign["seed"]), epoch=epoch)
    two = campaign.get("stage_two")
    return name.replace(".pt", "_swa.pt") if two is not None and epoch >= int(two["from_epoch"]) else name


def variant_of(campaign: dict) -> StudyVariant:
    return StudyVariant.from_dict(campaign["variant"])


def _check_dataset(data: Path) -> None:
    if not (data / "manifest.json").is_file() or not (data / "train.xyz").is_file():
        raise FileNotFoundError(f"{data} is not a finished molgym dataset (manifest.json and train.xyz); build it "
                                "with `molgym potential dataset --out DIR --size default`")


def warm_start_checkpoint(checkpoint: str | os.PathLike, model_file: str | os.PathLike) -> None:
    """Put the weights of a trained MACE model file into a mace checkpoint of the same architecture (rewritten
    atomically) and clear the optimiser's moments (the set-up epoch's, from random weights, would scale the first
    steps wrongly; AMSGrad keeps their maximum for good); learning rate and scheduler stay the checkpoint's. Any
    difference in parameter names or shapes is an error naming it."""
    import torch

    from molgym.io import atomic_path

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    weights = torch.load(model_file, map_location="cpu", weights_only=False).state_dict()
    names, theirs = set(state["model"]), set(weights)
    if names != theirs:
        raise ValueError(f"warm-start model {model_file} does not match the campaign's architecture: parameters "
                         f"only in the model {sorted(theirs - names)[:5]}, only in training {sorted(names - theirs)[:5]}")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(state["model"][name].shape):
            raise ValueError(f"warm-start model {model_file}: {name} has shape {tuple(value.shape)}, the campaign's "
                             f"architecture {tuple(state['model'][name].shape)}")
        state["model"][name] = value.to(state["model"][name].dtype)
    state["optimizer"]["state"] = {}
    with atomic_path(checkpoint) as tmp:
        torch.save(state, tmp)


def check_session_inputs(state: str | os.PathLike, data: str | os.PathLike, time_limit: float) -> dict:
    """The campaign in ``state``, after checking that ``data`` is its finished dataset and ``time_limit`` is
    positive; what :func:`run_session` checks first, and what the command line checks before it records a switch
    to stage two (so a wrong ``--data`` changes nothing)."""
    state, data = Path(state), Path(data)
    campaign = load_campaign(state)
    _check_dataset(data)
    if not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
    if _data_fingerprint(data) != campaign["data"]:
        raise ValueError(f"{data} is not the dataset this campaign trains on (its settings or train-set size "
                         f"differ from {state / CAMPAIGN_FILE}'s 'data'); rebuild it with the recorded settings")
    return campaign


def run_session(state: str | os.PathLike, data: str | os.PathLike, work: str | os.PathLike, time_limit: float,
                threads: int | None = None, evaluate: bool = True, progress=print) -> dict:
    """One session of the campaign in ``state`` (see the module docstring); returns the session's record."""
    from molgym.io import atomic_path, write_json
    from molgym.potentials.registry import sha256_of
    from molgym.training.mace_train import latest_checkpoint_epoch, train_mace

    state, data, work = Path(state), Path(data), Path(work)
    campaign = check_session_inputs(state, data, time_limit)
    seed = int(campaign["seed"])
    checkpoints = work / "checkpoints"
    committed = campaign.get("epoch")
    have = latest_checkpoint_epoch(checkpoints) if checkpoints.is_dir() else None
    if committed is not None and (have is None or have < committed):
        checkpoints.mkdir(parents=True, exist_ok=True)
        restored = checkpoints / _checkpoint_name(campaign, committed)
        shutil.copyfile(state / CHECKPOINT_FILE, restored)
        if restored.name.endswith("_swa.pt"):
            # mace ends a stage-two run by also writing the stage-one model, from the newest stage-one
            # checkpoint, and fails when there is none; a fresh work directory gets the committed weights under
            # the last stage-one epoch's name for that (the session uses and evaluates only the stage-two model)
            stage_one = checkpoints / _MACE_TAG.format(seed=seed, epoch=int(campaign["stage_two"]["from_epoch"]) - 1)
            if not stage_one.exists():
                shutil.copyfile(restored, stage_one)
        progress(f"campaign: resuming from the committed checkpoint (epoch {committed})")
    variant = variant_of(campaign)
    options = variant.train_options()
    # mace checkpoints only epochs that lower the validation loss; a campaign continues from the epoch it last
    # trained (with that epoch's optimiser and scheduler), so every epoch is checkpointed
    options["extra"] = list(options.get("extra") or []) + ["--save_all_checkpoints"]
    options.update(_stage_two_options(campaign))
    start = time.time()
    if committed is None and campaign.get("warm_start") and have is None:
        # one epoch builds mace's checkpoint (optimiser, scheduler) for this architecture; its weights are then
        # replaced by the warm-start model's, and training continues from there
        train_mace(data, work, epochs=1, seed=seed, threads=threads, **options)
        log = work / "logs" / f"model_run-{seed}.log"
        if log.is_file():  # keep the set-up epoch out of the session's learning curve
            log.rename(log.with_name("warm_start_setup.log"))
        warm_start_checkpoint(checkpoints / _MACE_TAG.format(seed=seed, epoch=0), _warm_start_model(campaign))
        progress(f"campaign: warm start from {campaign['warm_start']['model']} (after one epoch of mace set-up)")
    model = train_mace(data, work, epochs=int(campaign["max_epochs"]), seed=seed, threads=threads,
                       time_limit=max(1.0, time_limit - (time.time() - start)), **options)
    seconds = time.time() - start
    run = json.loads((work / "train_settings.json").read_text())["runs"][-1]
    reached = latest_checkpoint_epoch(checkpoints)
    newest = max(checkpoints.glob(f"*_epoch-{reached}*.pt"), key=lambda p: p.stat().st_mtime)
    with atomic_path(state / CHECKPOINT_FILE) as tmp:
        shutil.copyfile(newest, tmp)
    with atomic_path(state / MODEL_FILE) as tmp:
        shutil.copyfile(model, tmp)
    log = work / "logs" / f"model_run-{seed}.log"
    curve = [p for p in (learning_curve(log) if log.is_file() else []) if committed is None or p["epoch"] > committed]
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)), "wall_seconds": round(seconds, 1),
               "torch_threads": run["torch_threads"], "cpu_seconds": round(seconds * run["torch_threads"], 1),
               "epoch_before": committed, "epoch_after": reached, "curve": curve,
               "stopped_by_time_limit": bool(run.get("stopped_by_time_limit")), "model_sha256": sha256_of(model)}
    if evaluate:
        session.update(evaluate_model(model, data))
    campaign["epoch"] = reached
    campaign["cpu_seconds"] = round(float(campaign.get("cpu_seconds", 0.0)) + session["cpu_seconds"], 1)
    campaign["sessions"].append(session)
    write_json(state / CAMPAIGN_FILE, campaign)  # after the checkpoint: the two always agree
    return session


def evaluate_model(model: str | os.PathLike, data: str | os.PathLike) -> dict:
    """The card summary of ``model`` on ``data``'s test files, compared row by row with the shipped default."""
    from molgym.potentials.card import card_summary
    from molgym.potentials.evaluation import evaluate_dataset

    summary = card_summary(evaluate_dataset(model, data, device="cpu"))
    return {"summary": summary, "against_shipped": against_shipped(summary)}


def against_shipped(summary: dict) -> dict:
    """:func:`molgym.potentials.card.compare_summaries` of a card summary with the shipped default's."""
    from molgym.potentials.card import compare_summaries
    from molgym.potentials.registry import MODELS_DIR

    return compare_summaries(summary, json.loads((MODELS_DIR / "default.json").read_text())["summary"])


def format_comparison(comparison: dict) -> str:
    """Markdown table of :func:`molgym.potentials.card.compare_summaries`'s rows."""
    lines = ["| row | campaign | shipped default | better | interim goal | meets goal |", "|---|---:|---:|---|---:|---|"]

    def f(x):
        return "-" if x is None else f"{x:.3f}" if abs(x) < 2 else f"{x:.0f}"

    for r in comparison["rows"]:
        lines.append(f"| {r['row']} | {f(r['new'])} | {f(r['old'])} | "
                     f"{'-' if r['better'] is None else 'yes' if r['better'] else 'no'} | {f(r['interim_goal'])} | "
                     f"{'-' if r['meets_interim_goal'] is None else 'yes' if r['meets_interim_goal'] else 'no'} |")
    lines.append("")
    lines.append(f"Better than the shipped default on every row: **{'yes' if comparison['better_everywhere'] else 'no'}**")
    return "\n".join(lines) + "\n"
