"""Model cards: the JSON and Markdown that ship next to a MACE model file.

``write_model_card(model, data)`` (CLI: ``molgym potential card``) evaluates the model on the dataset's test
files, copies the model next to the card, and writes ``NAME.json`` (what the registry reads: ``file`` and
``sha256``, plus provenance and every test figure) and ``NAME.md`` (the same, for people). Regenerating the card
is therefore one command, and its numbers always come from :func:`molgym.potentials.evaluation.evaluate_dataset`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

from molgym.io import atomic_path, write_json, write_text
from molgym.potentials.registry import MODELS_DIR, sha256_of

#: Accuracy targets the card reports against (meV, meV/Å, rank correlations).
TARGETS = {
    "energy_mae_meV": 43.0,
    "force_mae_meV_per_A": 50.0,
    "reward_mae_meV": 100.0,
    "alternatives_spearman": 0.95,
    "isomer_spearman": 0.9,
}


#: Interim goals of the reward potential v2 (on the way to :data:`TARGETS`): (row of :func:`card_rows`, limit).
INTERIM_GOALS = {
    "QM9 equilibrium energy MAE (meV)": 100.0,
    "QM9 thermal energy MAE (meV)": 100.0,
    "build-trajectory reward MAE (meV)": 150.0,
    "QM9 equilibrium force MAE (meV/Å)": 80.0,
    "QM9 thermal force MAE (meV/Å)": 80.0,
    "non-QM9 equilibrium energy MAE (meV)": 200.0,
    "alternative placements Spearman": 0.95,
    "C7H10O2 isomer Spearman": 0.9,
}


def card_rows(summary: dict) -> list[tuple[str, float | None, bool]]:
    """The card's comparable rows as ``(label, value, lower_is_better)``: energy and force MAEs per test category,
    non-QM9 errors, the build-reward MAE, the two rank correlations and the diatomic walls (monotonic pairs)."""
    rows: list[tuple[str, float | None, bool]] = []
    names = {"equilibrium": "equilibrium", "thermal": "thermal", "build": "build-prefix", "misplaced": "misplaced",
             "close_contact": "close-contact"}
    for cat, value in summary.get("qm9_test_energy_mae_meV", {}).items():
        rows.append((f"QM9 {names.get(cat, cat)} energy MAE (meV)", value, True))
    for cat, value in summary.get("qm9_test_force_mae_meV_per_A", {}).items():
        rows.append((f"QM9 {names.get(cat, cat)} force MAE (meV/Å)", value, True))
    for cat, value in summary.get("nonqm9_energy_mae_meV", {}).items():
        rows.append((f"non-QM9 {cat} energy MAE (meV)", value, True))
    for cat, value in summary.get("nonqm9_force_mae_meV_per_A", {}).items():
        rows.append((f"non-QM9 {cat} force MAE (meV/Å)", value, True))
    rows.append(("build-trajectory reward MAE (meV)", summary.get("build_reward_mae_meV"), True))
    rows.append(("alternative placements Spearman", summary.get("alternatives_spearman_mean"), False))
    rows.append(("C7H10O2 isomer Spearman", summary.get("isomer_spearman"), False))
    wall = str(summary.get("diatomics_repulsive_wall_monotonic", ""))
    rows.append(("diatomic repulsive walls monotonic (pairs)",
                 float(wall.split("/")[0]) if wall.split("/")[0].isdigit() else None, False))
    return rows


def compare_summaries(new: dict, old: dict) -> dict:
    """Row by row, ``new`` against ``old`` (card summaries): an error row must be lower, a rank correlation or
    diatomic count at least as high (they sit near their ceilings). ``better_everywhere`` is what shipping a new
    default needs."""
    old_rows = {label: value for label, value, _ in card_rows(old)}
    rows = []
    for label, value, lower in card_rows(new):
        before = old_rows.get(label)
        if value is None or before is None:
            better = None
        else:
            better = value < before if lower else value >= before
        goal = INTERIM_GOALS.get(label)
        meets_goal = None if goal is None or value is None else (value <= goal if lower else value >= goal)
        rows.append({"row": label, "new": value, "old": before, "better": better, "interim_goal": goal,
                     "meets_interim_goal": meets_goal})
    return {"rows": rows, "better_everywhere": all(r["better"] for r in rows if r["better"] is not None)
            and any(r["better"] is not None for r in rows)}


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores visible (shared with other jobs), no GPU"


def _training_info(train_dir: Path | None) -> dict:
    if train_dir is None:
        return {}
    info: dict = {}
    settings = train_dir / "train_settings.json"
    if settings.is_file():
        s = json.loads(settings.read_text())
        runs = s.get("runs", [])
        info["architecture"] = s.get("architecture")
        info["architecture_settings"] = s.get("architecture_settings")
        info["dtype"] = s.get("dtype")
        info["wall_seconds_recorded_runs"] = round(sum(r.get("seconds") or 0 for r in runs), 1)
        info["runs"] = runs
        info["mace_arguments"] = s.get("mace_arguments")
    logs = sorted((train_dir / "logs").glob("*.log")) if (train_dir / "logs").is_dir() else []
    epochs: dict[int, str] = {}
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if "Epoch " in line and "MAE_E_per_atom" in line:
                text = line.split("INFO: ", 1)[-1]
                try:
                    epochs[int(text.split("Epoch ", 1)[1].split(":", 1)[0])] = text
                except ValueError:
                    continue
    if epochs:
        from datetime import datetime

        def stamp(text: str):
            try:
                return datetime.strptime(text[:23], "%Y-%m-%d %H:%M:%S.%f")
            except ValueError:
                return None

        all_lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()]
        starts = [stamp(line) for line in all_lines if "Initial:" in line]
        ends = [stamp(line) for line in all_lines if "Epoch " in line and "MAE_E_per_atom" in line]
        starts, ends = [t for t in starts if t], [t for t in ends if t]
        if starts and ends:
            info["wall_seconds"] = round((max(ends) - min(starts)).total_seconds(), 1)
        info["epochs_trained"] = max(epochs) + 1
        info["validation_by_epoch"] = [epochs[k] for k in sorted(epochs)]
    return info


def _campaign_training_info(state: Path) -> dict:
    """Training provenance of a model from ``molgym potential campaign`` (``state``: its committed state): the
    warm-start model's own training, when there is one, plus every session's wall time and epochs."""
    campaign = json.loads((state / "campaign.json").read_text())
    variant = campaign["variant"]
    sessions = [{k: sess.get(k) for k in ("started", "wall_seconds", "cpu_seconds", "torch_threads", "epoch_before",
                                         "epoch_after", "model_sha256")} for sess in campaign["sessions"]]
    info: dict = {
        "architecture": "custom", "dtype": variant.get("dtype"),
        "architecture_settings": {k: variant.get(k) for k in ("num_channels", "max_L", "correlation")},
        "campaign": {"variant": variant, "sessions": sessions, "stage_two": campaign.get("stage_two"),
                     "warm_start": campaign.get("warm_start"), "max_epochs": campaign.get("max_epochs")},
        "campaign_wall_seconds": round(sum(x["wall_seconds"] or 0 for x in sessions), 1),
        "campaign_cpu_seconds": round(float(campaign.get("cpu_seconds") or 0.0), 1),
        "campaign_epoch": campaign.get("epoch"),
        "campaign_validation": [p for sess in campaign["sessions"] for p in sess.get("curve", [])],
    }
    warm = campaign.get("warm_start")
    before = (warm or {}).get("training") or {}
    if warm:  # its validation curve is the study's one long run of the configuration (study.shipped_training_curve)
        info["warm_start_training"] = {k: before.get(k) for k in ("wall_seconds", "epochs_trained",
                                                                   "validation_by_epoch")}
    info["wall_seconds"] = round(float(before.get("wall_seconds") or 0.0) + info["campaign_wall_seconds"], 1)
    info["epochs_trained"] = int(before.get("epochs_trained") or 0) + int(campaign.get("epoch") or 0) + 1
    return info


def _row(table: dict, key: str, cats=("equilibrium", "thermal")) -> dict:
    return {c: table[c].get(key) for c in cats if c in table}


def card_summary(result: dict) -> dict:
    """The card's headline figures (per-category test MAEs, build-reward MAE, rank correlations, diatomics) from an
    :func:`molgym.potentials.evaluation.evaluate_dataset` result."""
    test = result["sets"].get("test", {})
    nonqm9 = result["sets"].get("nonqm9", {})
    isomers = result["sets"].get("isomers", {})
    return {
        "qm9_test_energy_mae_meV": _row(test.get("errors", {}), "energy_mae_meV",
                                         ("equilibrium", "thermal", "build", "misplaced", "close_contact")),
        "qm9_test_force_mae_meV_per_A": _row(test.get("errors", {}), "force_mae_meV_per_A",
                                              ("equilibrium", "thermal", "build", "misplaced", "close_contact")),
        "nonqm9_energy_mae_meV": _row(nonqm9.get("errors", {}), "energy_mae_meV"),
        "nonqm9_force_mae_meV_per_A": _row(nonqm9.get("errors", {}), "force_mae_meV_per_A"),
        "build_reward_mae_meV": test.get("build_rewards", {}).get("reward_mae_meV"),
        "alternatives_spearman_mean": test.get("alternatives", {}).get("spearman_mean"),
        "diatomics_monotonic": f"{test.get('diatomics', {}).get('monotonic_pairs')}/"
                               f"{test.get('diatomics', {}).get('total_pairs')}",
        "diatomics_repulsive_wall_monotonic": f"{test.get('diatomics_repulsive_wall', {}).get('monotonic_pairs')}/"
                                              f"{test.get('diatomics_repulsive_wall', {}).get('total_pairs')}",
        "isomer_spearman": isomers.get("isomers", {}).get("spearman"),
    }


def write_model_card(
    model: str | os.PathLike,
    data: str | os.PathLike,
    train_dir: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    campaign: str | os.PathLike | None = None,
    name: str = "default",
    device: str = "cpu",
    reproduce: str | None = None,
    notes: list[str] | None = None,
) -> list[Path]:
    """Evaluate ``model`` on ``data``'s test files and write ``OUT/NAME.model``, ``NAME.json``, ``NAME.md``.

    ``train_dir``: the ``molgym potential train`` directory the model came from; ``campaign``: instead, the state
    directory of the ``molgym potential campaign`` that trained it (training time and the commands that reproduce
    it are then the campaign's, warm start included).
    """
    from molgym.potentials.evaluation import evaluate_dataset, format_dataset_result
    from molgym.potentials.mace import MACEPotential

    model, data = Path(model), Path(data)
    out = Path(out) if out is not None else MODELS_DIR
    if not model.is_file():
        raise FileNotFoundError(f"model file {str(model)!r} does not exist")
    manifest_path = data / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{data} is not a molgym dataset directory (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    train_dir = Path(train_dir) if train_dir else None
    if campaign is not None and train_dir is not None:
        raise ValueError("give train_dir (a molgym potential train run) or campaign (a campaign's state), not both")
    if campaign is not None and not (Path(campaign) / "campaign.json").is_file():
        raise FileNotFoundError(f"{campaign} holds no campaign (no campaign.json)")

    target = out / f"{name}.model"
    if model.resolve() != target.resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(model, tmp)
    potential = MACEPotential(target, device=device, name=f"MACE({name})")
    result = evaluate_dataset(potential, data, device=device, progress=True)
    training = _campaign_training_info(Path(campaign)) if campaign is not None else _training_info(train_dir)
    model_info = {
        "parameters": int(sum(p.numel() for p in potential.model.parameters())),
        "dtype": str(potential.dtype).replace("torch.", ""),
        "r_max": potential.r_max,
        "species": sorted(potential.species),
        "num_interactions": int(potential.model.num_interactions),
    }
    summary = card_summary(result)
    unmet = unmet_targets(summary)
    if campaign is not None and reproduce is None:
        reproduce = (
            "molgym potential dataset --out runs/data-default --size default --seed 0 && molgym potential campaign "
            f"--data runs/data-default --work runs/campaign --state {campaign} --time-limit 2h (once per session, "
            f"resuming from the committed state; see docs/potential.md section 6) && molgym potential card --model "
            f"{Path(campaign) / 'model.model'} --data runs/data-default --campaign {campaign}"
        )
    reproduce = reproduce or (
        "molgym potential dataset --out runs/data-default --size default --seed 0 && "
        f"molgym potential train --data runs/data-default --out runs/train-default "
        f"--architecture {training.get('architecture') or 'cpu'} --dtype {training.get('dtype') or 'float32'} "
        "--epochs N && "
        "molgym potential card --model runs/train-default/model.model --data runs/data-default "
        "--train-dir runs/train-default"
    )
    card = {
        "name": name,
        "file": target.name,
        "sha256": sha256_of(target),
        # the registry warns on load when a shipped model is not 'release' (ProvisionalModelWarning)
        "status": "release" if not unmet else "provisional",
        "status_reason": "meets every accuracy target of its card" if not unmet else
                         "below the accuracy targets of its card: " + "; ".join(unmet),
        "format": "mace-torch model (torch.save of ScaleShiftMACE); load with molgym.potentials.load_potential",
        "reference_method": manifest.get("reference_method"),
        "data": {
            "source": manifest.get("source"),
            "license": manifest.get("source", {}).get("license", "CC BY 4.0"),
            "counts": manifest.get("counts"),
            "settings": manifest.get("settings"),
            "failures": manifest.get("failures"),
            "isolated_atom_energies_eV": manifest.get("isolated_atom_energies"),
        },
        "model": model_info,
        "training": {**training, "hardware": _hardware(), "trainer": "mace-torch mace.cli.run_train.run"},
        "targets": TARGETS,
        "summary": summary,
        "evaluation": result,
        "reproduce": reproduce,
        "notes": list(notes or []),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    write_json(json_path, card)
    write_text(md_path, _markdown(card, format_dataset_result(result)))
    return [target, json_path, md_path]


def unmet_targets(summary: dict) -> list[str]:
    """The accuracy targets (:data:`TARGETS`) a card's summary misses, as short readable strings."""
    unmet = []
    for label, values, limit, unit in [
        ("QM9 test energy MAE", {k: summary["qm9_test_energy_mae_meV"].get(k) for k in ("equilibrium", "thermal")},
         TARGETS["energy_mae_meV"], "meV"),
        ("QM9 test force MAE", {k: summary["qm9_test_force_mae_meV_per_A"].get(k) for k in ("equilibrium", "thermal")},
         TARGETS["force_mae_meV_per_A"], "meV/Å"),
        ("non-QM9 energy MAE", summary["nonqm9_energy_mae_meV"], TARGETS["energy_mae_meV"], "meV"),
        ("non-QM9 force MAE", summary["nonqm9_force_mae_meV_per_A"], TARGETS["force_mae_meV_per_A"], "meV/Å"),
    ]:
        bad = {k: v for k, v in values.items() if v is not None and v > limit}
        if bad:
            unmet.append(f"{label} " + ", ".join(f"{k} {v:.0f}" for k, v in bad.items()) + f" {unit} (target {limit:g})")
    reward = summary.get("build_reward_mae_meV")
    if reward is not None and reward > TARGETS["reward_mae_meV"]:
        unmet.append(f"build reward MAE {reward:.0f} meV (target {TARGETS['reward_mae_meV']:g})")
    rho = summary.get("alternatives_spearman_mean")
    if rho is not None and rho < TARGETS["alternatives_spearman"]:
        unmet.append(f"alternative-placement Spearman {rho:.3f} (target {TARGETS['alternatives_spearman']})")
    rho = summary.get("isomer_spearman")
    if rho is not None and rho < TARGETS["isomer_spearman"]:
        unmet.append(f"isomer Spearman {rho:.3f} (target {TARGETS['isomer_spearman']})")
    wall = summary.get("diatomics_repulsive_wall_monotonic", "")
    if "/" in wall and wall.split("/")[0] != wall.split("/")[1]:
        unmet.append(f"diatomic repulsive wall monotonic for {wall} pairs")
    return unmet


def _fmt(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def _markdown(card: dict, report: str) -> str:
    s = card["summary"]
    t = card["training"]
    counts = card["data"]["counts"] or {}
    lines = [
        f"# molgym reward potential `{card['name']}`",
        "",
        f"A MACE model ({card['model']['parameters']} parameters, {card['model']['dtype']}, r_max "
        f"{card['model']['r_max']} Å, elements H C N O F) trained with mace-torch on "
        f"{card['reference_method']} labels of QM9-derived configurations. It is the reward of molgym's "
        "environments: r = -[E(canvas + atom) - E(canvas) - E(atom)]. Its isolated-atom energies are the xTB ones "
        "(E0s), so E(atom) is xTB's exactly.",
        "",
        f"- status: **{card['status']}** — {card['status_reason']}",
        f"- file: `{card['file']}` (sha256 `{card['sha256']}`)",
        f"- data: QM9 ({card['data']['license']}; {card['data']['source'].get('citation') if card['data']['source'] else ''})",
        f"- training: {_fmt(t.get('wall_seconds'), '.0f')} s wall on {t.get('hardware')}; "
        f"{t.get('epochs_trained', '?')} epochs; architecture `{t.get('architecture')}` "
        f"{t.get('architecture_settings')}",
        f"- reproduce: `{card['reproduce']}`",
        "",
        "## Data (structures per category)",
        "",
        "| file | total | molecules | categories |",
        "|---|---|---|---|",
    ]
    for name, c in counts.items():
        cats = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("total", "molecules"))
        lines.append(f"| {name} | {c.get('total')} | {c.get('molecules')} | {cats} |")
    tg = card["targets"]
    eq = s["qm9_test_energy_mae_meV"]
    fq = s["qm9_test_force_mae_meV_per_A"]
    en = s["nonqm9_energy_mae_meV"]
    fn = s["nonqm9_force_mae_meV_per_A"]

    def mark(value, limit, larger_is_better=False):
        if value is None:
            return "-"
        ok = value >= limit if larger_is_better else value <= limit
        return "met" if ok else "**not met**"

    lines += [
        "",
        "## Accuracy against targets (test molecules never seen in training)",
        "",
        "| check | value | target | | interim goal (v2) | |",
        "|---|---|---|---|---|---|",
    ]
    interim = {label.split(" (")[0]: goal for label, goal in INTERIM_GOALS.items()}

    def interim_cells(label, val, larger_is_better=False):
        goal = interim.get(label)
        if goal is None:
            return "| |"
        return f"{'≥' if larger_is_better else '≤'} {goal:g} | {mark(val, goal, larger_is_better)} |"

    for label, val, lim, unit in [
        ("QM9 equilibrium energy MAE", eq.get("equilibrium"), tg["energy_mae_meV"], "meV"),
        ("QM9 thermal energy MAE", eq.get("thermal"), tg["energy_mae_meV"], "meV"),
        ("QM9 equilibrium force MAE", fq.get("equilibrium"), tg["force_mae_meV_per_A"], "meV/Å"),
        ("QM9 thermal force MAE", fq.get("thermal"), tg["force_mae_meV_per_A"], "meV/Å"),
        ("non-QM9 equilibrium energy MAE", en.get("equilibrium"), tg["energy_mae_meV"], "meV"),
        ("non-QM9 thermal energy MAE", en.get("thermal"), tg["energy_mae_meV"], "meV"),
        ("non-QM9 equilibrium force MAE", fn.get("equilibrium"), tg["force_mae_meV_per_A"], "meV/Å"),
        ("non-QM9 thermal force MAE", fn.get("thermal"), tg["force_mae_meV_per_A"], "meV/Å"),
        ("build-trajectory reward MAE", s["build_reward_mae_meV"], tg["reward_mae_meV"], "meV"),
    ]:
        lines.append(f"| {label} | {_fmt(val)} {unit} | ≤ {lim:g} {unit} | {mark(val, lim)} | "
                     + interim_cells(label, val))
    lines.append(f"| alternative placements Spearman (mean) | {_fmt(s['alternatives_spearman_mean'], '.3f')} | "
                 f"≥ {tg['alternatives_spearman']} | {mark(s['alternatives_spearman_mean'], tg['alternatives_spearman'], True)} | "
                 + interim_cells("alternative placements Spearman", s["alternatives_spearman_mean"], True))
    mono = s["diatomics_monotonic"]
    lines.append(f"| diatomics rising monotonically 1.0→0.5 Å | {mono} | all | "
                 f"{'met' if mono.split('/')[0] == mono.split('/')[1] else '**not met**'} | | |")
    wall = s.get("diatomics_repulsive_wall_monotonic", "-/-")
    lines.append(f"| diatomics rising monotonically from xTB's minimum (≤ 1.0 Å) to 0.5 Å | {wall} | all | "
                 f"{'met' if wall.split('/')[0] == wall.split('/')[1] else '**not met**'} | | |")
    lines.append(f"| C7H10O2 isomer energy Spearman | {_fmt(s['isomer_spearman'], '.3f')} | ≥ {tg['isomer_spearman']} | "
                 f"{mark(s['isomer_spearman'], tg['isomer_spearman'], True)} | "
                 + interim_cells("C7H10O2 isomer Spearman", s["isomer_spearman"], True))
    ref = (card["evaluation"]["sets"].get("test", {}).get("diatomics_reference") or {})
    if ref:
        lines.append(f"\nFor comparison, GFN2-xTB itself rises monotonically from 1.0 to 0.5 Å for "
                     f"{ref.get('monotonic_pairs')}/{ref.get('total_pairs')} pairs on the same grid"
                     + (f" (not: {', '.join(ref.get('not_monotonic', []))}, whose bond lengths are under 1 Å, so "
                        "their energy falls to the minimum before the wall)" if ref.get("not_monotonic") else "")
                     + "; the second diatomic row starts each pair at xTB's minimum.")
    if card.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    lines += [
        "",
        "## Full evaluation report",
        "",
        "Regenerate with `molgym potential card` (see reproduce above); raw figures are in the JSON card.",
        "",
        "```",
        report,
        "```",
        "",
        "## Intended use and limits",
        "",
        "- Neutral H/C/N/O/F molecules and fragments (radicals as doublets) of up to ~16 heavy atoms, in vacuum.",
        "- The reference is GFN2-xTB, not DFT: the model inherits xTB's errors on top of its own.",
        "- Long-range dissociation of diatomics (> 2 Å) is partly missing from the training data: GFN2-xTB's SCF "
        "does not converge for many stretched pairs, and those structures were skipped.",
        "",
        "Data licence: QM9 is CC BY 4.0 (Ramakrishnan et al., Sci. Data 1, 140022, 2014).",
    ]
    return "\n".join(lines) + "\n"
