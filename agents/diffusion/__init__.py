"""Energy-based diffusion sampler trained on QM9 (after SiMGen's score analysis and EDM's preconditioning).

    from molgym.agents.diffusion import DiffusionSampler
    gen = DiffusionSampler(model="default", steps=40)
    molecules = gen.generate(None, 10, seed=0)

The denoiser is the gradient of a noise-conditioned MACE-style energy (:mod:`.model`); it is trained with EDM's
loss on EDM's QM9 split (:mod:`.training`, ``molgym diffusion train``), sampled with EDM's stochastic Heun
integrator (:mod:`.sampler`) and analysed against a restoring force and the MACE potential's forces
(:mod:`.analysis`, ``molgym diffusion analyse``). Also ``get_generator("diffusion")`` and
``molgym generate diffusion``. See ``docs/diffusion.md``.
"""

from molgym.agents.diffusion.checkpoint import denoiser_from_checkpoint, load_checkpoint, shipped_model_path
from molgym.agents.diffusion.generator import MAX_ATOMS, DiffusionSampler, RelaxedDiffusionSampler
from molgym.agents.diffusion.model import ELEMENTS, EnergyDenoiser, ModelConfig, Preconditioning
from molgym.agents.diffusion.sampler import SamplerSettings, heun_sample

__all__ = [
    "DiffusionSampler",
    "RelaxedDiffusionSampler",
    "MAX_ATOMS",
    "EnergyDenoiser",
    "ModelConfig",
    "Preconditioning",
    "ELEMENTS",
    "SamplerSettings",
    "heun_sample",
    "load_checkpoint",
    "denoiser_from_checkpoint",
    "shipped_model_path",
]
