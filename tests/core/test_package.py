"""Packaging: the three rooms import, and ``import molgym`` stays light."""

import subprocess
import sys


def test_rooms_import_and_molgym_does_not_import_torch():
    code = (
        "import sys, molgym, molgym.envs, molgym.agents, molgym.chem, molgym.potentials, molgym.reward;"
        "heavy = [m for m in ('torch', 'mace', 'e3nn', 'tblite', 'rdkit', 'stable_baselines3') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import molgym pulled in: {out.stdout.strip()}"


def test_envs_and_agents_are_subpackages_of_molgym():
    import molgym.agents
    import molgym.envs

    assert molgym.envs.__name__ == "molgym.envs" and molgym.agents.__name__ == "molgym.agents"
