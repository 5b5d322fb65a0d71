"""Rewards, invalid placements, arguments, start canvases, bags, solvation, rendering, export, best-known."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from ase import Atoms

from molgym.envs import MultiBagEnv, SingleBagEnv, SolvationEnv, StochasticBagEnv, random_valid_action
from molgym.envs.bags import is_closed_shell_feasible
from molgym.reward import interaction_reward, isolated_atom_energies


def test_rewards_are_the_interaction_energy_and_sum_to_the_atomisation_energy(counting_potential, tiny_potential):
    env = SingleBagEnv(formula="C2H6O", potential=counting_potential)
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    rewards, energies = [], [0.0]
    while True:
        before = len(counting_potential.calls)
        _, reward, terminated, truncated, info = env.step(random_valid_action(env, rng))
        assert len(counting_potential.calls) - before == (0 if info["n_atoms"] == 1 else 1)  # one call per step
        assert not info["invalid"], info["invalid_reason"]
        canvas = env.canvas
        e_after = float(tiny_potential.energies([canvas])[0])
        e_atom = isolated_atom_energies(tiny_potential, [int(canvas.numbers[-1])])[int(canvas.numbers[-1])]
        assert info["energy"] == pytest.approx(e_after, abs=1e-8)
        assert reward == pytest.approx(float(interaction_reward(e_after, energies[-1], e_atom)), abs=1e-8)
        assert info["reward_interaction"] == pytest.approx(reward) and info["reward_invalid"] == 0.0
        rewards.append(reward)
        energies.append(e_after)
        if terminated:
            break
    atoms = env.canvas
    e_atoms = isolated_atom_energies(tiny_potential, atoms.numbers)
    atomisation = sum(e_atoms[int(z)] for z in atoms.numbers) - energies[-1]
    assert sum(rewards) == pytest.approx(atomisation, abs=1e-6)
    assert info["episode_return"] == pytest.approx(atomisation, abs=1e-6)
    assert info["formula"] == "C2H6O" and rewards[0] == 0.0


@pytest.mark.parametrize(
    "action, reason",
    [
        ([1, 0.3, 0.0, 0.0], "too close"),
        ([1, -0.5, 3.0, 0.0], "terminal atom too far"),  # H > 3 Å from both heavy atoms
        ([2, 1.4, 0.0, 0.0], "not in the bag"),  # the only O is already placed
        ([0, np.nan, 0.0, 0.0], "non-finite"),
        ([0, np.inf, 0.0, 0.0], "non-finite"),
        ([7, 1.4, 0.0, 0.0], "outside 0..2"),
        ([0, 9.0, 0.0, 0.0], "outside the workspace"),
    ],
)
def test_invalid_placements_end_the_episode_with_the_penalty(action, reason, tiny_potential):
    env = SingleBagEnv(formula="CH4O", potential=tiny_potential, invalid_reward=-2.5)
    env.reset(seed=0)
    env.step(np.array([2, 0.0, 0.0, 0.0]))  # O at the origin
    env.step(np.array([0, 1.4, 0.0, 0.0]))  # C bonded to it
    obs, reward, terminated, truncated, info = env.step(np.array(action, dtype=float))
    assert terminated and not truncated and reward == -2.5
    assert info["invalid"] and reason in info["invalid_reason"]
    assert info["reward_invalid"] == -2.5
    assert info["episode_return"] == pytest.approx(-2.5 + sum(env.canvas.arrays["placement_reward"]))
    assert obs["mask"].sum() == 2  # the canvas is unchanged
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0, 1.4, 0.0, 0.0]))


def test_a_step_below_min_reward_gets_the_floor_and_ends_the_episode(tiny_potential):
    """MolGym's floor: a placement scoring below min_reward gets min_reward and ends the episode; the atom stays
    placed. The floor is set just above the squeezed H's own reward, below the earlier steps' rewards."""
    squeeze = [np.array([2, 0.0, 0.0, 0.0]), np.array([0, 1.4, 0.0, 0.0]), np.array([1, 0.7, 0.62, 0.0])]

    def play(min_reward):
        env = SingleBagEnv(formula="CH4O", potential=tiny_potential, min_reward=min_reward)
        env.reset(seed=0)
        return env, [env.step(a) for a in squeeze]

    _, steps = play(None)  # no floor: the potential's own rewards
    raw = steps[-1][1]
    assert not steps[-1][2] and steps[-1][4]["reward_floor"] == 0.0
    floor = raw + 0.01
    assert min(s[1] for s in steps[:-1]) > floor  # the precondition of this test: only the squeeze is floored
    env, steps = play(floor)
    obs, reward, terminated, truncated, info = steps[-1]
    assert reward == pytest.approx(floor) and terminated and not truncated
    assert info["terminated_by"] == "min_reward" and not info["invalid"]
    assert info["reward_interaction"] == pytest.approx(raw) and info["reward_floor"] == pytest.approx(0.01)
    assert obs["mask"].sum() == 3 and len(env.canvas) == 3  # the atom was placed
    assert info["episode_return"] == pytest.approx(sum(s[1] for s in steps))
    _, steps = play(raw - 0.01)  # above the floor: untouched
    assert steps[-1][1] == pytest.approx(raw) and not steps[-1][2] and steps[-1][4]["reward_floor"] == 0.0


@pytest.mark.parametrize("value", [float("nan"), float("-inf"), "low"])
def test_min_reward_must_be_a_finite_number_or_none(value, tiny_potential):
    with pytest.raises(ValueError, match="min_reward must be a finite number of eV or None"):
        SingleBagEnv(formula="CH4O", potential=tiny_potential, min_reward=value)


def test_action_mask_and_dict_actions(tiny_potential):
    env = SingleBagEnv(formula="CH4O", potential=tiny_potential)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.action_masks(), [True, True, True])
    _, _, _, _, info = env.step({"element": 2, "position": [0.0, 0.0, 0.0]})
    np.testing.assert_array_equal(env.action_masks(), [True, True, False])
    np.testing.assert_array_equal(info["action_mask"], [True, True, False])
    assert env.bag == {"C": 1, "H": 4}


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: SingleBagEnv(formula="c2h6", potential=p), "formula='c2h6'"),
        (lambda p: SingleBagEnv(formula="Xx2", potential=p), "formula='Xx2'"),
        (lambda p: SingleBagEnv(formula="H", potential=p), "at least 2"),
        (lambda p: SingleBagEnv(formula="CH4", potential=p, render_mode="human"), "render_mode"),
        (lambda p: SingleBagEnv(formula="CH4", potential=p, workspace=-1), "workspace"),
        (lambda p: SingleBagEnv(formula="CH4", potential=p, elements=["C"]), "misses"),
        (lambda p: SingleBagEnv(formula="CH4", potential=p, bogus=1),
         r"SingleBagEnv: unknown argument\(s\) 'bogus'; allowed: formula, elements, potential, workspace"),
        (lambda p: SolvationEnv(solute="C", potential=p, max_atoms=3), "allowed: solute, solvent, n_solvent"),
        (lambda p: SingleBagEnv(formula="CH4", potential="no-such-potential"), "unknown potential"),
        (lambda p: SingleBagEnv(formula="CH4Cl", potential=p), "does not cover Cl"),
        (lambda p: MultiBagEnv(formulas=[], potential=p), "formulas"),
        (lambda p: MultiBagEnv(formulas="CH4", potential=p), "formulas"),
        (lambda p: StochasticBagEnv(template="C2H6O", size_range=(5, 3), potential=p), "size_range"),
        (lambda p: StochasticBagEnv(template="C2H6O", size_range=(1, 1), potential=p), "size_range"),
        (lambda p: StochasticBagEnv(template="C2", size_range=(2, 2), potential=p), "no closed-shell"),
        (lambda p: SolvationEnv(solute="not a smiles((", potential=p), "SMILES"),
        (lambda p: SolvationEnv(solute="C", n_solvent=0, potential=p), "n_solvent"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, match, tiny_potential):
    with pytest.raises(ValueError, match=match):
        make(tiny_potential)


def test_default_potential_missing_says_so(tmp_path, monkeypatch):
    """An installation without the shipped model (simulated: an empty models folder) gets a clear error."""
    from molgym.envs.potentials import clear_potential_cache
    from molgym.potentials import ModelNotAvailableError, registry

    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    clear_potential_cache()
    with pytest.raises(ModelNotAvailableError, match="default"):
        gym.make("MolGym/SingleBag-v0", formula="CH4O")
    clear_potential_cache()


def test_default_potential_loads_the_shipped_model():
    from molgym.potentials import shipped_model_card

    env = gym.make("MolGym/SingleBag-v0", formula="CH4O")
    assert env.unwrapped.potential.name == "MACE(default)"
    assert env.unwrapped.potential.species == frozenset({1, 6, 7, 8, 9})
    assert shipped_model_card("default")["file"] == "default.model"


def test_envs_share_one_loaded_potential(tiny_model_path):
    a = SingleBagEnv(formula="CH4O", potential=tiny_model_path)
    b = MultiBagEnv(formulas=["CH4O"], potential=tiny_model_path)
    assert a.potential is b.potential


def test_start_from_a_partial_canvas(tiny_potential):
    env = SingleBagEnv(formula="CH4O", potential=tiny_potential)
    canvas = Atoms("CO", positions=[[0, 0, 0], [1.43, 0, 0]])
    obs, info = env.reset(seed=0, options={"canvas": canvas})
    assert env.bag == {"H": 4}
    assert obs["mask"].sum() == 2 and list(obs["atomic_numbers"][:2]) == [6, 8]
    assert info["energy"] == pytest.approx(float(tiny_potential.energies([canvas])[0]))
    _, reward, _, _, info = env.step(random_valid_action(env, np.random.default_rng(0)))
    assert not info["invalid"] and reward != 0.0
    with pytest.raises(ValueError, match="contains N"):
        env.reset(options={"canvas": Atoms("N", positions=[[0, 0, 0]])})
    with pytest.raises(ValueError, match="not part of"):
        env.reset(options={"canvas": Atoms("CC", positions=[[0, 0, 0], [1.5, 0, 0]])})
    with pytest.raises(ValueError, match="whole bag"):
        from ase.build import molecule

        env.reset(options={"canvas": molecule("CH3OH")})
    # a start canvas obeys the rules every step obeys: no fused atoms, no stray H
    with pytest.raises(ValueError, match=r"breaks the placement rules: atoms 0 and 1 are 0.10 Å apart"):
        env.reset(options={"canvas": Atoms("CO", positions=[[0, 0, 0], [0.1, 0, 0]])})
    with pytest.raises(ValueError, match="terminal atom 1 is 3.00 Å from the nearest heavy atom"):
        env.reset(options={"canvas": Atoms("CH", positions=[[0, 0, 0], [3.0, 0, 0]])})
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"canvass": canvas})
    multi = MultiBagEnv(formulas=["CH4O", "C2H2O2"], potential=tiny_potential)
    for seed in range(4):
        _, info = multi.reset(seed=seed, options={"formula": "C2H2O2"})
        assert info["task_formula"] == "C2H2O2"


def test_stochastic_bags_are_closed_shell_and_seeded(tiny_potential):
    assert is_closed_shell_feasible({"H": 2}) and is_closed_shell_feasible({"C": 2, "H": 2})
    assert not is_closed_shell_feasible({"C": 1, "H": 3})  # odd electron count
    assert not is_closed_shell_feasible({"C": 2})  # would need a quadruple bond
    assert not is_closed_shell_feasible({"C": 1, "H": 6})  # not enough valence for six H
    assert not is_closed_shell_feasible({"O": 1})
    env = StochasticBagEnv(template="C7H8N2O2", size_range=(6, 12), potential=tiny_potential)
    bags = []
    for seed in range(30):
        env.reset(seed=seed)
        bag = env.bag
        assert 6 <= sum(bag.values()) <= 12 and is_closed_shell_feasible(bag)
        electrons = sum({"C": 6, "H": 1, "N": 7, "O": 8}[s] * n for s, n in bag.items())
        assert electrons % 2 == 0
        bags.append(bag)
    assert len({tuple(sorted(b.items())) for b in bags}) > 5
    env.reset(seed=3)
    assert env.bag == bags[3]


def test_stochastic_bags_hold_out_excluded_formulas_and_play_a_given_bag(tiny_potential):
    from molgym.chem import format_formula

    free = StochasticBagEnv(template="C2H6O", size_range=(3, 6), potential=tiny_potential)
    drawn = set()
    for seed in range(60):
        free.reset(seed=seed)
        drawn.add(format_formula(free.bag))
    held = sorted(drawn)[:2]
    env = StochasticBagEnv(template="C2H6O", size_range=(3, 6), exclude=held, potential=tiny_potential)
    assert env.exclude == frozenset(held)
    for seed in range(60):
        env.reset(seed=seed)
        assert format_formula(env.bag) not in held
    _, info = env.reset(seed=0, options={"bag": held[0]})  # a held-out bag is playable on request
    assert format_formula(env.bag) == held[0] and info["task_formula"] == held[0]
    for bag, match in (("C2H6S", "places only"), ("C3H8O", "at most"), ("CH3", "closed-shell"), ("X", "valid")):
        with pytest.raises(ValueError, match=match):
            env.reset(seed=0, options={"bag": bag})
    with pytest.raises(ValueError, match="exclude: C3H8O has 12 atoms"):
        StochasticBagEnv(template="C2H6O", size_range=(3, 6), exclude=["C3H8O"], potential=tiny_potential)
    with pytest.raises(ValueError, match="list of formulas"):
        StochasticBagEnv(template="C2H6O", size_range=(3, 6), exclude="CH4O", potential=tiny_potential)
    with pytest.raises(ValueError, match="outside exclude"):
        StochasticBagEnv(template="H2", size_range=(2, 2), exclude=["H2"], potential=tiny_potential)
    # a held-out bag is checked before the potential loads: the bag's error, not the missing model file's
    with pytest.raises(ValueError, match="exclude: C2H6S has S"):
        StochasticBagEnv(template="C2H6O", size_range=(3, 6), exclude=["C2H6S"], potential="/no/such/model.model")


def test_solvation_refills_the_bag_and_penalises_distance(tiny_potential):
    env = SolvationEnv(solute="C", solvent="H2O", n_solvent=2, potential=tiny_potential, max_solute_distance=2.0,
                       distance_penalty=0.5)
    obs, info = env.reset(seed=0)
    assert obs["mask"].sum() == 5 and env.bag == {"H": 2, "O": 1}
    assert info["best_known_return"] is None and info["solvent_molecules_left"] == 2
    # first water's O 3.5 Å from the origin: it pays 0.5 eV/Å beyond 2 Å from the nearest solute atom
    nearest = float(np.linalg.norm(env.solute.positions - [3.5, 0.0, 0.0], axis=1).min())
    assert nearest > 2.0
    _, reward, terminated, _, info = env.step(np.array([1, 3.5, 0.0, 0.0]))
    assert info["reward_distance"] == pytest.approx(-0.5 * (nearest - 2.0))
    assert reward == pytest.approx(info["reward_interaction"] + info["reward_distance"])
    env.step(np.array([0, 3.5, 0.96, 0.0]))
    _, _, terminated, _, _ = env.step(np.array([0, 3.5, -0.3, 0.92]))
    assert not terminated and env.bag == {"H": 2, "O": 1}  # refilled with the second molecule
    rng = np.random.default_rng(0)
    for _ in range(3):
        _, _, terminated, _, info = env.step(random_valid_action(env, rng))
    assert terminated and not info["invalid"] and env.canvas.get_chemical_formula() == "CH8O2"


def test_render_rgb_and_ansi(tiny_potential):
    env = SingleBagEnv(formula="CH4O", potential=tiny_potential, render_mode="rgb_array")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(3):
        env.step(random_valid_action(env, rng))
    image = env.render()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # atoms and bonds drawn, not a blank picture
    text = SingleBagEnv(formula="CH4O", potential=tiny_potential, render_mode="ansi")
    text.reset(seed=0)
    text.step(np.array([0, 0.0, 0.0, 0.0]))
    out = text.render()
    assert "canvas C" in out and "bag H4O" in out and " C " in out


def test_export_trajectory_and_molecule_to_extxyz(tmp_path, tiny_potential):
    import ase.io

    env = SingleBagEnv(formula="CH4O", potential=tiny_potential)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    rewards = []
    while True:
        _, reward, terminated, _, _ = env.step(random_valid_action(env, rng))
        rewards.append(reward)
        if terminated:
            break
    env.write_trajectory(tmp_path / "traj.xyz")
    env.write_molecule(tmp_path / "mol.xyz")
    frames = ase.io.read(tmp_path / "traj.xyz", index=":")
    assert len(frames) == len(rewards) + 1 and len(frames[-1]) == 6
    assert [f.info["reward"] for f in frames[1:]] == pytest.approx(rewards)
    molecule = ase.io.read(tmp_path / "mol.xyz")
    assert molecule.get_chemical_formula() == "CH4O"
    np.testing.assert_allclose(molecule.arrays["placement_reward"], rewards, rtol=1e-5, atol=1e-7)
    assert molecule.info["episode_return"] == pytest.approx(sum(rewards))


def test_best_known_lookup_and_unknown(tmp_path, tiny_model_path, tiny_potential):
    from molgym.best_known import best_known, potential_identity, update_table
    from molgym.potentials.mace import MACEPotential
    from molgym.potentials.mace_arch import build_untrained_mace

    env = SingleBagEnv(formula="CH4O", potential=tiny_potential)
    _, info = env.reset(seed=0)
    assert info["best_known_return"] is None and "unknown" in info["best_known"]
    name, sha = potential_identity(tiny_potential)
    assert len(sha) == 64
    in_memory = MACEPotential(tiny_potential.model, device="cpu")
    assert potential_identity(in_memory) is None  # no file, no identity, never a wrong value
    table = tmp_path / "best.json"
    update_table([{"formula": "CH4O", "return": 12.5, "potential": name, "model_sha256": sha, "method": "test",
                   "date": "2026-01-01T00:00:00Z"}], table)
    found = best_known("CH4O", tiny_potential, path=table)
    assert found is not None and found.value == 12.5 and found.model_sha256 == sha
    assert best_known("C3H8O", tiny_potential, path=table) is None
    assert json.loads(table.read_text())["format"] == 1


def test_shipped_best_known_table_has_provenance():
    from molgym.best_known import BEST_KNOWN_PATH, load_table

    entries = load_table(BEST_KNOWN_PATH)
    assert entries, "the shipped table is empty"
    for entry in entries:
        assert {"formula", "return", "potential", "model_sha256", "method", "date", "command"} <= set(entry)
        assert np.isfinite(entry["return"]) and entry["return"] > 0


def test_xtb_env_reports_the_shipped_best_known_return():
    from molgym.best_known import BEST_KNOWN_PATH, load_table

    if not any(e["potential"] == "GFN2-xTB" and e["formula"] == "CH4O" for e in load_table(BEST_KNOWN_PATH)):
        pytest.skip("no GFN2-xTB value for CH4O in the shipped table")
    env = gym.make("MolGym/SingleBag-v0", formula="CH4O", potential="xtb")
    _, info = env.reset(seed=0)
    assert info["best_known_return"] > 20.0 and "GFN2-xTB" in info["best_known"]


def test_compute_best_known_from_qm9_and_candidates(tmp_path, tiny_potential):
    from molgym.best_known import _embed_candidates, best_known, compute_best_known, update_table
    from molgym.chem import bag_from_numbers

    with pytest.raises(ValueError, match="not C2H6O"):
        _embed_candidates("C2H6O", ["CC"])
    entry = compute_best_known("CH4O", tiny_potential, top_k=1, steps=5, progress=False, candidates=["CO"])
    assert entry["n_qm9_isomers"] == 1 and entry["n_isomers"] == 2 and entry["formula"] == "CH4O"
    assert entry["model_sha256"] and entry["best_smiles"] in ("CO",)
    # the value is the return of building that molecule: sum E(atom) - E(best relaxed)
    e_atoms = isolated_atom_energies(tiny_potential, [6, 1, 1, 1, 1, 8])
    assert entry["return"] == pytest.approx(sum(e_atoms[z] for z in (6, 1, 1, 1, 1, 8)) - entry["best_energy"],
                                            abs=1e-5)
    update_table([entry], tmp_path / "t.json")
    assert best_known("CH4O", tiny_potential, path=tmp_path / "t.json").value == entry["return"]
    assert bag_from_numbers([6, 1, 1, 1, 1, 8]) == {"C": 1, "H": 4, "O": 1}


class _FlakyPotential:
    """Wraps a potential: an SCF failure for any structure of exactly ``fail_size`` atoms, NaN for ``nan_size``."""

    def __new__(cls, inner, fail_size: int, nan_size: int):
        from molgym.potentials.base import Potential, SCFConvergenceError

        class Flaky(Potential):
            name = "flaky"
            species = inner.species

            def energies(self, structures):
                structures = list(structures)
                for i, s in enumerate(structures):
                    if len(s) == fail_size:
                        raise SCFConvergenceError(f"SCF did not converge for structure {i}", index=i)
                out = inner.energies(structures)
                out[[len(s) == nan_size for s in structures]] = np.nan
                return out

            def energies_and_forces(self, structures):
                return inner.energies_and_forces(structures)

        return Flaky()


def test_failed_evaluations_end_only_the_affected_episode(tiny_potential):
    from molgym.envs.vector import MolGymVectorEnv

    flaky = _FlakyPotential(tiny_potential, fail_size=3, nan_size=4)
    env = SingleBagEnv(formula="CH4O", potential=flaky)
    env.reset(seed=0)
    env.step(np.array([2, 0.0, 0.0, 0.0]))
    env.step(np.array([0, 1.4, 0.0, 0.0]))
    _, reward, terminated, _, info = env.step(np.array([1, -0.9, 0.3, 0.0]))  # 3 atoms: SCF failure
    assert terminated and reward == -1.0 and "potential evaluation failed" in info["invalid_reason"]
    assert "SCF" in info["invalid_reason"]

    # In a vector env the failing structure is isolated: the other sub-environments get their rewards.
    venv = MolGymVectorEnv(num_envs=2, env_class=SingleBagEnv, formula="CH4O", potential=flaky)
    venv.reset(seed=0)
    venv.step(np.array([[2, 0, 0, 0], [2, 0, 0, 0]], dtype=np.float32))
    venv.step(np.array([[0, 1.4, 0, 0], [0, 1.4, 0, 0]], dtype=np.float32))
    venv.envs[1]._numbers = venv.envs[1]._numbers[:1]  # make env 1's next structure 2 atoms (valid)
    venv.envs[1]._positions = venv.envs[1]._positions[:1]
    venv.envs[1]._bag["C"] = 1
    venv.envs[1]._energy = isolated_atom_energies(tiny_potential, [8])[8]
    _, rewards, terminated, _, info = venv.step(np.array([[1, -0.9, 0.3, 0], [0, 1.4, 0, 0]], dtype=np.float32))
    assert terminated[0] and rewards[0] == -1.0 and not terminated[1] and not info["invalid"][1]
    # a non-finite energy is invalid too
    env = SingleBagEnv(formula="CH4O", potential=_FlakyPotential(tiny_potential, fail_size=99, nan_size=3))
    env.reset(seed=0)
    env.step(np.array([2, 0.0, 0.0, 0.0]))
    env.step(np.array([0, 1.4, 0.0, 0.0]))
    _, reward, terminated, _, info = env.step(np.array([1, -0.9, 0.3, 0.0]))
    assert terminated and reward == -1.0 and "energy nan" in info["invalid_reason"]
