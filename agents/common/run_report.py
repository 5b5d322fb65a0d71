"""Seeds side by side: a learning table and learning curves from finished ``molgym train`` runs.

``molgym train-report RUN_DIR ...`` reads each run's ``config.json``, ``eval.csv`` and ``summary.json`` (see
:mod:`molgym.agents.common.training`), groups runs that differ only in their seed (and bookkeeping such as the
output folder or evaluation interval), and writes

    training_report.md     one row per (task, budget, agent): the final greedy policy's return as a fraction of
                           the best-known return (median over seeds, [min, max]), greedy and sampled validity
                           (median), the first periodic evaluation at >= 90 % of the best-known return per seed,
                           and the cost (s per 10,000 environment steps, env steps per second); a second table
                           for runs with held-out bags (stochastic tasks)
    learning_curves.png    per task: the periodic greedy evaluation against environment steps, median over seeds
                           with the min-max band, one colour per agent; the top row is the fraction of the
                           best-known return (or the return where the task has none), the bottom row validity

This is how docs/agents.md's learning tables and curves are made; a user compares agents, settings or
potentials the same way. Unfinished runs (no ``summary.json``) are skipped and named.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TrainingRun", "find_runs", "load_run", "group_runs", "learning_table", "held_out_table",
           "referee_table", "plot_learning_curves", "write_training_report"]

#: Config keys that do not change what is learned: runs differing only in these are seeds of one setting.
BOOKKEEPING = ("out", "seed", "device", "threads", "eval_every", "eval_episodes", "checkpoint_every",
               "final_molecules")
#: The fraction of the best-known return the issue's learning criteria use.
TARGET_FRACTION = 0.9
#: Tasks per row of the learning-curve figure (each task is a return panel above a validity panel).
PANELS_PER_ROW = 4


@dataclass
class TrainingRun:
    """One finished run directory: its settings, periodic evaluations and final summary."""

    path: Path
    config: dict[str, Any]
    evals: list[dict[str, float | None]]
    summary: dict[str, Any]

    @property
    def task(self) -> str:
        """``C7H10O2`` for a single-bag formula task, else the environment's short name plus its bag or template."""
        env = self.config["env_id"].split("/")[-1]
        bag = self.config.get("formula") or self.config.get("env_kwargs", {}).get("template") or ""
        return bag if env == "SingleBag-v0" and bag else " ".join(x for x in (env, bag) if x)

    @property
    def held_out_bags(self) -> dict[str, Any]:
        """``summary.json["held_out"]["bags"]``: per held-out bag, its greedy and sampled summaries (may be empty)."""
        return (self.summary.get("held_out") or {}).get("bags") or {}

    @property
    def reward(self) -> str:
        """What the returns were earned under: ``default``, ``xtb``, or ``default + xtb correction``."""
        reference = self.config.get("reference")
        return self.config["potential"] + (f" + {reference} correction" if reference else "")

    @property
    def setting(self) -> str:
        """The settings that define what is learned (seed and bookkeeping removed, settings added since the run was
        made filled in with the value its config implies), as sorted JSON."""
        from molgym.agents.common.train_config import IMPLIED_SETTINGS

        config = {**IMPLIED_SETTINGS, **self.config}
        return json.dumps({k: v for k, v in config.items() if k not in BOOKKEEPING}, sort_keys=True)


