"""The shared skeleton of a placement model: canvas batches, invariant heads (value, focus, element) and the
interface a model implements for the position of the new atom given the focus atom and the element.

A model factorises the policy as ``pi(e, x | s) = sum_f p(f | s) p(e | f, s) p(x | f, e, s)`` (the focus ``f``
is not part of the environment's action, so it is marginalised out); an empty canvas has no focus and uses
``p(e | s) N(x; 0, first_atom_scale^2 I)``. Subclasses provide the encoder (:meth:`node_features`) and the
conditional position density (:meth:`position_log_prob`, :meth:`sample_position`, :meth:`mode_position`).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from molgym.agents.common.layers import mlp

__all__ = ["Canvas", "Encoded", "PlacementModel", "select_element", "select_focus_element"]


@dataclass
class Canvas:
    """A batch of padded canvases: ``positions`` (B, N, 3), ``numbers`` (B, N) long, ``mask`` (B, N) bool and
    ``bag`` (B, E) (atoms of each action element left)."""

    positions: torch.Tensor
    numbers: torch.Tensor
    mask: torch.Tensor
    bag: torch.Tensor

    @classmethod
    def from_observation(cls, obs: dict[str, Any], dtype: torch.dtype, device: torch.device | str) -> "Canvas":
        """From an environment observation dict (numpy or torch, batched: leading batch dimension)."""
        t = {k: torch.as_tensor(v, device=device) for k, v in obs.items()}
        return cls(
            positions=t["positions"].to(dtype),
            numbers=torch.round(t["atomic_numbers"].double()).long(),
            mask=t["mask"] > 0.5,
            bag=t["bag"].to(dtype),
        )

    @property
    def n_atoms(self) -> torch.Tensor:
        return self.mask.sum(-1)

    @property
    def element_mask(self) -> torch.Tensor:
        """(B, E) elements still in the bag (all of them when the bag is empty, so that the categorical is
        defined on terminal observations, which SB3 may evaluate for values only)."""
        left = self.bag > 0.5
        return left | ~left.any(-1, keepdim=True)


@dataclass
class Encoded:
    """What :meth:`PlacementModel.encode` returns for a batch of canvases."""

    value: torch.Tensor  # (B,)
    focus_log_probs: torch.Tensor  # (B, N); -inf off the canvas (all-zero row for an empty canvas: unused)
    element_log_probs: torch.Tensor  # (B, N, E): log p(e | f); -inf for elements not in the bag
    first_element_log_probs: torch.Tensor  # (B, E): log p(e) on an empty canvas
    scalars: torch.Tensor  # (B, N, C) invariant atom features
    context: torch.Tensor  # (B, C) invariant bag features
    extra: dict[str, Any] = field(default_factory=dict)  # model-specific (equivariant features, local frames)


def select_element(t: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
    """``t`` (B, N, E, ...) at ``element`` (S, B) -> (S, B, N, ...)."""
    b = torch.arange(t.shape[0], device=t.device)
    return t.transpose(1, 2)[b.unsqueeze(0), element]


def select_focus_element(t: torch.Tensor, focus: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
    """``t`` (B, N, E, ...) at ``(focus, element)`` (B,) each -> (B, ...)."""
    b = torch.arange(t.shape[0], device=t.device)
    return t[b, focus, element]


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log-softmax over the last axis with ``mask`` False entries at -inf (rows need one True entry)."""
    return torch.log_softmax(logits.masked_fill(~mask, -math.inf), -1)


