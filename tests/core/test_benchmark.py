"""Benchmark: tasks and suites, generator registry, random search, QM9 reference, runner, resume, report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

import molgym
from molgym.benchmark import Generator, Suite, get_generator, get_suite, get_task, shape_task
from molgym.benchmark.tasks import Task
from molgym.chem import bag_from_numbers, format_formula, parse_formula
from molgym.reward import MIN_DISTANCE

# One OpenMP thread for xTB: on a loaded 2-core machine the default thread count makes each call ~40x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = Suite(
    name="tiny-test", version="0", description="test suite", tasks=("CH4O", "bags-small"), n_samples=3,
    seeds=(0, 1), relax_steps=5, referee_sample=1, generator_options={"random_search": {"steps": 15}},
)


# ---------------------------------------------------------------- tasks and suites


def test_tasks_and_suites():
    t = get_task("C3H8O")
    assert t.kind == "formula" and t.bags(2, seed=0) == [parse_formula("C3H8O")] * 2
    assert get_task("CH3OH").formula == "CH4O"  # any formula, normalised to Hill order
    bags = get_task("bags-small")
    assert bags.bags(20, seed=3) == bags.bags(20, seed=3)
    assert {tuple(b.items()) for b in bags.bags(40, seed=3)} <= {tuple(parse_formula(f).items()) for f in bags.formulas}
    unc = get_task("qm9-unconditional").bags(200, seed=0)
    sizes = [sum(b.values()) for b in unc]
    assert 3 <= min(sizes) and max(sizes) <= 29 and 15 < np.mean(sizes) < 21  # QM9's mean size is ~18 atoms
    for name in ("quick", "v1"):
        suite = get_suite(name)
        assert suite.version and suite.get_tasks()
    v1 = get_suite("v1")
    assert {"CH4O", "CH3NO", "C2H2O2", "C3H5NO3", "C4H7N", "C3H8O", "C7H10O2", "C7H8N2O2"} <= set(v1.tasks)
    assert {get_task(t).kind for t in v1.tasks} == {"formula", "unconditional", "shape", "bag"}


def test_bad_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'C3h8O'"):
        get_task("C3h8O")
    with pytest.raises(ValueError, match="unknown suite 'nope'.*quick"):
        get_suite("nope")
    with pytest.raises(ValueError, match="unknown generator 'nope'.*random_search"):
        get_generator("nope")
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        shape_task([[0, 0]], "C2H6")


def test_shape_task_from_file(tmp_path):
    import ase.io

    path = tmp_path / "target.xyz"
    ase.io.write(path, Atoms("C3H8", positions=np.random.default_rng(0).normal(size=(11, 3))))
    task = get_task(f"shape:{path}")
    assert task.kind == "shape" and task.formula == "C3H8" and task.target_array.shape == (3, 3)
    assert get_task(f"shape:{path}:C3H6O").formula == "C3H6O"


# ---------------------------------------------------------------- generators


def test_auto_potential_prefers_the_shipped_default(monkeypatch, tmp_path):
    from molgym.potentials.registry import resolve_potential_spec
    from molgym.potentials import registry

    def missing(name="default"):
        raise registry.ModelNotAvailableError("no model")

    monkeypatch.setattr(registry, "shipped_model_path", missing)
    assert resolve_potential_spec("auto")[0] == "xtb"
    monkeypatch.setattr(registry, "shipped_model_path", lambda name="default": tmp_path / "default.model")
    assert resolve_potential_spec("auto") == ("default", "auto: shipped default MACE model")
    assert resolve_potential_spec("pm6") == ("pm6", "requested")


def test_random_search_respects_rules_is_seeded_and_counts_calls():
    from molgym.data.placement import random_structure

    rng = np.random.default_rng(0)
    for _ in range(20):
        atoms = random_structure(parse_formula("C3H8O"), rng)
        d = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
        assert d.min() >= MIN_DISTANCE
        heavy = atoms.positions[atoms.numbers > 1]
        for p in atoms.positions[atoms.numbers == 1]:
            assert np.linalg.norm(heavy - p, axis=1).min() <= 2.0

    gen = get_generator("random_search", potential="xtb", steps=10)
    task = get_task("CH4O")
    first = gen.generate(task, 2, seed=5)
    calls = gen.potential_calls
    assert calls > 2 and gen.metadata()["potential_calls"] == calls
    again = get_generator("random_search", potential="xtb", steps=10).generate(task, 2, seed=5)
    other = get_generator("random_search", potential="xtb", steps=10).generate(task, 2, seed=6)
    assert all(bag_from_numbers(a.numbers) == parse_formula("CH4O") for a in first)
    assert all(np.allclose(a.positions, b.positions) for a, b in zip(first, again))
    assert not np.allclose(first[0].positions, other[0].positions)


def test_qm9_reference_matches_formula_or_size():
    gen = get_generator("qm9")
    mols = gen.generate(get_task("C3H8O"), 5, seed=0)
    assert all(bag_from_numbers(a.numbers) == parse_formula("C3H8O") for a in mols)
    assert all(a.info["qm9_match"] == "formula" for a in mols)
    big = gen.generate(get_task("C7H8N2O2"), 3, seed=0)  # 11 heavy atoms: QM9 has at most 9
    assert all(a.info["qm9_match"] == "nearest-size" and (a.numbers > 1).sum() == 9 for a in big)
    assert gen.potential_calls == 0


def test_rl_policy_generator_rolls_out_a_trained_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="needs a checkpoint"):
        get_generator("rl_policy")
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        get_generator("rl_policy", checkpoint=str(tmp_path / "missing.zip")).generate(get_task("CH4O"), 1, 0)

    import gymnasium
    from stable_baselines3 import PPO

    import molgym  # noqa: F401  (registers the environments)

    env = gymnasium.make("MolGym/SingleBag-v0", formula="CH4O", potential="xtb")
    model = PPO("MultiInputPolicy", env, n_steps=12, batch_size=12, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    model.learn(total_timesteps=12)
    path = tmp_path / "policy.zip"
    model.save(path)

    gen = get_generator("rl_policy", checkpoint=str(path), potential="xtb")
    mols = gen.generate(get_task("CH4O"), 3, seed=4)
    assert len(mols) == 3 and gen.settings["algorithm_loaded"] == "PPO"
    for atoms in mols:
        assert 1 <= len(atoms) <= 6
        assert set(atoms.get_chemical_symbols()) <= {"C", "H", "O"}
    assert gen.potential_calls >= sum(len(a) - 1 for a in mols)
    again = get_generator("rl_policy", checkpoint=str(path), potential="xtb").generate(get_task("CH4O"), 3, seed=4)
    assert all(np.allclose(a.positions, b.positions) for a, b in zip(mols, again))
    with pytest.raises(ValueError, match="expects observations"):  # trained for 6 atoms, C3H8O has 12
        get_generator("rl_policy", checkpoint=str(path), potential="xtb").generate(get_task("C3H8O"), 1, seed=0)


def test_shipped_agent_checkpoints_are_indexed_and_checked():
    from molgym.agents.shipped import CHECKPOINT_DIR, shipped_checkpoint, shipped_checkpoints
    from molgym.potentials.registry import shipped_model_card

    index = shipped_checkpoints()
    assert {"CH4O", "CH3NO", "C2H2O2"} <= set(index)
    # the default models molgym has shipped: today's and those with best-known returns in the table
    table = json.loads((Path(molgym.__file__).parent / "data" / "best_known.json").read_text())["entries"]
    shipped_defaults = {shipped_model_card()["sha256"]} | {e["model_sha256"] for e in table
                                                           if e["potential"] == "MACE(default)"}
    for formula, entry in index.items():
        assert shipped_checkpoint(formula) == CHECKPOINT_DIR / entry["file"]  # sha256 matches the index
        assert entry["potential"] == "default" and entry["potential_sha256"] in shipped_defaults
        assert 0.0 < entry["final_greedy"]["mean_fraction_of_optimum"] <= 1.0
    assert shipped_checkpoint("OCH4") == shipped_checkpoint("CH4O")  # any spelling of the formula
    with pytest.raises(ValueError, match="no shipped agent checkpoint for C9H20.*shipped for: .*CH4O"):
        shipped_checkpoint("C9H20")


@pytest.mark.parametrize("template, bag", [("C7H8N2O2", "C6H6N2O"), ("C7H10O2", "C5H8O")])
def test_shipped_stochastic_bag_checkpoint_plays_a_held_out_bag(template, bag):
    """Each shipped stochastic-bag policy loads (sha256-checked) and builds a whole molecule from a bag held out of
    its training, in the environment its entry's ``env_kwargs`` make (the usage docs/agents.md shows)."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    from molgym.agents.shipped import shipped_stochastic_checkpoint, shipped_stochastic_checkpoints

    entry = shipped_stochastic_checkpoints()[template]
    assert entry["env_id"] == "MolGym/StochasticBag-v0" and entry["reference"] == "xtb"
    assert set(entry["held_out"]["bags"]) == set(entry["env_kwargs"]["exclude"]) and bag in entry["held_out"]["bags"]
    env = gym.make(entry["env_id"], potential="default", **entry["env_kwargs"])
    model = PPO.load(str(shipped_stochastic_checkpoint(template)), device="cpu")
    obs, info = env.reset(seed=0, options={"bag": bag})  # held out of training
    assert info["task_formula"] == bag
    done = False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, _reward, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    assert info["terminated_by"] == "bag_empty"  # the greedy policy placed the whole bag validly
    with pytest.raises(ValueError, match="no shipped stochastic-bag checkpoint for template C3H8O"):
        shipped_stochastic_checkpoint("C3H8O")


