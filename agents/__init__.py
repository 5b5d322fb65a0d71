"""molgym.agents: generators (RL agents, SiMGen, diffusion, random structure search)."""
