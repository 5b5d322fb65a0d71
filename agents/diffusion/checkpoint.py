"""Checkpoints of the diffusion model: save atomically, load safely (``weights_only``), build the denoiser.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: no pickled code runs, whatever file the user names. Keys:

- ``format`` (``"molgym-diffusion"``), ``version``; ``config`` (:class:`ModelConfig` as a dict);
- ``model`` (weights), ``ema`` (exponential moving average of the weights, used for sampling);
- ``size_distribution`` (probability of each atom count in the training split);
- ``step``, ``epoch``, ``seconds`` (training wall time so far), ``settings`` (training options);
- training checkpoints only: ``optimizer``, ``history`` (learning curve rows).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from molgym.agents.diffusion.model import EnergyDenoiser, ModelConfig

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "denoiser_from_checkpoint", "SHIPPED_MODEL",
           "shipped_model_path"]

FORMAT = "molgym-diffusion"
FORMAT_VERSION = 1
#: The shipped model trained on QM9 (see ``qm9.json`` next to it for its card).
SHIPPED_MODEL = Path(__file__).resolve().parent / "models" / "qm9.pt"


def shipped_model_path() -> Path:
    """Path of the shipped QM9 checkpoint; ``FileNotFoundError`` if this installation lacks it."""
    if not SHIPPED_MODEL.is_file():
        raise FileNotFoundError(f"the shipped diffusion model {SHIPPED_MODEL} is missing from this installation")
    return SHIPPED_MODEL


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + rename)."""
    from molgym.io import atomic_path

    state = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (``"default"``: the shipped model)."""
    path = shipped_model_path() if str(path) == "default" else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"diffusion checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or a pickle that is not a plain checkpoint
        raise ValueError(f"{path} is not a molgym diffusion checkpoint: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a molgym diffusion checkpoint (format {FORMAT!r})")
    return state


def denoiser_from_checkpoint(state: dict, ema: bool = True) -> EnergyDenoiser:
    """The denoiser of a loaded checkpoint, with its EMA weights (default) or raw weights, in eval mode."""
    model = EnergyDenoiser(ModelConfig.from_dict(state["config"]))
    weights = state.get("ema") if ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    return model.eval()