def test_rl_policy_with_shipped_checkpoints_skips_tasks_it_cannot_do(tmp_path):
    from molgym.benchmark.runner import run_suite

    gen = get_generator("rl_policy", checkpoint="shipped", potential="default")
    assert gen.unsupported(get_task("CH4O")) is None
    assert gen.unsupported(get_task("bags-small")) is None  # every formula of the bag has a checkpoint
    assert "per formula" in gen.unsupported(get_task("qm9-unconditional"))
    assert "no shipped checkpoint for C2H6O" in gen.unsupported(get_task("C2H6O"))
    mixed = Task(name="mixed-bags", kind="bag", description="", formulas=("CH4O", "C2H6O"))
    assert gen.unsupported(mixed).startswith("no shipped checkpoint for C2H6O (")
    with pytest.raises(ValueError, match="task 'C2H6O': no shipped agent checkpoint"):
        gen.generate(get_task("C2H6O"), 1, seed=0)

    # each sample of a stochastic-bag task is played by its own formula's checkpoint, in SingleBag
    molecules = gen.generate(get_task("bags-small"), 3, seed=5)
    bags = [format_formula(b) for b in get_task("bags-small").bags(3, 5)]
    for m, bag in zip(molecules, bags, strict=True):  # each canvas holds atoms of its own bag only
        placed = parse_formula(m.get_chemical_formula(mode="hill"))
        assert len(m) > 0 and all(placed[s] <= parse_formula(bag).get(s, 0) for s in placed), (bag, placed)

    suite = Suite(name="shipped-test", version="0", description="", tasks=("CH4O", "qm9-unconditional"),
                  n_samples=2, seeds=(0,), relax_steps=0, referee_sample=0)
    results = run_suite(suite, ["rl_policy"], tmp_path, potential="default", workers=1, progress=False,
                        generator_options={"rl_policy": {"checkpoint": "shipped"}})
    assert results["complete"] and results["jobs_planned"] == 1 and results["failed_jobs"] == []
    assert [(s["generator"], s["task"]) for s in results["skipped_jobs"]] == [("rl_policy", "qm9-unconditional")]
    figures = results["generators"]["rl_policy"]["figures"]  # the shipped agents' learning curves, for the report
    assert len(figures) == 2 and all(Path(p).is_file() and p.endswith(".png") for p in figures.values())
    assert list(results["leaderboard"]) == ["CH4O"]
    job = json.loads((tmp_path / "jobs" / "rl_policy__CH4O__seed0.json").read_text())
    assert job["n_generated"] == 2 and job["generator_metadata"]["settings"]["checkpoint"] == "shipped"


