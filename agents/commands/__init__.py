"""The agents' command-line groups (``molgym train``, ``molgym train-report``, ``molgym diffusion``).

The core's CLI (:mod:`molgym.cli`) lists them by module name in ``GROUPS`` and imports them when it starts;
they import their agents (torch, SB3, e3nn) only inside the command functions, so ``molgym --help`` stays fast.
Keeping them here lets the core name them without importing the agents room.
"""