def load_run(path: str | Path) -> TrainingRun:
    """Read one finished run; a folder without ``summary.json`` (unfinished) or ``config.json`` is an error."""
    path = Path(path)
    missing = [name for name in ("config.json", "summary.json") if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a finished molgym train run: no {' or '.join(missing)}")
    from molgym.agents.common.training import read_evals

    return TrainingRun(path, json.loads((path / "config.json").read_text()), read_evals(path),
                       json.loads((path / "summary.json").read_text()))


def find_runs(paths: list[str | Path]) -> tuple[list[TrainingRun], list[Path]]:
    """Finished runs under ``paths`` (each a run folder or a folder of run folders), and the unfinished ones."""
    finished, unfinished = [], []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"no such run folder: {p}")
        if (p / "config.json").is_file():
            candidates = [p]
        else:
            candidates = sorted(c for c in p.iterdir() if (c / "config.json").is_file())
        if not candidates:
            raise FileNotFoundError(f"{p} holds no molgym train run (no config.json in it or its sub-folders)")
        for c in candidates:
            if (c / "summary.json").is_file():
                finished.append(load_run(c))
            else:
                unfinished.append(c)
    return finished, unfinished


def group_runs(runs: list[TrainingRun]) -> dict[tuple[str, int, str], list[TrainingRun]]:
    """Runs grouped by (task, step budget, agent label); seeds of one setting share a group.

    Two settings of one agent on one task and budget (e.g. two learning rates) get labels ``agent [1]``,
    ``agent [2]``, ... in order of first appearance.
    """
    by_setting: dict[str, list[TrainingRun]] = {}
    for r in sorted(runs, key=lambda r: (r.task, r.config["steps"], r.config["agent"], r.config["seed"])):
        by_setting.setdefault(r.setting, []).append(r)
    labels: dict[tuple[str, int, str], list[str]] = {}
    for setting, members in by_setting.items():
        first = members[0]
        labels.setdefault((first.task, first.config["steps"], first.config["agent"]), []).append(setting)
    groups: dict[tuple[str, int, str], list[TrainingRun]] = {}
    for (task, steps, agent), settings in labels.items():
        for k, setting in enumerate(settings, 1):
            label = agent if len(settings) == 1 else f"{agent} [{k}]"
            groups[(task, steps, label)] = by_setting[setting]
    return groups


