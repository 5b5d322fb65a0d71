"""``MolGym/MultiBag-v0``: one formula per episode, drawn from a list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ase import Atoms

from molgym.chem import bag_size, format_formula, hill_order
from molgym.envs.base import MolecularEnv, check_reset_options, check_settings, task_vocabulary
from molgym.envs.single_bag import parse_task_formula

__all__ = ["MultiBagEnv"]


class MultiBagEnv(MolecularEnv):
    """Build molecules of several formulas: each episode's bag is one formula of a list, drawn uniformly.

    ## Description

    As ``MolGym/SingleBag-v0``, but each ``reset`` draws the episode's formula uniformly (with
    ``self.np_random``) from ``formulas``, so one agent learns to build several molecules (MolGym's multi-bag
    task). The observation's ``bag`` tells the agent which formula it is building.

    ## Action Space

    ``Box(4,)``: ``[element_index, x, y, z]`` over the union of the formulas' elements (Hill order), as in
    ``MolGym/SingleBag-v0``; ``env.unwrapped.action_masks()`` marks the elements left in the bag.

    ## Observation Space

    ``Dict`` with ``positions`` (max_atoms, 3), ``atomic_numbers`` (max_atoms,), ``mask`` (max_atoms,), ``bag``
    (len(elements),); ``max_atoms`` is the size of the largest formula.

    ## Rewards

    ``r = -[E(canvas + atom) - E(canvas) - E(atom)]`` per valid placement (one potential evaluation per step);
    an invalid placement gets ``invalid_reward`` and ends the episode (rules as in ``MolGym/SingleBag-v0``).

    ## Starting State

    An empty canvas and the drawn formula's bag. ``reset(options={"formula": "CH4O"})`` picks a formula of the
    list; ``options={"canvas": atoms}`` starts from a partial structure of the episode's formula.

    ## Episode End

    Terminated when the bag is empty or after an invalid placement; never truncated. The final ``info`` holds
    ``episode_return`` and ``best_known_return`` of the episode's formula (``None`` when unknown).

    ## Arguments

    ```python
    gymnasium.make("MolGym/MultiBag-v0", formulas=("CH4O", "C3H8O", "C4H7N"), potential="default")
    ```

    - ``formulas``: the formulas an episode's bag is drawn from (at least one).
    - ``potential``, ``elements``, ``workspace``, ``invalid_reward``, ``min_reward``, ``render_mode``, ``device``,
      ``uncertainty_penalty``, ``uncertainty_threshold``, ``reference``: as in ``MolGym/SingleBag-v0``.
    """

    def __init__(
        self,
        formulas: Sequence[str] = ("CH4O", "CH3NO", "C2H2O2", "C3H8O"),
        elements: Sequence[str] | None = None,
        **settings: Any,
    ):
        if isinstance(formulas, str) or not isinstance(formulas, Sequence) or len(formulas) == 0:
            raise ValueError(f"formulas must be a non-empty list of formula strings, got {formulas!r}")
        self.bags = [parse_task_formula(f, "formulas") for f in formulas]
        self.formulas = tuple(format_formula(b) for b in self.bags)
        union = hill_order({s: 1 for b in self.bags for s in b})
        vocabulary = task_vocabulary(elements, list(union), "the formulas")
        super().__init__(
            **check_settings(type(self), settings),
            elements=vocabulary,
            max_atoms=max(bag_size(b) for b in self.bags),
        )

    def _new_episode(self, options: Mapping[str, Any]) -> tuple[dict[str, int], Atoms]:
        check_reset_options(options, ("canvas", "formula"))
        if "formula" in options:
            wanted = format_formula(parse_task_formula(options["formula"], "options['formula']"))
            if wanted not in self.formulas:
                raise ValueError(f"options['formula']={options['formula']!r} is not one of {list(self.formulas)}")
            return dict(self.bags[self.formulas.index(wanted)]), Atoms()
        k = int(self.np_random.integers(len(self.bags)))
        return dict(self.bags[k]), Atoms()
