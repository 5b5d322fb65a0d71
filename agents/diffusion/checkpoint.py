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
           "SHIPPED_MODELS", "shipped_model_path"]

FORMAT = "molgym-diffusion"
FORMAT_VERSION = 1
_MODELS = Path(__file__).resolve().parent / "models"
#: The shipped models by name, each with its card (the ``.json`` next to it): ``default`` generates (heavy atoms,
#: hydrogens by valence rules), ``explicit-h`` is the model with hydrogens that the score analysis uses.
SHIPPED_MODELS: dict[str, Path] = {"default": _MODELS / "qm9-heavy.pt", "explicit-h": _MODELS / "qm9.pt"}
#: The default shipped model.
SHIPPED_MODEL = SHIPPED_MODELS["default"]


def shipped_model_path(name: str = "default") -> Path:
    """Path of a shipped checkpoint (:data:`SHIPPED_MODELS`); ``ValueError`` for an unknown name,
    ``FileNotFoundError`` if this installation lacks the file."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"unknown shipped diffusion model {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    path = SHIPPED_MODELS[name]
    if not path.is_file():
        raise FileNotFoundError(f"the shipped diffusion model {path} is missing from this installation")
    return path


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary file + rename)."""
    from molgym.io import atomic_path

    state = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, or a shipped one by name (``"default"``,
    ``"explicit-h"``)."""
    path = shipped_model_path(str(path)) if str(path) in SHIPPED_MODELS else Path(path)
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
