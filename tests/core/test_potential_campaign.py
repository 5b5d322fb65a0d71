"""The reward potential's resumable training campaign (molgym.training.campaign) and the card comparison that
decides whether a new default ships."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from molgym.potentials.card import card_rows, compare_summaries
from molgym.training import campaign as cg
from molgym.training.study import StudyVariant


def _summary(scale: float, rho: float = 0.96) -> dict:
    return {"qm9_test_energy_mae_meV": {"equilibrium": 400 * scale, "thermal": 380 * scale},
            "qm9_test_force_mae_meV_per_A": {"equilibrium": 110 * scale},
            "nonqm9_energy_mae_meV": {"equilibrium": 700 * scale}, "nonqm9_force_mae_meV_per_A": {},
            "build_reward_mae_meV": 400 * scale, "alternatives_spearman_mean": rho, "isomer_spearman": 0.93,
            "diatomics_repulsive_wall_monotonic": "14/15"}


def test_a_new_default_must_be_better_on_every_row():
    old = _summary(1.0)
    better = compare_summaries(_summary(0.2), old)
    assert better["better_everywhere"]
    rows = {r["row"]: r for r in better["rows"]}
    assert rows["QM9 equilibrium energy MAE (meV)"]["meets_interim_goal"]  # 80 <= 100
    assert rows["non-QM9 equilibrium energy MAE (meV)"]["new"] == pytest.approx(140.0)
    worse_rank = compare_summaries(_summary(0.2, rho=0.90), old)
    assert not worse_rank["better_everywhere"]  # one row worse is enough to keep the shipped model
    assert [r["row"] for r in worse_rank["rows"] if r["better"] is False] == ["alternative placements Spearman"]
    assert not compare_summaries(old, old)["better_everywhere"]  # equal errors are not better
    assert ("diatomic repulsive walls monotonic (pairs)", 14.0, False) in card_rows(old)


def test_campaign_sessions_resume_from_the_committed_state(tmp_path, tiny_dataset):
    """Two sessions in fresh work directories (as on two machines): the second starts from the checkpoint the
    first committed; the state records both; a different dataset or a second start is refused."""
    data, _ = tiny_dataset
    state = tmp_path / "state"
    variant = StudyVariant("tiny", changes="8 channels (test)", num_channels=8)
    cg.start_campaign(state, variant, data, max_epochs=500)
    with pytest.raises(FileExistsError, match="already running"):
        cg.start_campaign(state, variant, data)
    first = cg.run_session(state, data, tmp_path / "work1", time_limit=1e-3, threads=1, progress=lambda m: None)
    assert first["epoch_before"] is None and first["epoch_after"] >= 0 and first["stopped_by_time_limit"]
    assert (state / cg.CHECKPOINT_FILE).is_file()
    from molgym.potentials.registry import sha256_of

    assert sha256_of(state / cg.MODEL_FILE) == first["model_sha256"] == sha256_of(tmp_path / "work1" / "model.model")
    rows = {r["row"]: r for r in first["against_shipped"]["rows"]}
    from molgym.potentials.registry import shipped_model_card

    shipped = shipped_model_card("default")["summary"]["qm9_test_energy_mae_meV"]["equilibrium"]
    assert rows["QM9 equilibrium energy MAE (meV)"]["old"] == pytest.approx(shipped, abs=0.01)  # the shipped card
    messages = []
    second = cg.run_session(state, data, tmp_path / "work2", time_limit=1e-3, threads=1, evaluate=False,
                            progress=messages.append)
    assert messages == [f"campaign: resuming from the committed checkpoint (epoch {first['epoch_after']})"]
    assert second["epoch_before"] == first["epoch_after"] and second["epoch_after"] >= first["epoch_after"]
    saved = json.loads((state / cg.CAMPAIGN_FILE).read_text())
    assert len(saved["sessions"]) == 2 and saved["epoch"] == second["epoch_after"]
    assert saved["cpu_seconds"] == pytest.approx(first["cpu_seconds"] + second["cpu_seconds"], abs=0.2)
    # the campaign's model card counts every session (a campaign without a warm start: sessions only)
    from molgym.potentials.card import write_model_card

    with pytest.raises(ValueError, match="not both"):
        write_model_card(state / cg.MODEL_FILE, data, train_dir=tmp_path / "work2", campaign=state, out=tmp_path)
    write_model_card(state / cg.MODEL_FILE, data, campaign=state, out=tmp_path / "card", name="campaign")
    card = json.loads((tmp_path / "card" / "campaign.json").read_text())
    assert len(card["training"]["campaign"]["sessions"]) == 2
    assert card["training"]["epochs_trained"] == second["epoch_after"] + 1
    assert card["training"]["wall_seconds"] == pytest.approx(first["wall_seconds"] + second["wall_seconds"], abs=0.2)
    assert "molgym potential campaign" in card["reproduce"] and f"--campaign {state}" in card["reproduce"]

    # a new campaign warm-started from the first campaign's model (same architecture) ...
    warm = tmp_path / "warm"
    cg.start_campaign(warm, variant, data, warm_start=tmp_path / "work1" / "model.model")
    messages.clear()
    cg.run_session(warm, data, tmp_path / "work-warm", time_limit=1e-3, threads=1, evaluate=False,
                   progress=messages.append)
    assert any(m.startswith("campaign: warm start from") for m in messages)
    # ... while the shipped default (32 channels) does not fit an 8-channel campaign
    from molgym.potentials.registry import MODELS_DIR

    wrong = tmp_path / "wrong"
    cg.start_campaign(wrong, variant, data, warm_start=MODELS_DIR / "default.model")
    shipped_training = json.loads((MODELS_DIR / "default.json").read_text())["training"]
    recorded_warm = json.loads((wrong / cg.CAMPAIGN_FILE).read_text())["warm_start"]
    assert recorded_warm["model"] == "molgym/potentials/models/default.model"  # relative to the repository
    recorded = recorded_warm["training"]
    assert (recorded["wall_seconds"], recorded["epochs_trained"]) == (shipped_training["wall_seconds"],
                                                                      shipped_training["epochs_trained"])
    with pytest.raises(ValueError, match="has shape"):
        cg.run_session(wrong, data, tmp_path / "work-wrong", time_limit=1e-3, threads=1, evaluate=False)
    with pytest.raises(FileNotFoundError, match="warm-start model"):
        cg.start_campaign(tmp_path / "w2", variant, data, warm_start=tmp_path / "missing.model")
    # a warm-start model replaced after the campaign started is refused, not silently used
    replaced = tmp_path / "replaced"
    cg.start_campaign(replaced, variant, data, warm_start=tmp_path / "work1" / "model.model")
    campaign = json.loads((replaced / cg.CAMPAIGN_FILE).read_text())
    campaign["warm_start"]["sha256"] = "0" * 64
    (replaced / cg.CAMPAIGN_FILE).write_text(json.dumps(campaign))
    with pytest.raises(ValueError, match="replaced since; start a new campaign"):
        cg.run_session(replaced, data, tmp_path / "work-replaced", time_limit=1e-3, threads=1, evaluate=False)

    other = tmp_path / "other-data"
    shutil.copytree(data, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["counts"]["train"]["total"] += 1
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="is not the dataset this campaign trains on"):
        cg.run_session(state, other, tmp_path / "work3", time_limit=1.0)
    with pytest.raises(FileNotFoundError, match="no campaign in"):
        cg.run_session(tmp_path / "nothing", data, tmp_path / "work4", time_limit=1.0)


def test_gpu_recipe_cpu_path_writes_model_and_card(tmp_path, tiny_dataset):
    """The GPU recipe's CPU path on the tiny dataset: time-boxed training, then a card beside the model (not the
    shipped one), with the comparison to the shipped default."""
    from molgym.training import gpu_recipe

    data, _ = tiny_dataset
    messages = []
    summary = gpu_recipe.run_recipe(data, tmp_path / "gpu", minutes=0.6, card_minutes=0.5, device="cpu",
                                    architecture="tiny", batch_size=8, state=tmp_path / "no-campaign",
                                    progress=messages.append)
    assert summary["configuration"] == "tiny" and summary["device"] == "cpu"
    card = json.loads((tmp_path / "gpu" / "card" / "gpu.json").read_text())
    assert card["file"] == "gpu.model" and (tmp_path / "gpu" / "card" / "gpu.model").is_file()
    assert "GPU recipe" in card["notes"][0] and card["summary"]["qm9_test_energy_mae_meV"]["equilibrium"] > 0
    assert any("Better than the shipped default on every row" in m for m in messages)
    assert gpu_recipe.main(["--data", str(data), "--out", str(tmp_path / "x"), "--minutes", "1",
                            "--card-minutes", "2", "--device", "cpu"]) == 2
    assert gpu_recipe.main(["--data", str(data), "--out", str(tmp_path / "x"), "--architecture", "huge",
                            "--device", "cpu"]) == 2


def test_committed_campaign_accepts_a_default_dataset_built_today(tmp_path):
    """The committed campaign state recorded the `default` dataset's settings before `extra_train_molecules`
    existed; a `default` dataset built by today's builder (which writes that setting as 0) is the same dataset."""
    from molgym.data.dataset_config import SIZES

    committed = json.loads((cg.STATE_DIR / cg.CAMPAIGN_FILE).read_text())["data"]
    data = tmp_path / "data"
    data.mkdir()
    manifest = {"settings": SIZES["default"].as_dict(), "counts": {"train": {"total": committed["train_structures"]}}}
    assert manifest["settings"]["extra_train_molecules"] == 0
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert cg._data_fingerprint(data) == committed
    manifest["settings"]["extra_train_molecules"] = 50  # grown data changes the train set, which is refused
    manifest["counts"]["train"]["total"] += 400
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert cg._data_fingerprint(data) != committed


