"""The shared reward definition."""

import numpy as np
import pytest
from ase.build import molecule

from molgym.potentials import load_potential
from molgym.reward import isolated_atom_energies, prefix_rewards


def test_prefix_rewards_sum_to_the_atomisation_energy():
    xtb = load_potential("xtb")
    methanol = molecule("CH3OH")
    prefix_energies = xtb.energies([methanol[: k + 1] for k in range(len(methanol))])
    atom = isolated_atom_energies(xtb, methanol.numbers)
    atom_energies = [atom[int(z)] for z in methanol.numbers]
    rewards = prefix_rewards(prefix_energies, atom_energies)
    assert rewards.shape == (len(methanol),)
    assert rewards[0] == pytest.approx(atom_energies[0] - prefix_energies[0], abs=1e-9)  # ~0: one isolated atom
    assert rewards.sum() == pytest.approx(sum(atom_energies) - prefix_energies[-1], abs=1e-9)
    assert rewards.sum() > 10.0  # methanol's GFN2-xTB atomisation energy is tens of eV
    # step k: -(E(prefix k) - E(prefix k-1) - E(atom k))
    expected = -(prefix_energies[2] - prefix_energies[1] - atom_energies[2])
    assert rewards[2] == pytest.approx(expected, abs=1e-12)
    assert np.all(np.isfinite(rewards))
