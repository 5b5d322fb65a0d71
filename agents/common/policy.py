"""Stable-Baselines3 plumbing shared by the covariant and internal agents.

:class:`PlacementPolicy` is an ``ActorCriticPolicy`` whose action distribution is a
:class:`PlacementDistribution` over the environment's action ``[element_index, x, y, z]`` (element and absolute
Cartesian position in Å). SB3 stores that action and later asks for its log-probability, so the log-probability
is the exact log-density of the action itself, with the focus atom marginalised out::

    log pi(e, x | s) = logsumexp_f [ log p(f | s) + log p(e | f, s) + log p(x | f, e, s) ]

(mass for the element, Lebesgue density in Å^-3 for the position). ``forward`` rounds sampled actions to float32
(the precision of SB3's rollout buffer) *before* computing their log-probability, so the stored log-probability
is that of the stored action. ``evaluate_actions`` returns ``entropy=None``: the entropy of the marginal is not
available in closed form, and SB3's PPO then uses ``-log_prob`` (a single-sample estimate) for its entropy term.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from molgym.agents.common.distributions import isotropic_gaussian_log_prob, sample_categorical, standard_normal
from molgym.agents.common.model import Canvas, Encoded, PlacementModel

__all__ = ["PlacementDistribution", "PlacementPolicy", "check_spaces"]

_OBS_KEYS = ("positions", "atomic_numbers", "mask", "bag")


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> int:
    """Check that the spaces are molgym's placement spaces; return the number of elements in the action."""
    if not isinstance(observation_space, spaces.Dict) or set(observation_space.spaces) < set(_OBS_KEYS):
        raise ValueError(
            f"placement policies need a Dict observation with keys {list(_OBS_KEYS)} (molgym's MolGym/* "
            f"environments), got {observation_space}"
        )
    if not isinstance(action_space, spaces.Box) or action_space.shape != (4,):
        raise ValueError(f"placement policies need a Box(4,) action [element_index, x, y, z], got {action_space}")
    n_elements = observation_space["bag"].shape[0]
    if int(round(float(action_space.high[0]))) + 1 != n_elements:
        raise ValueError(
            f"the action's element index range 0..{action_space.high[0]:g} does not match the bag's "
            f"{n_elements} elements"
        )
    return int(n_elements)