# ---------------------------------------------------------------- runner, resume, report


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from molgym.benchmark.runner import run_suite

    out = tmp_path_factory.mktemp("bench")
    results = run_suite(TINY, ["random_search", "qm9"], out, potential="xtb", workers=1, progress=False)
    return out, results


def test_results_file_schema(tiny_run):
    out, results = tiny_run
    def no_nan(constant):
        raise AssertionError(f"results.json holds {constant}, which strict JSON readers reject")

    on_disk = json.loads((out / "results.json").read_text(), parse_constant=no_nan)
    assert on_disk["complete"] and on_disk["jobs_finished"] == on_disk["jobs_planned"] == 8
    for key in ("schema_version", "molgym_version", "timestamp", "machine", "suite", "seeds", "potential",
                "generators", "jobs", "leaderboard", "overall"):
        assert key in on_disk
    assert on_disk["potential"] == {"spec": "xtb", "selected_because": "requested", "name": "GFN2-xTB"}
    assert on_disk["suite"]["name"] == "tiny-test" and on_disk["seeds"] == [0, 1]
    assert on_disk["generators"]["random_search"]["potential_calls"] > 0
    row = on_disk["leaderboard"]["CH4O"]["qm9"]
    assert row["valid_connected"]["mean"] == 1.0 and row["valid_connected"]["n"] == 6
    lo, hi = row["valid_connected"]["ci95"]
    assert 0 < lo < 1 == hi
    assert row["cost"]["potential_calls"] == 0
    rs = on_disk["leaderboard"]["CH4O"]["random_search"]
    assert rs["matches_task"]["mean"] == 1.0
    assert rs["cost"]["potential_calls"] > 0
    assert rs["cost"]["calls_per_valid"] is None or rs["cost"]["calls_per_valid"] >= rs["cost"]["potential_calls"] / 6
    assert rs["cost"]["cpu_seconds"] > 0 and rs["cost"]["valid_plausible"] <= rs["cost"]["valid_connected"]
    if rs["cost"]["valid_plausible"]:  # CPU seconds and calls per valid, connected, plausible molecule
        assert rs["cost"]["cpu_seconds_per_valid"] == pytest.approx(
            rs["cost"]["cpu_seconds"] / rs["cost"]["valid_plausible"])
    # the standard 3D-generation checks: PoseBusters on every molecule, GFN2-xTB relaxation on a valid sample
    assert row["posebusters"]["n"] == 6 and row["distinct_valid"]["mean"] == 1  # QM9's one CH4O isomer
    assert set(row["posebusters_checks"]) >= {"bond_lengths", "bond_angles", "internal_energy"}
    assert row["referee_relax_energy"]["n"] == 2 and row["referee_relax_energy"]["median"] is not None
    assert row["referee_graph_kept"]["mean"] == 1.0
    import ase.io

    frames = ase.io.read(out / "samples" / "random_search__CH4O__seed0.extxyz", index=":")
    assert len(frames) == 3 and "valid" in frames[0].info


