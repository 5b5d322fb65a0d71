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

    As ``MolGym/SingleBag-v0`` (:class:`~molgym.envs.single_bag.SingleBagEnv`, whose docstring has the details),
    but each ``reset`` draws the episode's formula uniformly (with ``self.np_random``) from ``formulas``, so one
    agent learns to build several molecules (MolGym's multi-bag task). The observation's ``bag`` tells the agent
    which formula it is building.

    ## Action Space

    ``Box(4,)`` float32: ``[element_index, x, y, z]`` over ``elements`` (default: the union of the formulas'
    elements in Hill order), as in ``MolGym/SingleBag-v0``; ``env.unwrapped.action_masks()`` marks the elements
    left in the bag.

    ## Observation Space

    ``Dict`` with ``positions`` (max_atoms, 3) float32, ``atomic_numbers`` (max_atoms,) int64, ``mask``
    (max_atoms,) int8 and ``bag`` (len(elements),) int64, 0 padded; ``max_atoms`` is the size of the largest
    formula.

    ## Rewards

    As in ``MolGym/SingleBag-v0``: ``r = -[E(canvas + atom) - E(canvas) - E(atom)]`` per valid placement (one
    potential evaluation per step, none for the first atom); an invalid placement gets ``invalid_reward`` and
    ends the episode; a placement scoring below ``min_reward`` gets ``min_reward`` and ends it; an
    ``uncertainty_penalty`` is subtracted; with a ``reference`` the ending step adds ``info["reward_reference"]``,
    making the return the reference's return of the final canvas.

    ## Starting State

    An empty canvas and the bag of a formula drawn uniformly from ``formulas``. ``reset(options={"formula":
    "CH4O"})`` picks that formula instead (it must be one of the list, in any spelling of it);
    ``options={"canvas": atoms}`` starts from a partial structure of the episode's formula (as in
    ``MolGym/SingleBag-v0``). The reset ``info["task_formula"]`` names the episode's formula.

    ## Episode End

    Terminated when the bag is empty, after an invalid placement, a floored step or a step above
    ``uncertainty_threshold`` (``info["terminated_by"]``); never truncated. The final ``info`` holds
    ``episode_return``, ``formula`` and ``best_known_return`` of the episode's formula (``None`` when unknown).

    ## Arguments

    ```python
    gymnasium.make("MolGym/MultiBag-v0", formulas=("CH4O", "C3H8O", "C4H7N"), potential="default")
    ```

    - ``formulas``: the formulas an episode's bag is drawn from (a non-empty list; default ``("CH4O", "CH3NO",
      "C2H2O2", "C3H8O")``), each of at least 2 atoms.
    - ``potential``, ``elements``, ``workspace``, ``invalid_reward``, ``min_reward``, ``render_mode``, ``device``,
      ``uncertainty_penalty``, ``uncertainty_threshold``, ``reference``: as in ``MolGym/SingleBag-v0``.

    ## Vectorized environment

    ``gymnasium.make_vec("MolGym/MultiBag-v0", num_envs=64, formulas=(...), potential="default")`` gives
    :class:`molgym.envs.vector.MolGymVectorEnv` over this class: one batched potential call per step for all sub-environments
    (see ``MolGym/SingleBag-v0``). Each sub-environment draws its own formulas (sub-environment ``i`` seeded
    ``s + i`` by ``reset(seed=s)``), so one step mixes molecules of different sizes in one call.
    ``molgym.envs.sb3.make_sb3_vec_env`` does the same for Stable-Baselines3.
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
