"""Registration on ``import molgym``: every id, idempotent, light (no torch, no envs module, fast)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import gymnasium as gym

from molgym.registration import ENV_IDS, make_vector_env, register_envs


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_molgym_is_light_and_registers_when_gymnasium_loads():
    result = _run(
        "import json, sys, time; t = time.perf_counter(); import molgym; dt = time.perf_counter() - t; "
        "heavy = [m for m in ('torch', 'gymnasium', 'numpy', 'molgym.envs') if m in sys.modules]; "
        "import gymnasium as gym; "
        "print(json.dumps({'seconds': dt, 'heavy': heavy, "
        "'ids': sorted(k for k in gym.registry if k.startswith('MolGym/'))}))"
    )
    assert result["ids"] == sorted(ENV_IDS)
    assert result["heavy"] == []
    assert result["seconds"] < 1.5


def test_ids_registered_whatever_the_import_order():
    for code in (
        "import gymnasium as gym, molgym",
        "import molgym, gymnasium.envs.registration as r; gym = r",
        "import molgym, importlib; importlib.reload(molgym); import gymnasium as gym",
    ):
        result = _run(code + "; import json; print(json.dumps({'ids': sorted(k for k in gym.registry "
                      "if k.startswith('MolGym/'))}))")
        assert result["ids"] == sorted(ENV_IDS), code


def test_registration_is_idempotent():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert register_envs() == []
        assert register_envs() == []
    assert not [w for w in caught if "Overriding" in str(w.message)]
    for env_id, entry_point in ENV_IDS.items():
        spec = gym.spec(env_id)
        assert spec.entry_point == entry_point
        # every id's vector form is molgym's vector env over the same class, imported only when made
        assert spec.vector_entry_point.func is make_vector_env and spec.vector_entry_point.args == (entry_point,)