def test_resume_skips_finished_jobs(tiny_run, monkeypatch):
    from molgym.benchmark import runner

    out, results = tiny_run
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "jobs").iterdir()}

    def boom(spec):
        raise AssertionError(f"finished job {spec['job_id']} was rerun")

    monkeypatch.setattr(runner, "run_job", boom)
    monkeypatch.setattr(runner, "run_job_safe", boom)
    again = runner.run_suite(TINY, ["random_search", "qm9"], out, potential="xtb", workers=1, progress=False)
    assert again["leaderboard"] == results["leaderboard"] and again["failed_jobs"] == []
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "jobs").iterdir()}


class FailsOnC2H2O2(Generator):
    """Test generator: QM9 molecules, except that it raises on C2H2O2."""

    name = "fails-on-c2h2o2"

    def generate(self, task, n, seed):
        if task.name == "C2H2O2":
            raise RuntimeError("deliberate failure")
        return get_generator("qm9").generate(task, n, seed)


def test_a_failing_job_is_reported_and_the_others_finish(tmp_path):
    from molgym.benchmark.runner import run_suite

    suite = Suite(name="fail-test", version="0", description="", tasks=("CH4O", "C2H2O2"), n_samples=2,
                  seeds=(0,), relax_steps=0, referee_sample=0)
    results = run_suite(suite, [f"{__name__}:FailsOnC2H2O2"], tmp_path, potential="xtb", workers=1,
                        progress=False)
    assert results["jobs_finished"] == 1 and not results["complete"]
    assert [f["error"] for f in results["failed_jobs"]] == ["RuntimeError: deliberate failure"]
    assert not any("__C2H2O2__" in p.name for p in (tmp_path / "jobs").iterdir())  # retried on the next run


