"""SiMGen: zero-shot molecular generation from MACE descriptors with a similarity kernel and shape priors.

    from molgym.agents.simgen import SiMGen
    gen = SiMGen(model="default", prior="ring:radius=3")
    molecules = gen.generate(None, 10, seed=0)

Also reachable as ``molgym.benchmark.get_generator("simgen", ...)`` and ``molgym generate simgen ...``.
"""

from molgym.agents.simgen.generator import DEFAULT_ELEMENTS, MAX_HEAVY_ATOMS, SiMGen, load_descriptor_model
from molgym.agents.simgen.priors import (
    GaussianPrior,
    LinePrior,
    PointCloudPrior,
    Prior,
    RingPrior,
    parse_prior,
)

__all__ = [
    "SiMGen",
    "load_descriptor_model",
    "DEFAULT_ELEMENTS",
    "MAX_HEAVY_ATOMS",
    "Prior",
    "GaussianPrior",
    "LinePrior",
    "RingPrior",
    "PointCloudPrior",
    "parse_prior",
]