def test_a_session_commits_its_last_epoch_not_only_its_best(tmp_path, tiny_dataset):
    """mace alone checkpoints only epochs that lower the validation loss; the campaign must resume from the last
    epoch it trained, or each session would throw away the epochs after its best one. At this learning rate the
    validation loss of the tiny model is lowest at epoch 2 of 0-4 (measured), so the best epoch is not the last."""
    data, _ = tiny_dataset
    state = tmp_path / "state"
    variant = StudyVariant("tiny-hot", changes="8 channels, lr 0.3 (test)", num_channels=8, lr=0.3)
    cg.start_campaign(state, variant, data, max_epochs=5)
    session = cg.run_session(state, data, tmp_path / "work", time_limit=600.0, threads=1, evaluate=False,
                             progress=lambda m: None)
    trained = [p["epoch"] for p in session["curve"]]
    assert trained and session["epoch_after"] == max(trained) == 4
    last = tmp_path / "work" / "checkpoints" / "model_run-0_epoch-4.pt"
    assert (state / cg.CHECKPOINT_FILE).read_bytes() == last.read_bytes()


def test_stage_two_continues_across_sessions(tmp_path, tiny_dataset, capsys):
    """After :func:`begin_stage_two` the sessions train mace's stage two (its loss weights, SWA) from the next epoch,
    and a later session in a fresh work directory resumes stage two from the committed ``_swa`` checkpoint."""
    data, _ = tiny_dataset
    state = tmp_path / "state"
    variant = StudyVariant("tiny", changes="8 channels (test)", num_channels=8)
    cg.start_campaign(state, variant, data, max_epochs=2)
    with pytest.raises(ValueError, match="no committed epoch"):
        cg.begin_stage_two(state)
    cg.run_session(state, data, tmp_path / "work1", time_limit=600.0, threads=1, evaluate=False,
                   progress=lambda m: None)
    with pytest.raises(ValueError, match="stage_two_energy_weight must be > 0, got 0"):
        cg.begin_stage_two(state, energy_weight=0)
    two = cg.begin_stage_two(state, energy_weight=100.0, forces_weight=10.0, lr=1e-3)
    assert two == {"from_epoch": 2, "energy_weight": 100.0, "forces_weight": 10.0, "lr": 1e-3}
    assert cg.begin_stage_two(state, energy_weight=100.0, forces_weight=10.0, lr=1e-3) == two  # same: a no-op
    with pytest.raises(ValueError, match="stage_two_lr must be > 0, got -0.01"):
        cg.begin_stage_two(state, energy_weight=100.0, forces_weight=10.0, lr=-0.01)
    from molgym.cli import main

    common = ["potential", "campaign", "--data", str(data), "--work", str(tmp_path / "w"), "--time-limit", "1"]
    assert main(common + ["--state", str(tmp_path / "new"), "--variant", "base", "--stage-two"]) == 2
    assert not (tmp_path / "new").exists()  # refused before a campaign was started
    assert "start it with --variant first" in capsys.readouterr().err
    assert main(common + ["--state", str(state), "--stage-two", "--stage-two-weights", "100", "10",
                          "--stage-two-lr", "0"]) == 2
    assert "stage_two_lr must be > 0, got 0" in capsys.readouterr().err
    before = (state / cg.CAMPAIGN_FILE).read_text()
    wrong = ["potential", "campaign", "--data", str(tmp_path / "nowhere"), "--work", str(tmp_path / "w"),
             "--time-limit", "1", "--state", str(state), "--stage-two", "--stage-two-weights", "100", "40"]
    assert main(wrong) == 2 and "is not a finished molgym dataset" in capsys.readouterr().err
    assert (state / cg.CAMPAIGN_FILE).read_text() == before  # a wrong --data records no re-weighting

    def grow(epochs):  # a longer campaign (the test's stand-in for max_epochs 5000)
        campaign = json.loads((state / cg.CAMPAIGN_FILE).read_text())
        campaign["max_epochs"] = epochs
        (state / cg.CAMPAIGN_FILE).write_text(json.dumps(campaign))

    grow(4)
    quick = cg.run_session(state, data, tmp_path / "work2a", time_limit=1e-3, threads=1, evaluate=False,
                           progress=lambda m: None)  # one epoch, still stage one: the stage-one model is written
    assert quick["epoch_after"] == 1 and quick["stopped_by_time_limit"]
    assert (tmp_path / "work2a" / "model.model").is_file() and not (tmp_path / "work2a" / "model_stagetwo.model").exists()
    second = cg.run_session(state, data, tmp_path / "work2", time_limit=600.0, threads=1, evaluate=False,
                            progress=lambda m: None)
    assert (second["epoch_before"], second["epoch_after"]) == (1, 3)
    work2 = tmp_path / "work2"
    assert (work2 / "model_stagetwo.model").is_file()
    assert (state / cg.CHECKPOINT_FILE).read_bytes() == (work2 / "checkpoints" / "model_run-0_epoch-3_swa.pt").read_bytes()
    args = json.loads((work2 / "train_settings.json").read_text())["mace_arguments"]
    assert args[args.index("--stage_two_energy_weight") + 1] == "100.0"
    # new loss weights and a lower learning rate from the next epoch; the earlier ones stay on record
    reweighted = cg.begin_stage_two(state, energy_weight=100.0, forces_weight=40.0, lr=5e-4)
    assert reweighted == {"from_epoch": 2, "energy_weight": 100.0, "forces_weight": 40.0, "lr": 5e-4,
                          "reweighted_from": 4, "earlier": [{"until_epoch": 3, "energy_weight": 100.0,
                                                             "forces_weight": 10.0, "lr": 1e-3}]}
    grow(5)  # a fresh work directory resumes stage two; stopped by the time limit, it still writes its model
    messages = []
    third = cg.run_session(state, data, tmp_path / "work3", time_limit=1e-3, threads=1, evaluate=False,
                           progress=messages.append)
    assert messages == ["campaign: resuming from the committed checkpoint (epoch 3)"]
    assert third["stopped_by_time_limit"] and (third["epoch_before"], third["epoch_after"]) == (3, 3)
    assert (tmp_path / "work3" / "model_stagetwo.model").is_file()
    args = json.loads((tmp_path / "work3" / "train_settings.json").read_text())["mace_arguments"]
    assert args[args.index("--stage_two_forces_weight") + 1] == "40.0"
    # mace takes the rate from the checkpoint it resumes (not from --stage_two_lr): the new one was put there
    resumed = torch.load(tmp_path / "work3" / "checkpoints" / "model_run-0_epoch-3_swa.pt", weights_only=False)
    assert {(g["lr"], g["swa_lr"]) for g in resumed["optimizer"]["param_groups"]} == {(5e-4, 5e-4)}
    committed = torch.load(work2 / "checkpoints" / "model_run-0_epoch-3_swa.pt", weights_only=False)
    assert {(g["lr"], g["swa_lr"]) for g in committed["optimizer"]["param_groups"]} == {(1e-3, 1e-3)}
