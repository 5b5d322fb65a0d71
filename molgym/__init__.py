"""molgym: a gym for 3D molecular design.

Gymnasium environments build molecules atom by atom in 3D, rewarded by a trained MACE force field; generators
(RL agents, diffusion, SiMGen, random search) are compared on one benchmark. ``import molgym`` is light: torch,
MACE, tblite and RDKit load only when the feature that needs them is used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

from molgym.registration import register_envs as _register_envs; _register_envs()  # noqa: E402,E702
