"""Pieces shared by molgym's actor-critic agents: exact distributions, network layers, the placement model
skeleton and the Stable-Baselines3 policy plumbing (see :mod:`molgym.agents.common.policy`)."""