def test_killed_run_resumes_without_corrupt_results(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "molgym", "bench", "--suite", "quick", "--tasks", "CH4O,C2H2O2", "--seeds",
           "0,1", "--n", "2", "--generators", "qm9,random_search", "--potential", "xtb", "--workers", "1",
           "--option", "random_search.steps=10", "--no-report", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    jobs = out / "jobs"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if jobs.is_dir() and len(list(jobs.glob("*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; test needs a slower job"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in jobs.glob("*.json")}
    assert 2 <= len(finished) < 8
    partial = json.loads((out / "results.json").read_text())  # parses: never half-written
    assert not partial["complete"] and partial["jobs_finished"] >= 1  # the kill may land before the 2nd save

    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    final = json.loads((out / "results.json").read_text())
    assert final["complete"] and final["jobs_finished"] == 8
    for name, stamp in finished.items():
        assert (jobs / name).stat().st_mtime_ns == stamp, f"{name} was redone"
    for path in jobs.glob("*.json"):
        json.loads(path.read_text())


def test_report_is_self_contained_and_renders(tiny_run, tmp_path):
    from molgym.benchmark.report import write_report

    out, _ = tiny_run
    md, html_path = write_report(out, tmp_path)
    text = md.read_text()
    assert "| random_search |" in text and "## CH4O" in text
    page = html_path.read_text()
    assert "data:image/png;base64," in page and "<svg" in page
    import re

    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert links and all(link.startswith(("data:", "#")) for link in links)  # nothing fetched from a network
    assert "<script" not in page and "<link" not in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed: HTML not rendered")
    shot = tmp_path / "page.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
         "--window-size=1200,1600", f"--screenshot={shot}", html_path.as_uri()],
        capture_output=True, timeout=90,
    )
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert colours > 50, "the page rendered (nearly) blank"


def test_report_flags_records_shows_checks_conventions_and_generator_figures(tiny_run, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from molgym.benchmark.report import CONVENTIONS, write_report

    out, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    results = json.loads((run / "results.json").read_text())
    figure = tmp_path / "curve.png"
    plt.figure(figsize=(2, 2))
    plt.plot([0, 1], [0, 1])
    plt.savefig(figure)
    results["generators"]["qm9"]["figures"] = {"learning curves of a test agent": str(figure)}
    results["leaderboard"]["CH4O"]["random_search"]["fraction_best_known"] = {"mean": 1.7, "ci95": [1, 2], "n": 6}
    (run / "results.json").write_text(json.dumps(results))
    md, html_path = write_report(run)
    text, page = md.read_text(), html_path.read_text()
    assert "CH4O: random_search scores 170.0% of the best-known return under potential" in text
    assert "## PoseBusters checks" in text and "| bond lengths |" in text
    assert "## Learning curves of a test agent" in text and (run / "figures" / "figure-1.png").is_file()
    assert page.count("data:image/png;base64,") >= 2 and "Learning curves of a test agent" in page
    assert all(c in text for c in CONVENTIONS) and "xTB relax ΔE med / p90 (kcal/mol)" in text
    assert "CPU s/valid" in text and "PB-valid" in text

    clean = tmp_path / "clean"
    shutil.copytree(out, clean)
    assert "No generator scores above a best-known return" in write_report(clean)[0].read_text()


def test_cli_bench_errors_and_list():
    from molgym.cli import main

    assert main(["bench", "--list"]) == 0
    assert main(["bench", "--suite", "nope", "--out", "/tmp/never"]) == 2
    assert main(["bench", "--option", "nodot=1"]) == 2
    assert main(["report", "/nonexistent/dir"]) == 2


def test_rl_policy_with_a_checkpoint_table_plays_each_formula_with_its_own(tmp_path):
    from molgym.agents.shipped import shipped_checkpoint

    table = {"OCH4": str(shipped_checkpoint("CH4O")), "CH3NO": str(shipped_checkpoint("CH3NO"))}
    gen = get_generator("rl_policy", checkpoint=table, potential="default")
    assert gen.settings["checkpoint"] == {"CH4O": table["OCH4"], "CH3NO": table["CH3NO"]}  # Hill order
    assert gen.unsupported(get_task("CH4O")) is None
    assert gen.unsupported(get_task("C2H2O2")) == "no given checkpoint for C2H2O2 (given: CH3NO, CH4O)"
    assert "per formula" in gen.unsupported(get_task("qm9-unconditional"))
    with pytest.raises(ValueError, match=r"task 'C2H2O2': no given checkpoint for C2H2O2 \(given: CH3NO, CH4O\)"):
        gen.generate(get_task("C2H2O2"), 1, seed=0)
    for task in ("CH4O", "CH3NO"):
        mols = gen.generate(get_task(task), 2, seed=1)
        placed = [parse_formula(m.get_chemical_formula(mode="hill")) for m in mols]
        assert all(set(p) <= set(parse_formula(task)) for p in placed)  # its own bag's atoms only
        assert gen._checkpoint_for(get_task(task), task) == Path(table["OCH4" if task == "CH4O" else task])

    with pytest.raises(ValueError, match="bad formula 'C3Xx'"):
        get_generator("rl_policy", checkpoint={"C3Xx": "a.zip"})
    with pytest.raises(ValueError, match="names CH4O twice"):
        get_generator("rl_policy", checkpoint={"CH4O": "a.zip", "OCH4": "b.zip"})
    with pytest.raises(ValueError, match="checkpoint for 'CH4O' must be a path, got 3"):
        get_generator("rl_policy", checkpoint={"CH4O": 3})


# ---------------------------------------------------------------- a results directory keeps its settings


def test_rerun_with_other_settings_never_replaces_finished_results(tmp_path, capsys):
    """OUT remembers its settings: other --n/--seeds/options are refused (naming them) unless --overwrite; the
    same settings resume; adding a generator resumes too, dropping one is refused."""
    from molgym.cli import main

    out = tmp_path / "run"

    def bench(*extra: str, generators: str = "qm9", n: str = "1") -> int:
        return main(["bench", "--suite", "quick", "--tasks", "CH4O", "--seeds", "0", "--potential", "xtb",
                     "--workers", "1", "--no-report", "--generators", generators, "--n", n, "--out", str(out),
                     *extra])

    def stamps() -> dict:
        return {p.name: p.stat().st_mtime_ns for p in (out / "jobs").glob("*.json")}

    assert bench() == 0
    assert json.loads((out / "settings.json").read_text())["n_samples"] == 1
    first = stamps()
    capsys.readouterr()
    for kwargs, extra, named in [({"n": "2"}, (), "n_samples"), ({}, ("--seeds", "0,1"), "seeds"),
                                 ({}, ("--tasks", "CH4O,C2H2O2"), "tasks"),
                                 ({}, ("--potential", "gfn1-xtb"), "potential")]:
        assert bench(*extra, **kwargs) == 2
        err = capsys.readouterr().err
        assert named in err and "--overwrite" in err and "Traceback" not in err, err
        assert stamps() == first
    assert bench() == 0 and stamps() == first  # same settings: resumes, nothing rerun

    both = "qm9,random_search"
    assert bench("--option", "random_search.steps=0", generators=both) == 0  # adding a generator resumes
    now = stamps()
    assert now["qm9__CH4O__seed0.json"] == first["qm9__CH4O__seed0.json"] and len(now) == 2
    capsys.readouterr()
    assert bench("--option", "random_search.steps=1", generators=both) == 2
    assert "random_search" in capsys.readouterr().err
    assert bench() == 2  # random_search's results would drop out of results.json
    assert "random_search" in capsys.readouterr().err
    assert stamps() == now

    assert bench("--overwrite", n="2") == 0  # starts fresh
    assert json.loads((out / "results.json").read_text())["n_samples"] == 2
    assert list(stamps()) == ["qm9__CH4O__seed0.json"] and not list((out / "samples").glob("random_search*"))


def test_elements_missing_from_the_potential_fail_before_any_job(tmp_path, tiny_mace_file):
    from molgym.benchmark.runner import run_suite

    suite = Suite(name="elements-test", version="0", description="", tasks=("CH4O", "CH3Cl"), n_samples=1,
                  seeds=(0,), relax_steps=0, referee_sample=0)
    with pytest.raises(ValueError, match=r"tiny\.model.*task 'CH3Cl' needs Cl") as err:
        run_suite(suite, ["qm9"], tmp_path, potential=str(tiny_mace_file), workers=1, progress=False)
    assert "H, C, N, O, F" in str(err.value)
    assert not (tmp_path / "jobs").exists()


def test_unknown_generator_options_name_the_allowed_ones(tmp_path, capsys):
    from molgym.cli import main

    out = tmp_path / "never"
    argv = ["bench", "--potential", "xtb", "--no-report", "--out", str(out)]
    assert main(argv + ["--option", "random_search.bogus=4"]) == 2
    err = capsys.readouterr().err
    assert "'bogus'" in err and "tries" in err and "steps" in err and "Traceback" not in err
    assert main(argv + ["--option", "simgen.steps=4"]) == 2  # not a generator of this run
    assert "simgen" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="unknown option 'oops' for generator 'qm9'; allowed: potential"):
        get_generator("qm9", oops=1)
