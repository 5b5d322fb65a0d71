"""``MolGym/StochasticBag-v0``: random bags drawn from a template formula and a size range."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms

from molgym.chem import bag_from_numbers, format_formula
from molgym.envs.bags import bag_contains, is_closed_shell_feasible, sample_bag
from molgym.envs.base import MolecularEnv, check_reset_options, check_settings, task_vocabulary
from molgym.envs.single_bag import parse_task_formula

__all__ = ["StochasticBagEnv"]

_MAX_TRIES = 1000


class StochasticBagEnv(MolecularEnv):
    """Build molecules from random bags: sizes in a range, compositions like a template formula.

    ## Description

    Each ``reset`` draws a new bag (MolGym's stochastic-bag task): a size ``n`` uniform in ``size_range`` and a
    composition multinomial in the template's element fractions (``C7H8N2O2``: 7/19 C, 8/19 H...). Only bags
    that can form a neutral closed-shell molecule are kept: an even number of electrons and a valence-feasible
    connected graph (each atom's neutral valence, bond orders 1-3; see :mod:`molgym.envs.bags`). Others are
    drawn again, as are bags whose formula is in ``exclude``: hold those out of training and evaluate on them
    with ``reset(options={"bag": formula})`` to measure generalisation to bags never seen. Placement and rewards
    are those of ``MolGym/SingleBag-v0`` (:class:`~molgym.envs.single_bag.SingleBagEnv`).

    ## Action Space

    ``Box(4,)`` float32: ``[element_index, x, y, z]`` over ``elements`` (default: the template's elements, Hill
    order), as in ``MolGym/SingleBag-v0``; ``env.unwrapped.action_masks()`` marks the elements left in the bag.

    ## Observation Space

    ``Dict`` with ``positions`` (max_atoms, 3) float32, ``atomic_numbers`` (max_atoms,) int64, ``mask``
    (max_atoms,) int8 and ``bag`` (len(elements),) int64, 0 padded, where ``max_atoms = size_range[1]``.

    ## Rewards

    As in ``MolGym/SingleBag-v0``: ``r = -[E(canvas + atom) - E(canvas) - E(atom)]`` per valid placement (one
    potential evaluation per step, none for the first atom); an invalid placement gets ``invalid_reward`` and
    ends the episode; a placement scoring below ``min_reward`` gets ``min_reward`` and ends it; an
    ``uncertainty_penalty`` is subtracted; with a ``reference`` the ending step adds ``info["reward_reference"]``.

    ## Starting State

    An empty canvas and a bag drawn with ``self.np_random`` (``reset(seed=...)`` makes it reproducible).
    ``options={"bag": "C6H8O2"}`` plays that bag instead of drawing one (it may be an excluded one; it must use
    the template's elements, fit ``size_range[1]`` atoms and be able to form a closed-shell molecule).
    ``options={"canvas": atoms}`` draws only bags that contain the canvas's atoms and more, and starts from it.
    The reset ``info["task_formula"]`` names the bag.

    ## Episode End

    Terminated when the bag is empty, after an invalid placement, a floored step or a step above
    ``uncertainty_threshold`` (``info["terminated_by"]``); never truncated. ``best_known_return`` in the final
    ``info`` is that of the episode's formula when one is known for the potential, else ``None``.

    ## Arguments

    ```python
    gymnasium.make("MolGym/StochasticBag-v0", template="C7H8N2O2", size_range=(10, 19), potential="default")
    ```

    - ``template``: formula whose element fractions the bags follow (default ``"C7H8N2O2"``).
    - ``size_range``: ``(min, max)`` number of atoms of a bag, inclusive, ``2 <= min <= max`` (default
      ``(8, 19)``). A template and range that yield no feasible bag (outside ``exclude``) raise ``ValueError``.
    - ``exclude``: formulas never drawn (held-out bags, e.g. ``("C7H10O2", "C6H8O2")``); they can still be played
      with ``options={"bag": ...}``, and each must be playable (checked at construction).
    - ``potential``, ``elements``, ``workspace``, ``invalid_reward``, ``min_reward``, ``render_mode``, ``device``,
      ``uncertainty_penalty``, ``uncertainty_threshold``, ``reference``: as in ``MolGym/SingleBag-v0``.

    ## Vectorized environment

    ``gymnasium.make_vec("MolGym/StochasticBag-v0", num_envs=64, template="C7H8N2O2", size_range=(10, 19))``
    gives :class:`molgym.envs.vector.MolGymVectorEnv` over this class: one batched potential call per step for all
    sub-environments (see ``MolGym/SingleBag-v0``). Each sub-environment draws its own bags (sub-environment ``i``
    seeded ``s + i`` by ``reset(seed=s)``); the observations stack because all have ``max_atoms = size_range[1]``.
    ``molgym.envs.sb3.make_sb3_vec_env`` does the same for Stable-Baselines3.
    """

    def __init__(
        self,
        template: str = "C7H8N2O2",
        size_range: Sequence[int] = (8, 19),
        exclude: Sequence[str] = (),
        elements: Sequence[str] | None = None,
        **settings: Any,
    ):
        self.template_bag = parse_task_formula(template, "template")
        self.template = format_formula(self.template_bag)
        try:
            lo, hi = (int(v) for v in size_range)
        except (TypeError, ValueError):
            raise ValueError(f"size_range must be two integers (min, max), got {size_range!r}") from None
        if not 2 <= lo <= hi:
            raise ValueError(f"size_range must satisfy 2 <= min <= max, got {size_range!r}")
        self.size_range = (lo, hi)
        if isinstance(exclude, str):
            raise ValueError(f"exclude must be a list of formulas, got the string {exclude!r}")
        #: formulas (Hill order) never drawn: the held-out bags
        self.exclude = frozenset(format_formula(parse_task_formula(f, "exclude")) for f in exclude)
        probe = self._draw(np.random.default_rng(0), {})
        if probe is None:
            held = f" outside exclude={sorted(self.exclude)}" if self.exclude else ""
            raise ValueError(
                f"no closed-shell-feasible bag{held} found for template={self.template!r} and "
                f"size_range={size_range!r} in {_MAX_TRIES} draws; widen the range or change the template"
            )
        vocabulary = task_vocabulary(elements, list(self.template_bag), f"the template {self.template}")
        for formula in sorted(self.exclude):  # held-out bags must be playable: checked before the potential loads
            self._given_bag(formula, "exclude", vocabulary)
        super().__init__(
            **check_settings(type(self), settings),
            elements=vocabulary,
            max_atoms=hi,
        )

    def _draw(self, rng: np.random.Generator, part: Mapping[str, int]) -> dict[str, int] | None:
        """A feasible bag outside :attr:`exclude` that holds ``part`` and more, or ``None``.

        ``None`` as soon as :func:`sample_bag` finds no feasible bag in its ``_MAX_TRIES`` draws: retrying it would
        only repeat those draws (a million of them for a template with no feasible bag)."""
        for _ in range(_MAX_TRIES):
            bag = sample_bag(self.template_bag, self.size_range, rng, max_tries=_MAX_TRIES)
            if bag is None:
                return None
            if (format_formula(bag) not in self.exclude and bag_contains(bag, part)
                    and sum(bag.values()) > sum(part.values())):
                return bag
        return None

    def _new_episode(self, options: Mapping[str, Any]) -> tuple[dict[str, int], Atoms]:
        check_reset_options(options, ("canvas", "bag"))
        canvas = options.get("canvas")
        part = bag_from_numbers(canvas.numbers) if isinstance(canvas, Atoms) and len(canvas) else {}
        if options.get("bag") is not None:
            return self._given_bag(options["bag"]), Atoms()
        bag = self._draw(self.np_random, part)
        if bag is None:
            raise ValueError(
                f"no bag of template {self.template} with sizes {self.size_range} contains the start canvas "
                f"{format_formula(part) if part else '(empty)'}"
            )
        return bag, Atoms()

    def _given_bag(self, formula: Any, argument: str = "options['bag']",
                   elements: Sequence[str] | None = None) -> dict[str, int]:
        """A bag named by the user (``options["bag"]``, an ``exclude`` entry), checked against the task's
        ``elements`` (default: the environment's): a ``ValueError`` naming the argument and what is wrong."""
        elements = list(self.elements if elements is None else elements)
        bag = parse_task_formula(formula, argument)
        name = format_formula(bag)
        foreign = sorted(set(bag) - set(elements))
        if foreign:
            raise ValueError(f"{argument}: {name} has {', '.join(foreign)}; this task places only "
                             f"{', '.join(elements)}")
        if sum(bag.values()) > self.size_range[1]:
            raise ValueError(f"{argument}: {name} has {sum(bag.values())} atoms; this task's observations hold "
                             f"at most size_range[1]={self.size_range[1]}")
        if not is_closed_shell_feasible(bag):
            raise ValueError(f"{argument}: {name} cannot form a closed-shell molecule")
        return bag

    @staticmethod
    def is_feasible(bag: Mapping[str, int]) -> bool:
        """Whether a bag can form a closed-shell molecule (the rule used to draw bags)."""
        return is_closed_shell_feasible(bag)