class PlacementDistribution:
    """``pi(element, position | canvas)`` for a batch of canvases (see the module docstring)."""

    def __init__(self, model: PlacementModel, canvas: Canvas, encoded: Encoded):
        self.model, self.canvas, self.encoded = model, canvas, encoded

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Exact log pi of ``actions`` (B, 4) -> (B,), or of several per canvas (S, B, 4) -> (S, B)."""
        return self._log_prob(actions, lambda terms: torch.logsumexp(terms, -1))

    def focus_log_prob(self, actions: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
        """``log pi(focus, element, position)`` of ``actions`` (B, 4) taken through the given ``focus`` atoms (B,),
        not summed over the foci as :meth:`log_prob` is (an empty canvas has no focus: its first-atom term).
        Greedy decoding takes one focus, the likeliest, then the element and position given it; fitting this
        term makes that one path build the action (the polish of :mod:`~molgym.agents.common.imitation`)."""
        return self._log_prob(actions.unsqueeze(0),
                              lambda terms: terms.gather(-1, focus.long().view(1, -1, 1)).squeeze(-1)).squeeze(0)

    def _log_prob(self, actions: torch.Tensor, reduce_focus) -> torch.Tensor:
        single = actions.dim() == 2
        if single:
            actions = actions.unsqueeze(0)
        enc, canvas = self.encoded, self.canvas
        actions = actions.to(enc.scalars.dtype)
        element = torch.round(actions[..., 0]).long().clamp(0, self.model.n_elements - 1)  # (S, B)
        x = actions[..., 1:]
        b = torch.arange(element.shape[1], device=element.device)

        first = enc.first_element_log_probs[b.unsqueeze(0), element]
        first = first + isotropic_gaussian_log_prob(x, self.model.first_atom_scale)

        lp_elem = enc.element_log_probs.permute(0, 2, 1)[b.unsqueeze(0), element]  # (S, B, N)
        lp_pos = self.model.position_log_prob(enc, canvas, element, x)  # (S, B, N)
        mask = canvas.mask | (canvas.n_atoms == 0).unsqueeze(-1)
        terms = enc.focus_log_probs + lp_elem + lp_pos
        terms = terms.masked_fill(~mask, -math.inf)
        later = reduce_focus(terms)
        out = torch.where(canvas.n_atoms == 0, first, later)
        return out.squeeze(0) if single else out

    def _assemble(self, element: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return torch.cat([element.to(position.dtype).unsqueeze(-1), position], -1)

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One action (B, 4) per canvas, drawn with ``generator``."""
        enc, canvas = self.encoded, self.canvas
        dtype = enc.scalars.dtype
        empty = canvas.n_atoms == 0
        b = torch.arange(canvas.mask.shape[0], device=canvas.mask.device)
        focus = sample_categorical(enc.focus_log_probs, generator)
        element_later = sample_categorical(enc.element_log_probs[b, focus], generator)
        element_first = sample_categorical(enc.first_element_log_probs, generator)
        position = self.model.sample_position(enc, canvas, focus, element_later, generator)
        origin = (self.model.first_atom_scale * standard_normal(position.shape, generator, position)).to(dtype)
        element = torch.where(empty, element_first, element_later)
        position = torch.where(empty.unsqueeze(-1), origin, position)
        return self._assemble(element, position)

    def sample_n(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` independent actions per canvas, (n, B, 4), encoding each canvas once."""
        b = self.canvas.mask.shape[0]
        canvas = Canvas(*(_repeat(getattr(self.canvas, k), n) for k in ("positions", "numbers", "mask", "bag")))
        enc = Encoded(**{k: _repeat(v, n) for k, v in vars(self.encoded).items()})
        actions = PlacementDistribution(self.model, canvas, enc).sample(generator)
        return actions.reshape(b, n, 4).transpose(0, 1)

    def mode(self) -> torch.Tensor:
        """A greedy action per canvas: the most likely focus, then element, then the heads' greedy positions."""
        enc, canvas = self.encoded, self.canvas
        empty = canvas.n_atoms == 0
        b = torch.arange(canvas.mask.shape[0], device=canvas.mask.device)
        focus = enc.focus_log_probs.argmax(-1)
        element_later = enc.element_log_probs[b, focus].argmax(-1)
        position = self.model.mode_position(enc, canvas, focus, element_later)
        element = torch.where(empty, enc.first_element_log_probs.argmax(-1), element_later)
        position = torch.where(empty.unsqueeze(-1), torch.zeros_like(position), position)
        return self._assemble(element, position)


def _repeat(obj: Any, n: int) -> Any:
    """Repeat every tensor in ``obj`` (nested dicts/lists) ``n`` times along its leading (batch) axis."""
    if torch.is_tensor(obj):
        return obj.repeat_interleave(n, 0)
    if isinstance(obj, dict):
        return {k: _repeat(v, n) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_repeat(v, n) for v in obj)
    return obj


class PlacementPolicy(ActorCriticPolicy):
    """SB3 actor-critic policy over molgym's placement action; subclasses set :attr:`model_class`.

    Args (beyond SB3's): ``model_kwargs`` for the model; ``seed`` for the policy's own sampling generator
    (``None``: torch's initial seed, which ``PPO(seed=...)`` sets). SB3's MLP options (``net_arch``, ...) are
    accepted for compatibility and ignored; ``use_sde`` is not supported.
    """

    model_class: type[PlacementModel] = PlacementModel

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule,
                 model_kwargs: dict[str, Any] | None = None, seed: int | None = None, use_sde: bool = False,
                 **kwargs: Any):
        if use_sde:
            raise ValueError("placement policies do not support use_sde=True")
        self.n_elements = check_spaces(observation_space, action_space)
        self.model_kwargs = dict(model_kwargs or {})
        self.model_class.check_options(self.model_kwargs)
        self.seed = int(torch.initial_seed() % (2**63) if seed is None else seed)
        kwargs.setdefault("ortho_init", False)
        super().__init__(observation_space, action_space, lr_schedule, use_sde=False, **kwargs)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

    def _build(self, lr_schedule) -> None:
        self.model = self.model_class(self.n_elements, **self.model_kwargs)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(model_kwargs=self.model_kwargs, seed=self.seed)
        return data

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def canvas(self, obs: dict[str, Any]) -> Canvas:
        return Canvas.from_observation(obs, dtype=self.dtype, device=self.device)

    def distribution(self, obs: dict[str, Any]) -> PlacementDistribution:
        """The action distribution for a batch of observations (dict of (B, ...) arrays or tensors)."""
        canvas = self.canvas(obs)
        return PlacementDistribution(self.model, canvas, self.model.encode(canvas))

    def forward(self, obs: dict[str, torch.Tensor], deterministic: bool = False):
        dist = self.distribution(obs)
        actions = dist.mode() if deterministic else dist.sample(self.generator)
        actions = actions.detach().to(torch.float32).to(self.dtype)  # what the rollout buffer will hold
        log_prob = dist.log_prob(actions)
        return actions, dist.encoded.value.unsqueeze(-1), log_prob

    def evaluate_actions(self, obs: dict[str, torch.Tensor], actions: torch.Tensor):
        dist = self.distribution(obs)
        return dist.encoded.value.unsqueeze(-1), dist.log_prob(actions), None

    def predict_values(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        canvas = self.canvas(obs)
        return self.model.encode(canvas).value.unsqueeze(-1)

    def get_distribution(self, obs: dict[str, torch.Tensor]) -> PlacementDistribution:  # type: ignore[override]
        return self.distribution(obs)

    def _predict(self, observation: dict[str, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        dist = self.distribution(observation)
        actions = dist.mode() if deterministic else dist.sample(self.generator)
        return actions.to(torch.float32)

    def log_prob(self, obs: dict[str, Any], actions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Convenience: exact log pi(actions | obs) for numpy or torch inputs."""
        actions = torch.as_tensor(actions, device=self.device)
        return self.distribution(obs).log_prob(actions)

    def focus_log_prob(self, obs: dict[str, Any], actions: np.ndarray | torch.Tensor,
                       focus: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Convenience: :meth:`PlacementDistribution.focus_log_prob` for numpy or torch inputs."""
        actions = torch.as_tensor(actions, device=self.device)
        return self.distribution(obs).focus_log_prob(actions, torch.as_tensor(focus, device=self.device))
