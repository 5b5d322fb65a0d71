"""The settings of a refinement run (:func:`molgym.training.refine.refine`), checked before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class RefineConfig:
    """Settings of a refinement run (all validated by :meth:`validate` before any work)."""

    #: dataset directory (train/valid/test.xyz, manifest) from ``molgym potential dataset``
    data: str
    #: training run to start from (its checkpoints), e.g. ``runs/train-default``
    train_dir: str
    #: committee heads (``.npz``) of the starting model; ``None``: fit them first
    committee: str | None = None
    rounds: int = 3
    formulas: tuple[str, ...] = ("C7H10O2", "C7H8N2O2")
    relaxations_per_formula: int = 8
    relax_steps: int = 200
    relax_interval: int = 4
    generators: tuple[str, ...] = ()
    samples_per_formula: int = 0
    md_starts: int = 8
    md_steps: int = 60
    md_interval: int = 5
    temperature_K: float = 500.0
    timestep_fs: float = 0.5
    tau: float = 1.0
    max_sigma: float = 20.0
    select: int = 64
    min_distance: float = 0.6
    #: for each selected final molecule of a generator, also label this many frames of its GFN2-xTB relaxation
    #: (BFGS, at most ``xtb_relax_steps`` steps); 0 = off. A strained agent molecule alone teaches the refit only
    #: that its energy is higher; with frames down to its xTB minimum the refit sees the strain energy itself
    xtb_relax_frames: int = 0
    xtb_relax_steps: int = 60
    epochs: int = 1
    #: learning rate of the fine-tuning (the start checkpoint's own, 0.008 for the default, made the model worse)
    lr: float = 1e-3
    #: each harvested structure enters the fine-tuning set this many times (a few hundred new structures
    #: among ~14k would otherwise barely move one epoch)
    harvest_weight: int = 4
    members: int = 8
    ridge: float = 1e-3
    tolerance: float = 0.02
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    #: options per generator name, e.g. ``{"random_search": {"steps": 100}}`` or ``{"rl_policy": {"checkpoint": ...}}``
    generator_options: dict = field(default_factory=lambda: {"random_search": {"steps": 100}})

    def validate(self) -> None:
        """Raise ``ValueError``/``FileNotFoundError`` naming the bad setting and what is allowed."""
        from molgym.chem import parse_formula

        data = Path(self.data)
        for name in ("manifest.json", "train.xyz", "valid.xyz", "test.xyz"):
            if not (data / name).is_file():
                raise FileNotFoundError(f"dataset {data} has no {name}; build it with `molgym potential dataset`")
        from molgym.training.finetune import latest_checkpoint

        latest_checkpoint(self.train_dir)  # raises with a clear message
        if self.committee is not None and not Path(self.committee).is_file():
            raise FileNotFoundError(f"committee file {self.committee!r} does not exist")
        positive_ints = {"rounds": self.rounds, "select": self.select, "epochs": self.epochs,
                         "md_interval": self.md_interval, "members": self.members - 1,
                         "harvest_weight": self.harvest_weight}
        for name, value in positive_ints.items():
            if int(value) != value or value < 1:
                allowed = ">= 2" if name == "members" else ">= 1"
                shown = self.members if name == "members" else value
                raise ValueError(f"{name} must be an integer {allowed}, got {shown!r}")
        if int(self.relax_interval) != self.relax_interval or self.relax_interval < 1:
            raise ValueError(f"relax_interval must be an integer >= 1, got {self.relax_interval!r}")
        for name in ("samples_per_formula", "md_starts", "md_steps", "relaxations_per_formula", "relax_steps",
                     "xtb_relax_frames", "xtb_relax_steps"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("temperature_K", "timestep_fs", "max_sigma", "ridge", "min_distance", "lr"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not np.isfinite(self.tau) or self.tau < 0:
            raise ValueError(f"tau must be a finite number >= 0, got {self.tau!r}")
        if not np.isfinite(self.tolerance) or not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance!r}")
        for formula in self.formulas:
            parse_formula(formula)  # raises for malformed formulas / unknown elements
        if self.samples_per_formula and self.formulas and not self.generators:
            raise ValueError("samples_per_formula > 0 needs at least one generator")
        if self.md_starts == 0 and (self.samples_per_formula + self.relaxations_per_formula == 0 or not self.formulas):
            raise ValueError("nothing to sample: set md_starts > 0, or relaxations_per_formula or "
                             "samples_per_formula > 0 with formulas")