def _median_range(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def _pct(values: list[float]) -> str:
    return f"{statistics.median(values):.0%}" if values else "n/a"


def _mean_pct(values: list[float | None]) -> str:
    """The mean of per-seed fractions (a seed counts once), as a percentage: 2 valid seeds of 3 give 67 %."""
    values = [v for v in values if v is not None]
    return f"{statistics.fmean(values):.0%}" if values else "n/a"


def _first_at_target(run: TrainingRun) -> str:
    for e in run.evals:
        f = e.get("mean_fraction_of_optimum")
        if f is not None and f >= TARGET_FRACTION:
            return f"{int(e['step']):,}"
    return "never" if any(e.get("mean_fraction_of_optimum") is not None for e in run.evals) else "n/a"


def _final(run: TrainingRun, mode: str, key: str) -> float | None:
    block = run.summary.get(f"final_{mode}") or {}
    return block.get(key)


def learning_table(groups: dict[tuple[str, int, str], list[TrainingRun]]) -> str:
    """The Markdown learning table: one row per (task, budget, agent), figures over the group's seeds."""
    from molgym.benchmark.report import md_table

    header = ["task", "steps", "agent", "reward", "seeds", "greedy return / best-known: median [min, max]",
              "greedy valid (median)", "sampled valid (median)", f"first eval at >= {TARGET_FRACTION:g}, per seed",
              "s per 10k steps (median)", "env steps/s (median)"]
    rows = []
    for (task, steps, agent), runs in groups.items():
        fractions = [f for r in runs if (f := _final(r, "greedy", "mean_fraction_of_optimum")) is not None]
        greedy_valid = [v for r in runs if (v := _final(r, "greedy", "validity")) is not None]
        sampled_valid = [v for r in runs if (v := _final(r, "sampled", "validity")) is not None]
        cost = [c for r in runs if (c := r.summary.get("s_per_10k_steps")) is not None]
        speed = [c for r in runs if (c := r.summary.get("env_steps_per_s")) is not None]
        rows.append([task, f"{steps:,}", agent, runs[0].reward, str(len(runs)), _median_range(fractions),
                     _pct(greedy_valid),
                     _pct(sampled_valid), ", ".join(_first_at_target(r) for r in runs),
                     f"{statistics.median(cost):.0f}" if cost else "n/a",
                     f"{statistics.median(speed):.0f}" if speed else "n/a"])
    return md_table(header, rows)


def held_out_table(groups: dict[tuple[str, int, str], list[TrainingRun]]) -> str | None:
    """Markdown table of held-out bags (stochastic tasks): per bag, greedy and sampled return and validity
    (mean over seeds); ``None`` when no run has held-out bags."""
    from molgym.benchmark.report import md_table

    rows = []
    for (task, steps, agent), runs in groups.items():
        for bag in sorted({b for r in runs for b in r.held_out_bags}):
            per = [r.held_out_bags[bag] for r in runs if bag in r.held_out_bags]

            def mean(mode: str, key: str) -> float:
                return statistics.fmean(p[mode][key] for p in per)

            rows.append([task, f"{steps:,}", agent, str(len(per)), bag, f"{mean('greedy', 'mean_return'):.1f}",
                         f"{mean('greedy', 'validity'):.0%}", str(sum(p["sampled"]["episodes"] for p in per)),
                         f"{mean('sampled', 'mean_return'):.1f}", f"{mean('sampled', 'validity'):.0%}"])
    if not rows:
        return None
    return md_table(["task", "steps", "agent", "seeds", "held-out bag", "greedy return (eV)", "greedy valid",
                     "sampled episodes", "sampled mean return (eV)", "sampled valid"], rows)


def referee_table(groups: dict[tuple[str, int, str], list[TrainingRun]], referee: str = "xtb",
                  checkpoints: list[tuple[str, str]] | None = None, log=print, policy: str = "final") -> str:
    """Markdown table of the greedy molecules judged by ``referee`` (:mod:`molgym.agents.common.referee`): per
    group, the referee's return / its best-known return, relaxation energy drop and RMSD under the referee (median
    over seeds [min, max]); validity, PoseBusters' checks and whether the relaxation kept the bond graph (the mean
    over seeds of each seed's fraction of its judged molecules: 2 valid seeds of 3 give 67 %); and the training
    cost. ``checkpoints`` (``(label, "FORMULA=path.zip")`` pairs) adds one row per policy file, played greedily.
    ``policy``: each run's ``"final"`` policy, the ``"best"`` of its periodic evaluations (a column gives each
    seed's step of that evaluation) or ``"mean:K"``, the mean weights of its last K checkpoints; the last two on
    fixed-bag runs only (other groups are left out, and named in ``log``)."""
    from molgym.agents.common.referee import judge_checkpoint, judge_run
    from molgym.benchmark.report import md_table

    best = policy == "best"
    rows = []
    for (task, steps, agent), runs in groups.items():
        if policy != "final" and any(r.config["env_id"] != "MolGym/SingleBag-v0" for r in runs):
            log(f"leaving out {task}, {steps:,} steps, {agent}: a saved policy ({policy}) is judged on fixed-bag "
                "runs only")
            continue
        log(f"judging {task}, {steps:,} steps, {agent} ({len(runs)} runs) with {referee}")
        results = [judge_run(r.path, referee, policy=policy) for r in runs]
        judged = [j["summary"] for j in results]
        cost = [c for r in runs if (c := r.summary.get("s_per_10k_steps")) is not None]
        rows.append([task, f"{steps:,}", agent, runs[0].reward, str(len(runs)),
                     _median_range([j["referee_fraction"] for j in judged if j["referee_fraction"] is not None]),
                     _mean_pct([j["valid"] for j in judged]), _mean_pct([j.get("posebusters") for j in judged]),
                     _median_range([j["relax_drop"] for j in judged if j["relax_drop"] is not None]),
                     _median_range([j["relax_rmsd"] for j in judged if j["relax_rmsd"] is not None]),
                     _mean_pct([j.get("graph_kept") for j in judged]),
                     f"{statistics.median(cost):.0f}" if cost else "n/a"]
                    + ([", ".join(f"{j['step']:,}" for j in results)] if best else []))
    for label, spec in checkpoints or ():
        formula, _, path = spec.partition("=")
        log(f"judging checkpoint {label} ({path}) on {formula} with {referee}")
        j = judge_checkpoint(path, formula, referee)["summary"]
        rows.append([formula, "n/a", label, "checkpoint", "1",
                     _median_range([j["referee_fraction"]] if j["referee_fraction"] is not None else []),
                     _mean_pct([j["valid"]]), _mean_pct([j.get("posebusters")]),
                     _median_range([j["relax_drop"]] if j["relax_drop"] is not None else []),
                     _median_range([j["relax_rmsd"]] if j["relax_rmsd"] is not None else []),
                     _mean_pct([j.get("graph_kept")]), "n/a"]
                    + (["n/a"] if best else []))
    return md_table(["task", "steps", "agent", "reward", "seeds", f"greedy {referee} return / {referee} best-known",
                     "greedy valid (mean over seeds)", "PoseBusters (mean over seeds)",
                     f"{referee} relaxation drop (eV)", "relaxation heavy-atom RMSD (Å)",
                     "bond graph kept by the relaxation (mean over seeds)", "s per 10k steps"]
                    + (["best evaluation step (per seed)"] if best else []), rows)


def _curve(runs: list[TrainingRun], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, median, min and max over seeds of an eval.csv column, at the steps every seed evaluated."""
    per_seed = [{int(e["step"]): e[key] for e in r.evals if e.get(key) is not None} for r in runs]
    steps = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    med = [statistics.median(s[x] for s in per_seed) for x in steps]
    return steps, med, [min(s[x] for s in per_seed) for x in steps], [max(s[x] for s in per_seed) for x in steps]


def plot_learning_curves(groups: dict[tuple[str, int, str], list[TrainingRun]], path: str | Path) -> Path | None:
    """Write the learning-curve figure (PNG) to ``path``; ``None`` (nothing written) when no run has evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, int], dict[str, list[TrainingRun]]] = {}  # (task, steps) -> agent -> runs
    for (task, steps, agent), runs in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        panels.setdefault((task, steps), {})[agent] = runs
    panels = {key: by_agent for key, by_agent in panels.items()
              if any(r.evals for runs in by_agent.values() for r in runs)}
    if not panels:
        return None
    agents = sorted({a for _, _, a in groups})
    colours = {a: plt.get_cmap("tab10")(k % 10) for k, a in enumerate(agents)}
    cols = min(len(panels), PANELS_PER_ROW)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(max(3.2 * cols, 4.0), 2.6 * 2 * rows), dpi=96,
                             squeeze=False)
    for k in range(len(panels), rows * cols):  # empty slots of the last row
        axes[2 * (k // cols)][k % cols].set_visible(False)
        axes[2 * (k // cols) + 1][k % cols].set_visible(False)
    for k, ((task, steps), by_agent) in enumerate(panels.items()):
        top, bottom = axes[2 * (k // cols)][k % cols], axes[2 * (k // cols) + 1][k % cols]
        use_fraction = all(e.get("mean_fraction_of_optimum") is not None
                           for runs in by_agent.values() for r in runs for e in r.evals)
        key = "mean_fraction_of_optimum" if use_fraction else "mean_return"
        for agent, runs in by_agent.items():
            if not all(r.evals for r in runs):
                continue
            for ax, column in ((top, key), (bottom, "validity")):
                x, med, lo, hi = _curve(runs, column)
                ax.plot(x, med, color=colours[agent], label=f"{agent}, {runs[0].reward} ({len(runs)})", lw=1.5)
                if len(runs) > 1:
                    ax.fill_between(x, lo, hi, color=colours[agent], alpha=0.2, lw=0)
        if use_fraction:
            top.axhline(TARGET_FRACTION, color="grey", ls="--", lw=0.8)
            lo, hi = top.get_ylim()  # at least [0, 1]; more where a run fell below zero or over-scored
            top.set_ylim(min(lo, -0.05), max(hi, 1.05))
        bottom.axhline(TARGET_FRACTION, color="grey", ls="--", lw=0.8)
        bottom.set_ylim(-0.05, 1.05)
        top.set_title(f"{task}, {steps:,} steps", fontsize=9)
        top.set_ylabel("greedy return / best-known" if use_fraction else "greedy return (eV)", fontsize=8)
        bottom.set_ylabel("greedy valid", fontsize=8)
        bottom.set_xlabel("environment steps", fontsize=8)
        for ax in (top, bottom):
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        top.legend(fontsize=7, title="agent, reward (seeds)", title_fontsize=7, loc="lower right")
    fig.suptitle("periodic greedy evaluation: median over seeds, band = min-max", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.25 / fig.get_figheight()))  # room for the title
    from molgym.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_training_report(paths: list[str | Path], out: str | Path, log=print, referee: str | None = None,
                          checkpoints: list[tuple[str, str]] | None = None,
                          policy: str = "final") -> tuple[Path, Path | None]:
    """Write ``training_report.md`` and ``learning_curves.png`` under ``out`` for the finished runs in ``paths``;
    with ``referee`` (e.g. ``"xtb"``) also the table of :func:`referee_table` (``checkpoints`` adds policy files to
    it; ``policy`` says which policy of each run it judges)."""
    from molgym.io import write_text

    runs, unfinished = find_runs(paths)
    for p in unfinished:
        log(f"skipping {p}: not finished (no summary.json)")
    if not runs:
        raise FileNotFoundError(f"no finished molgym train run in {', '.join(map(str, paths))}")
    groups = group_runs(runs)
    out = Path(out)
    png = plot_learning_curves(groups, out / "learning_curves.png")
    lines = ["# Training runs", "", f"{len(runs)} finished runs in {len(groups)} groups (seeds of one setting). "
             "Greedy return / best-known: the final greedy policy's mean return over the best-known return of the "
             "formula under the potential its returns are measured in (the reference, for runs with one). Valid: one connected molecule that RDKit sanitises after bond "
             "perception. First eval: the first periodic greedy evaluation at or above "
             f"{TARGET_FRACTION:.0%} of the best-known return.", "", learning_table(groups), ""]
    held = held_out_table(groups)
    if held:
        lines += ["## Held-out bags", "", held, ""]
    if referee:
        which = ("The final greedy molecules of each run (distinct ones; one per run on a fixed-bag task)"
                 if policy == "final" else "The greedy molecule of each run's best periodic evaluation's policy "
                 "(greedy validity first, then mean return; one episode, fixed-bag runs only)")
        lines += [f"## Judged by {referee}", "", f"{which} under the referee: its build return over its own "
                  "best-known return, the energy released by relaxing the molecule under it (BFGS, fmax 0.05 eV/Å, "
                  "at most 300 steps) and the heavy-atom RMSD of that relaxation; median over seeds [min, max]. "
                  "Reward: the potential the agent was trained on, and the correction added at each episode's end.",
                  "",
                  referee_table(groups, referee, checkpoints, log, policy), ""]
    if png is not None:
        lines += [f"![learning curves]({png.name})", ""]
    settings = {f"{task}, {steps:,} steps, {label}": runs[0].setting
                for (task, steps, label), runs in groups.items() if "[" in label}
    if settings:
        lines += ["## Settings of the labelled groups", ""] + [f"- {k}: `{v}`" for k, v in settings.items()] + [""]
    lines += ["Runs: " + ", ".join(f"`{r.path}`" for r in runs), ""]
    md = out / "training_report.md"
    write_text(md, "\n".join(lines))
    return md, png
