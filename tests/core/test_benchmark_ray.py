"""The same suite on a local Ray cluster gives the same results as local processes for the same seeds."""

from __future__ import annotations

import os

import pytest

from molgym.benchmark import Suite

os.environ.setdefault("OMP_NUM_THREADS", "1")
ray = pytest.importorskip("ray", reason="the ray extra is not installed")

SMALL = Suite(
    name="ray-test", version="0", description="Ray vs local", tasks=("CH4O",), n_samples=2, seeds=(0, 1),
    relax_steps=5, referee_sample=1, generator_options={"random_search": {"steps": 10}},
)
TIMING = {"generate_seconds", "metric_seconds", "seconds_per_valid", "cpu_seconds", "cpu_seconds_per_valid"}


def _strip_timing(obj):
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


def test_ray_matches_local(tmp_path, local_ray):
    from molgym.benchmark.runner import run_suite

    local = run_suite(SMALL, ["random_search", "qm9"], tmp_path / "local", potential="xtb", workers=1,
                      progress=False)
    remote = run_suite(SMALL, ["random_search", "qm9"], tmp_path / "ray", potential="xtb", executor="ray",
                       progress=False)
    assert remote["executor"] == "ray" and remote["complete"] and remote["jobs_finished"] == 4
    assert _strip_timing(remote["leaderboard"]) == _strip_timing(local["leaderboard"])
    by_id = {j["job_id"]: j for j in local["jobs"]}
    for job in remote["jobs"]:
        assert _strip_timing(job["summary"]) == _strip_timing(by_id[job["job_id"]]["summary"])
        assert job["cost"]["potential_calls"] == by_id[job["job_id"]]["cost"]["potential_calls"]
        assert (job["cost"]["potential_calls"] > 0) == (job["generator"] == "random_search")
    for name in by_id:  # identical molecules, byte for byte
        a = (tmp_path / "local" / "samples" / f"{name}.extxyz").read_text()
        b = (tmp_path / "ray" / "samples" / f"{name}.extxyz").read_text()
        assert a == b
