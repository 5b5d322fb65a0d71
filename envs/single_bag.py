"""``MolGym/SingleBag-v0``: build one molecule of a fixed formula."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ase import Atoms

from molgym.chem import bag_size, format_formula, parse_formula
from molgym.envs.base import MolecularEnv, check_reset_options, check_settings, task_vocabulary

__all__ = ["SingleBagEnv", "parse_task_formula"]


def parse_task_formula(formula: str, argument: str = "formula") -> dict[str, int]:
    """Parse a task formula; ``ValueError`` naming the argument when it is malformed or too small."""
    if not isinstance(formula, str):
        raise ValueError(f"{argument} must be a formula string such as 'C3H8O', got {formula!r}")
    try:
        bag = parse_formula(formula)
    except ValueError as err:
        raise ValueError(f"{argument}={formula!r} is not a valid formula: {err}") from None
    if bag_size(bag) < 2:
        raise ValueError(f"{argument}={formula!r} has {bag_size(bag)} atom; a molecule needs at least 2")
    return bag


class SingleBagEnv(MolecularEnv):
    """Build a molecule of one fixed formula, atom by atom in 3D.

    ## Description

    The agent empties a *bag* of atoms (the formula, e.g. ``C3H8O``) onto a 3D *canvas*, one atom per step,
    choosing the element and its absolute Cartesian position. Each placement is rewarded with the interaction
    energy of the new atom with the canvas under a potential (MolGym, Simm et al. ICML 2020; here a MACE force
    field by default), so the undiscounted return of a complete episode is the atomisation energy of the molecule
    built, and the best return is reached by its most stable isomer.

    ## Action Space

    ``Box(4,)`` of ``float32``: ``[element_index, x, y, z]``. ``element_index`` (rounded to the nearest integer,
    range ``0..len(elements)-1``) selects ``env.unwrapped.elements[element_index]``; ``x, y, z`` is the absolute
    position in Å inside ``[-workspace, workspace]^3``. A dict ``{"element": k, "position": [x, y, z]}`` is also
    accepted by ``step``. ``env.unwrapped.action_masks()`` (and ``info["action_mask"]``) marks the elements left
    in the bag.

    ## Observation Space

    ``Dict`` of fixed-size arrays (``max_atoms`` = the formula's size):

    | key              | shape            | dtype   | meaning                                         |
    |------------------|------------------|---------|-------------------------------------------------|
    | ``positions``    | (max_atoms, 3)   | float32 | positions of the placed atoms (Å), 0 padded     |
    | ``atomic_numbers``| (max_atoms,)    | int64   | atomic numbers, 0 padded                        |
    | ``mask``         | (max_atoms,)     | int8    | 1 for a placed atom, 0 for padding              |
    | ``bag``          | (len(elements),) | int64   | atoms of each element still to place            |

    ## Rewards

    A valid placement of atom ``a`` gets ``r = -[E(canvas + a) - E(canvas) - E(a)]`` (eV;
    :func:`molgym.reward.interaction_reward`), where ``E(a)`` is the isolated atom's energy and ``E(canvas)``
    is carried over from the previous step: one potential evaluation per step (none for the first atom, whose
    reward is 0). ``info["reward_interaction"]`` holds that term and ``info["reward_invalid"]`` the penalty.
    An invalid placement gets ``invalid_reward`` (default -1 eV) and ends the episode. Invalid are: a non-finite
    action, an element index out of range, an element not left in the bag, a position outside the workspace, an
    atom closer than :data:`molgym.reward.MIN_DISTANCE` (0.6 Å) to another, an H or F farther than
    :data:`molgym.reward.MAX_TERMINAL_DISTANCE` (2.0 Å) from every heavy atom, and a structure the potential
    cannot evaluate (SCF failure, non-finite energy); ``info["invalid_reason"]`` says which. They never raise.
    A valid placement that scores below ``min_reward`` (default -1 eV: atoms squeezed into the repulsive wall)
    gets ``min_reward`` and ends the episode too, as in MolGym, so that no placement scores worse than an
    invalid one and a learned potential's far repulsive region cannot swamp an agent's value estimates; the atom
    stays on the canvas and ``info["reward_floor"]`` holds the amount added. With a committee potential (the
    default model's), ``info["uncertainty"]`` is each step's uncertainty (eV; 0 for the first atom and for invalid
    steps) and ``uncertainty_penalty`` subtracts that many eV per eV (``info["reward_uncertainty"]``).

    With ``reference="xtb"`` (any potential spec), the step that ends the episode, however it ends, also gets
    ``info["reward_reference"]`` ``= R_ref - R_potential - (floor terms)``, where ``R`` is the build return
    ``sum E(atom) - E(canvas)`` of the final canvas under each model (each with its own isolated-atom energies):
    the per-step rewards stay the potential's (dense shaping), and the undiscounted return of every episode is
    the reference's return of the final canvas exactly, plus ``invalid_reward`` if the episode ended on an
    invalid placement. The final ``info`` then also holds ``potential_return`` and ``reference_return``. If the
    reference cannot evaluate the final canvas (a failed SCF), the episode's return becomes ``invalid_reward``,
    ``info["reference_failed"]`` is ``True`` and ``info["invalid_reason"]`` says why. Cost: one reference
    evaluation per episode (about 6-10 ms with GFN2-xTB for 19 atoms), not one per step.

    ## Starting State

    An empty canvas and the full bag; nothing is random. ``reset(options={"canvas": atoms})`` starts from a
    partial structure instead: it must obey the placement rules, its atoms must be part of the formula (and leave
    at least one atom to place) and are removed from the bag; its energy costs one potential evaluation (none for
    a single atom). The reset ``info`` holds ``task_formula``, ``best_known_return``, ``best_known`` (a sentence)
    and ``reference``.

    ## Episode End

    Terminated when the bag is empty, after an invalid placement, after a step floored at ``min_reward`` or after
    a step whose uncertainty exceeds ``uncertainty_threshold``; ``info["terminated_by"]`` is ``"bag_empty"``,
    ``"invalid"``, ``"min_reward"`` or ``"uncertainty"``. Never truncated (an episode has at most ``len(formula)``
    steps). The final ``info`` holds ``episode_return``, ``formula`` (of the canvas) and ``best_known_return``:
    the return of the best known isomer of the formula under the same potential (the reference, when there is
    one; :mod:`molgym.best_known`), or ``None`` when none is known for it (``info["best_known"]`` at reset
    explains). ``env.unwrapped.write_molecule(path)`` / ``write_trajectory(path)`` export to extended XYZ.

    ## Arguments

    ```python
    gymnasium.make("MolGym/SingleBag-v0", formula="C3H8O", potential="default")
    ```

    - ``formula``: the bag (default ``"C3H8O"``; e.g. ``"C7H8N2O2"``), at least 2 atoms.
    - ``potential``: ``"default"`` (molgym's MACE model), ``"xtb"``, ``"pm6"``, a MACE model path, or a
      ``Potential``; specs are loaded once per process and shared.
    - ``elements``: the element vocabulary of the action (default: the formula's elements, Hill order).
    - ``workspace``: half-width of the placement cube in Å (default 8).
    - ``invalid_reward``: reward of an invalid placement (default -1).
    - ``min_reward``: floor of a valid placement's reward (default -1 eV, as MolGym's): a step that scores
      worse gets ``min_reward`` and ends the episode (``info["terminated_by"] == "min_reward"``,
      ``info["reward_floor"]`` the amount added). ``None`` for no floor.
    - ``render_mode``: ``"rgb_array"`` (picture with bonds) or ``"ansi"`` (text).
    - ``device``: device of a MACE potential given by spec.
    - ``uncertainty_penalty``: subtract this times the step's uncertainty (eV) from each reward (>= 0, default 0;
      ``info["reward_uncertainty"]``). Needs a potential with uncertainties (the default model's committee).
    - ``uncertainty_threshold``: end the episode after a step whose uncertainty exceeds this (eV; default
      ``None``, never); ``info["terminated_by"]`` is then ``"uncertainty"``. Whenever the potential provides
      uncertainties, ``info["uncertainty"]`` holds the step's (docs/uncertainty.md).
    - ``reference``: a potential spec (``"xtb"``, ``"pm6"``, a MACE model path) or ``Potential`` whose return the
      episode return equals (see Rewards); default ``None``, the potential's rewards only. A reference that does
      not cover the formula's elements, or an unknown spec, raises ``ValueError``; one identical to
      ``potential`` (the same method or model file) is a no-op.

    ## Vectorized environment

    ```python
    gymnasium.make_vec("MolGym/SingleBag-v0", num_envs=64, formula="C3H8O", potential="default")
    ```

    gives :class:`molgym.envs.vector.MolGymVectorEnv` over this class (the id's ``vector_entry_point``): each ``step``
    validates the 64 actions and evaluates every structure that needs an energy in ONE batched potential call
    (the vector-step protocol of :mod:`molgym.envs.base`), plus, with a ``reference``, one reference call for the
    final canvases of the episodes that end in that step. The rewards are exactly those of 64 single environments
    given the same actions: ``reset(seed=s)`` seeds sub-environment ``i`` with ``s + i``. Autoreset is
    Gymnasium's next-step one (``autoreset_mode="same_step"`` also works); infos are batched Gymnasium's way (an
    unknown ``best_known_return`` is NaN there). ``vectorization_mode="sync"`` or ``"async"`` gives Gymnasium's
    own vector envs (one call per sub-environment). For Stable-Baselines3,
    ``molgym.envs.sb3.make_sb3_vec_env("MolGym/SingleBag-v0", n_envs=64, seed=0, formula="C3H8O")`` keeps the
    batched call.
    """

    def __init__(
        self,
        formula: str = "C3H8O",
        elements: Sequence[str] | None = None,
        **settings: Any,
    ):
        self.formula_bag = parse_task_formula(formula)
        self.formula = format_formula(self.formula_bag)
        vocabulary = task_vocabulary(elements, list(self.formula_bag), f"the formula {self.formula}")
        super().__init__(
            **check_settings(type(self), settings),
            elements=vocabulary,
            max_atoms=bag_size(self.formula_bag),
        )

    def _new_episode(self, options: Mapping[str, Any]) -> tuple[dict[str, int], Atoms]:
        check_reset_options(options, ("canvas",))
        return dict(self.formula_bag), Atoms()
