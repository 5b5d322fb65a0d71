"""molgym.envs: Gymnasium environments that build molecules atom by atom in 3D.

Registered on ``import molgym`` (see :mod:`molgym.registration`):

- ``MolGym/SingleBag-v0`` (:class:`SingleBagEnv`): one fixed formula;
- ``MolGym/MultiBag-v0`` (:class:`MultiBagEnv`): one formula of a list per episode;
- ``MolGym/StochasticBag-v0`` (:class:`StochasticBagEnv`): random closed-shell bags from a template;
- ``MolGym/Solvation-v0`` (:class:`SolvationEnv`): solvent molecules around a fixed solute.

``gymnasium.make_vec(id, num_envs)`` gives :class:`molgym.envs.vector.MolGymVectorEnv` (one batched potential
call per step); :func:`molgym.envs.sb3.make_sb3_vec_env` gives the same batching as an SB3 ``VecEnv``.
"""

from molgym.envs.base import MolecularEnv
from molgym.envs.multi_bag import MultiBagEnv
from molgym.envs.placement import random_valid_action
from molgym.envs.single_bag import SingleBagEnv
from molgym.envs.solvation import SolvationEnv
from molgym.envs.stochastic_bag import StochasticBagEnv

__all__ = [
    "MolecularEnv",
    "SingleBagEnv",
    "MultiBagEnv",
    "StochasticBagEnv",
    "SolvationEnv",
    "random_valid_action",
]