class PlacementModel(nn.Module):
    """Base class of the covariant and internal models (see the module docstring).

    Args:
        n_elements: size of the action's element vocabulary (the observation's ``bag`` length).
        channels: width of the invariant features.
        element_channels: width of the element embedding fed to the position heads.
        max_atomic_number: largest atomic number the atom embedding knows.
        first_atom_scale: standard deviation (Å) of the isotropic Gaussian at the origin for the first atom.
    """

    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword options of this model: its constructor's and its bases' (less ``n_elements``)."""
        names: list[str] = []
        for klass in cls.__mro__:
            if not (isinstance(klass, type) and issubclass(klass, PlacementModel)):
                continue
            for name, param in inspect.signature(klass.__init__).parameters.items():
                if name not in ("self", "n_elements", *names) and param.kind in (param.POSITIONAL_OR_KEYWORD,
                                                                                param.KEYWORD_ONLY):
                    names.append(name)
        return names

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """The default of every option that has one (a subclass's default wins over its base's)."""
        names, values = set(cls.option_names()), {}
        for klass in cls.__mro__:
            if not (isinstance(klass, type) and issubclass(klass, PlacementModel)):
                continue
            for name, param in inspect.signature(klass.__init__).parameters.items():
                if name in names and name not in values and param.default is not param.empty:
                    values[name] = param.default
        return values

    @classmethod
    def resolved_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Every option's value, ``options`` over :meth:`option_defaults`, after :meth:`check_options`.

        Training stores this, not only the options given, in the checkpoint, so a later change of a default
        cannot change what a saved policy is when it is loaded again.
        """
        cls.check_options(options)
        return {**cls.option_defaults(), **options}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """``ValueError`` naming any key of ``options`` that is not one of :meth:`option_names` (instead of a
        ``TypeError`` from deep inside the policy's construction)."""
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown model option(s) {', '.join(map(repr, unknown))}; allowed: "
                             f"{', '.join(cls.option_names())}")

    def __init__(self, n_elements: int, channels: int = 64, element_channels: int = 16, max_atomic_number: int = 54,
                 first_atom_scale: float = 0.1):
        super().__init__()
        if n_elements < 1:
            raise ValueError(f"n_elements must be positive, got {n_elements}")
        if not first_atom_scale > 0:
            raise ValueError(f"first_atom_scale must be positive, got {first_atom_scale}")
        self.n_elements = int(n_elements)
        self.channels = int(channels)
        self.element_channels = int(element_channels)
        self.max_atomic_number = int(max_atomic_number)
        self.first_atom_scale = float(first_atom_scale)
        c = self.channels
        self.atom_embedding = nn.Embedding(self.max_atomic_number + 1, c)
        self.bag_net = mlp([self.n_elements, c, c])
        self.context_to_atoms = nn.Linear(c, c)
        self.element_embedding = nn.Embedding(self.n_elements, self.element_channels)
        self.value_net = mlp([2 * c + 1, c, c, 1])
        self.focus_net = mlp([2 * c, c, 1], last_zero=True)
        self.element_net = mlp([2 * c, c, self.n_elements], last_zero=True)
        self.first_element_net = mlp([c, c, self.n_elements], last_zero=True)

    # ------------------------------------------------------------------------------------ to implement
    def node_features(self, canvas: Canvas, h0: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Invariant atom features (B, N, C) from the initial scalars ``h0`` (B, N, C), and model extras."""
        raise NotImplementedError

    def position_log_prob(self, enc: Encoded, canvas: Canvas, element: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | f, e)`` (Lebesgue density in Å^-3) for every focus candidate ``f``.

        ``element`` (S, B) long, ``x`` (S, B, 3) -> (S, B, N). Entries for padding atoms are ignored.
        """
        raise NotImplementedError

    def sample_position(self, enc: Encoded, canvas: Canvas, focus: torch.Tensor, element: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
        """One position (B, 3) from ``p(x | focus, element)`` (``focus``, ``element``: (B,) long)."""
        raise NotImplementedError

    def mode_position(self, enc: Encoded, canvas: Canvas, focus: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        """A greedy position (B, 3) for ``(focus, element)``."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- shared
    def encode(self, canvas: Canvas) -> Encoded:
        mask = canvas.mask
        context = self.bag_net(torch.log1p(canvas.bag))  # (B, C)
        z = canvas.numbers.clamp(0, self.max_atomic_number)
        h0 = (self.atom_embedding(z) + self.context_to_atoms(context).unsqueeze(1)) * mask.unsqueeze(-1)
        scalars, extra = self.node_features(canvas, h0)
        scalars = scalars * mask.unsqueeze(-1).to(scalars.dtype)
        n = canvas.n_atoms.to(scalars.dtype)
        pooled = scalars.sum(1) / n.clamp(min=1.0).unsqueeze(-1)
        value = self.value_net(torch.cat([pooled, context, torch.log1p(n).unsqueeze(-1)], -1)).squeeze(-1)

        per_atom = torch.cat([scalars, context.unsqueeze(1).expand_as(scalars)], -1)
        focus_mask = mask | (canvas.n_atoms == 0).unsqueeze(-1)  # an empty canvas gets a dummy (unused) row
        focus = masked_log_softmax(self.focus_net(per_atom).squeeze(-1), focus_mask)
        element_mask = canvas.element_mask
        elements = masked_log_softmax(self.element_net(per_atom), element_mask.unsqueeze(1))
        first = masked_log_softmax(self.first_element_net(context), element_mask)
        return Encoded(value=value, focus_log_probs=focus, element_log_probs=elements,
                       first_element_log_probs=first, scalars=scalars, context=context, extra=extra)

    def head_inputs(self, enc: Encoded) -> torch.Tensor:
        """Per (focus, element) invariant inputs of the position heads: (B, N, E, C + C_e)."""
        b, n, c = enc.scalars.shape
        emb = self.element_embedding.weight  # (E, Ce)
        s = enc.scalars.unsqueeze(2).expand(b, n, self.n_elements, c)
        e = emb.view(1, 1, self.n_elements, -1).expand(b, n, -1, -1).to(s.dtype)
        return torch.cat([s, e], -1)
