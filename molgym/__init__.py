"""molgym: a gym for 3D molecular design.

Gymnasium environments build molecules atom by atom in 3D, rewarded by a trained MACE force field; generators
(RL agents, diffusion, SiMGen, random search) are compared on one benchmark. ``import molgym`` is light: torch,
MACE, tblite and RDKit load only when the feature that needs them is used.
"""

from molgym.registration import register_on_import as _register_envs

__version__ = "0.1.0"

__all__ = ["__version__"]

# Register the MolGym/...-v0 Gymnasium ids (string entry points: imports neither envs/ nor torch).
_register_envs()
