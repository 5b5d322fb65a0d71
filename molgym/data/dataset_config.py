"""Settings of the reward potential's dataset (:mod:`molgym.data.dataset`): what a dataset holds, the named
size presets, the split of QM9 ids and the per-molecule seeds every random choice comes from."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from molgym.reward import MIN_DISTANCE

ELEMENTS = (1, 6, 7, 8, 9)
REFERENCE_METHOD = "GFN2-xTB (tblite), neutral, lowest spin multiplicity (uhf = n_electrons % 2)"
SPLITS = ("train", "valid", "test")
OUTPUT_FILES = ("train", "valid", "test", "nonqm9", "isomers")
NONQM9_SMILES_FILE = Path(__file__).with_name("nonqm9_smiles.txt")
ISOMER_FORMULA = "C7H10O2"
DATASET_VERSION = 1

# category codes mixed into the per-molecule seeds
_CODES = {"thermal": 1, "build": 2, "misplaced": 3, "close_contact": 4, "alternatives": 5, "order": 6, "nonqm9": 7}


@dataclass(frozen=True)
class DatasetConfig:
    """Sizes and sampling settings of a dataset. ``SIZES`` holds named presets."""

    seed: int = 0
    train_molecules: int = 2000
    valid_molecules: int = 100
    test_molecules: int = 150
    #: fraction of QM9 ids in the valid and test splits (the rest is train)
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    thermal_per_molecule: int = 2
    temperature_range: tuple[float, float] = (300.0, 1000.0)
    md_steps: int = 40
    md_timestep_fs: float = 0.5
    md_friction_per_fs: float = 0.05
    build_per_molecule: int = 2
    misplaced_per_molecule: int = 1
    close_contact_per_molecule: int = 1
    close_contact_range: tuple[float, float] = (MIN_DISTANCE, 1.0)
    #: test molecules whose whole build trajectory (every prefix) is labelled
    test_build_trajectories: int = 40
    #: test molecules that get a set of alternative placements of one next atom
    alternative_groups: int = 40
    alternatives_per_group: int = 8
    diatomic_range: tuple[float, float] = (0.5, 3.0)
    diatomic_points: int = 26
    isomers: int = 200
    isomer_fmax: float = 0.05
    isomer_max_steps: int = 300
    #: None: every molecule in nonqm9_smiles.txt
    nonqm9_molecules: int | None = None
    nonqm9_thermal: int = 2
    molecules_per_shard: int = 25
    #: more train-split QM9 molecules on top of ``train_molecules``, drawn with their own random stream and labelled
    #: in their own shards (``qm9-train-extra-*``): growing it adds training data while the valid, test, non-QM9 and
    #: isomer sets stay byte-identical (changing ``train_molecules`` would redraw them). Last so that the settings
    #: of a dataset without extras list their fields as before.
    extra_train_molecules: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        for name in ("train_molecules", "valid_molecules", "test_molecules", "thermal_per_molecule", "md_steps",
                     "build_per_molecule", "misplaced_per_molecule", "close_contact_per_molecule",
                     "test_build_trajectories", "alternative_groups", "isomers", "nonqm9_thermal",
                     "extra_train_molecules"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.train_molecules < 1 or self.valid_molecules < 1:
            raise ValueError("train_molecules and valid_molecules must be >= 1")
        if self.molecules_per_shard < 1:
            raise ValueError(f"molecules_per_shard must be >= 1, got {self.molecules_per_shard}")
        if self.alternatives_per_group < 2:
            raise ValueError(f"alternatives_per_group must be >= 2, got {self.alternatives_per_group}")
        if self.diatomic_points < 2:
            raise ValueError(f"diatomic_points must be >= 2, got {self.diatomic_points}")
        lo, hi = self.temperature_range
        if not 0 < lo <= hi:
            raise ValueError(f"temperature_range must be 0 < low <= high, got {self.temperature_range}")
        if not (0 < self.valid_fraction and 0 < self.test_fraction and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("valid_fraction and test_fraction must be positive and sum to less than 1")
        lo, hi = self.close_contact_range
        if not MIN_DISTANCE <= lo <= hi:
            raise ValueError(f"close_contact_range must satisfy {MIN_DISTANCE} <= low <= high, got {(lo, hi)}")
        if self.nonqm9_molecules is not None and self.nonqm9_molecules < 0:
            raise ValueError(f"nonqm9_molecules must be >= 0 or None, got {self.nonqm9_molecules}")

    def as_dict(self) -> dict:
        return asdict(self)

    def fixed_settings(self) -> dict:
        """The settings a dataset directory cannot change once built: all but ``extra_train_molecules``, which a
        rerun may grow (new shards) or shrink (fewer shards assembled) without touching the other files."""
        settings = self.as_dict()
        settings.pop(GROWABLE, None)
        return settings


#: the one setting a rerun into an existing dataset directory may change
GROWABLE = "extra_train_molecules"


#: Named dataset sizes: ``tiny`` builds in seconds (tests), ``default`` is what the shipped model was trained on.
SIZES: dict[str, DatasetConfig] = {
    "tiny": DatasetConfig(
        train_molecules=6, valid_molecules=2, test_molecules=3, thermal_per_molecule=1, md_steps=4,
        test_build_trajectories=1, alternative_groups=1, alternatives_per_group=4, diatomic_points=6, isomers=3,
        isomer_max_steps=20, isomer_fmax=0.2, nonqm9_molecules=2, nonqm9_thermal=1, molecules_per_shard=3,
    ),
    "small": DatasetConfig(train_molecules=300, valid_molecules=30, test_molecules=50, test_build_trajectories=15,
                           alternative_groups=15, isomers=50),
    "default": DatasetConfig(),
}


# --------------------------------------------------------------------------------------------------------------
# splitting and per-molecule randomness
# --------------------------------------------------------------------------------------------------------------
def split_of(molecule_id: int, seed: int, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """The split (``train``/``valid``/``test``) of a QM9 id: a hash of (seed, id), so stable and order-free."""
    digest = hashlib.blake2b(f"{seed}:{molecule_id}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def molecule_rng(seed: int, category: str, molecule_id: int | str) -> np.random.Generator:
    """A generator seeded by (seed, category, molecule id) only, never by global state or worker order."""
    if isinstance(molecule_id, str):
        molecule_id = int.from_bytes(hashlib.blake2b(molecule_id.encode(), digest_size=6).digest(), "little")
    return np.random.default_rng([int(seed), _CODES[category], int(molecule_id)])
