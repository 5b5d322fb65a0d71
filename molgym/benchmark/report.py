"""Reports of a benchmark run: ``report.md`` (Markdown) and ``report.html`` (one self-contained page).

The HTML page needs no network: plots are inline PNG (base64, matplotlib's Agg backend) and molecule pictures
are inline SVG (RDKit 2D depictions). Contents: run header (suite, versions, potential, machine), the overall
leaderboard, one leaderboard per task with 95 % confidence intervals, scores above a best-known return (flagged),
PoseBusters' pass rate per check, bar charts of the headline metrics, figures that generators supply (the shipped
agents' learning curves), pictures of the best molecules of each task (valid, connected, highest return; QM9
reference excluded when other generators found one), the conventions of the metrics and their definitions.

Which metrics get a column (and its header, format and statistic), which are in the overall table and which are
plotted is read off each metric's declaration in :data:`molgym.metrics.registry.REGISTRY`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path

from molgym.metrics.registry import REGISTRY, Metric, headline_metrics, plotted_metrics, table_columns

__all__ = ["write_report", "load_results", "best_molecules", "md_table", "posebusters_rows", "above_best_known",
           "generator_figures", "CONVENTIONS"]


def load_results(directory: str | os.PathLike) -> dict:
    """``results.json`` of a run directory, with a clear error if it is missing."""
    path = Path(directory) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `molgym bench --out {directory}` first")
    return json.loads(path.read_text())


def _fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "f2":
        return f"{value:.2f}"
    if kind == "int":
        return str(int(value))
    if kind == "f1":
        return f"{value:.1f}"
    return f"{value:.3f}"


def _cell(entry: dict | None, metric: Metric) -> str:
    """A per-task table cell: the metric's statistic with its 95 % half-width (means), or median (and p90)."""
    if not entry or entry.get("mean") is None:
        return "–"
    if metric.aggregate == "median":
        text = _fmt(entry.get("median"), metric.fmt)
        return f"{text} / {_fmt(entry.get('p90'), metric.fmt)}" if metric.p90 else text
    kind = metric.fmt
    text = _fmt(entry["mean"], kind)
    lo, hi = entry.get("ci95", [None, None])
    if lo is not None and hi is not None and not (isinstance(lo, float) and math.isnan(lo)):
        half = (hi - lo) / 2
        text += f" ±{_fmt(half, kind).rstrip('%')}" + ("%" if kind == "pct" else "")
    return text


def _table_rows(results: dict, task: str) -> tuple[list[str], list[list[str]]]:
    board = results["leaderboard"].get(task, {})
    present = [m for m in table_columns() if any(m.name in row for row in board.values())]
    header = ["generator"] + [m.header for m in present] + list(COST_HEADERS)
    rows = []
    for gen, row in board.items():
        rows.append([gen] + [_cell(row.get(m.name), m) for m in present] + _cost_cells(row["cost"]))
    return header, rows


#: The cost columns: CPU seconds and potential calls per valid, connected, plausible molecule.
COST_HEADERS = ("CPU s/valid", "calls/valid")


def _cost_cells(cost: dict) -> list[str]:
    return [_fmt(cost.get("cpu_seconds_per_valid"), "f3"), _fmt(cost.get("calls_per_valid"), "f2")]


def _overall_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    overall = results["overall"]
    cols = [m for m in headline_metrics() if any(overall[g].get(m.name) is not None for g in overall)]
    # the overall figure is one number (a mean over tasks of the per-task statistic): no interval, no p90
    header = ["generator", "tasks"] + [m.header.replace(" / p90", "") for m in cols] + list(COST_HEADERS)
    rows = []
    for gen, row in overall.items():
        rows.append([gen, str(row.get("tasks", ""))] + [_fmt(row.get(m.name), m.fmt) for m in cols]
                    + _cost_cells(row))
    return header, rows


def posebusters_rows(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """PoseBusters' pass rate per check and generator, pooled over tasks (valid molecules; ``None`` if no check
    ran)."""
    passed: dict[str, dict[str, list[float]]] = {}
    for board in results["leaderboard"].values():
        for gen, row in board.items():
            for check, entry in (row.get("posebusters_checks") or {}).items():
                tally = passed.setdefault(gen, {}).setdefault(check, [0.0, 0])
                tally[0] += (entry.get("mean") or 0.0) * entry.get("n", 0)
                tally[1] += entry.get("n", 0)
    if not passed:
        return None
    checks = list(next(iter(passed.values())))
    header = ["generator", "valid molecules"] + [c.replace("_", " ") for c in checks]
    rows = [[gen, str(max(t[1] for t in tally.values()))]
            + [_fmt(tally[c][0] / tally[c][1], "pct") if c in tally and tally[c][1] else "–" for c in checks]
            for gen, tally in passed.items()]
    return header, rows


def above_best_known(results: dict) -> list[str]:
    """One line per (task, generator) whose mean fraction of the best-known return is above 1 (under the benchmark
    potential or the xTB referee): a new record or, far more often, a potential error to check with xTB."""
    lines = []
    for task, board in results["leaderboard"].items():
        for gen, row in board.items():
            for metric, label in (("fraction_best_known", "potential"), ("referee_fraction_best_known", "GFN2-xTB")):
                entry = row.get(metric) or {}
                if entry.get("mean") is not None and entry["mean"] > 1.0:
                    lines.append(f"{task}: {gen} scores {100 * entry['mean']:.1f}% of the best-known return under "
                                 f"{label}")
    return lines


def generator_figures(results: dict) -> list[tuple[str, str]]:
    """``(title, base64 PNG)`` of the figures generators list in their metadata (``figures``: title -> path)."""
    images = []
    for meta in results.get("generators", {}).values():
        for title, path in (meta.get("figures") or {}).items():
            if Path(path).is_file():
                images.append((title, base64.b64encode(Path(path).read_bytes()).decode()))
    return images


#: How each family of metrics perceives a molecule (stated in every report).
CONVENTIONS = (
    "Bonds: two atoms are bonded when closer than their standard single-bond length + 0.10 Å; bond orders and "
    "formal charges come from RDKit's DetermineBondOrders for a neutral molecule; hydrogens are explicit atoms "
    "with their generated 3D positions. Validity, connectivity, SMILES, PoseBusters and graph survival all use "
    "this one perception.",
    "SMILES (uniqueness, novelty, diversity, distinct valid): RDKit canonical SMILES of the perceived molecule, "
    "hydrogens implicit, no stereochemistry; novelty is against all of QM9 canonicalised the same way.",
    "Stability (atom, molecule): EDM's bond-order rule from distances alone, hydrogens included.",
    "Plausibility gate: atoms closer than max(0.6 Å, 0.6 x sum of covalent radii) are fused; fused molecules get "
    "no energy, return, relaxation, referee or cost credit.",
    "PoseBusters: config 'mol' (all molecule checks, internal energy against an ETKDG/UFF ensemble) on the "
    "perceived molecule; PB-valid is over all molecules (invalid ones fail), the per-check rates over valid ones.",
    "GFN2-xTB relaxation (xTB relax ΔE, RMSD, graph kept): a seeded sample of valid, plausible molecules per job "
    "(the suite's referee_sample), BFGS to 0.05 eV/Å, at most the suite's referee_relax_steps steps; RMSD over "
    "heavy atoms after Kabsch alignment; graph kept: the bond graph (hydrogens included) unchanged. Non-converged "
    "or SCF-failed relaxations are left out.",
    "Cost: CPU seconds of the generating process (all its threads) and potential calls per valid, connected, "
    "plausible molecule; metric computation is not counted.",
)


def best_molecules(directory: str | os.PathLike, results: dict, per_task: int = 3) -> dict[str, list[dict]]:
    """Per task, the ``per_task`` best distinct valid, connected molecules over all jobs: EDM-stable ones first,
    then by highest return.

    Each entry: ``generator``, ``smiles``, ``return``, ``formula``, ``job_id``. The QM9 reference is used only
    when no other generator produced a valid molecule for the task.
    """
    best: dict[str, list[dict]] = {}
    for job in results["jobs"]:
        path = Path(directory) / "jobs" / f"{job['job_id']}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for rec in data["molecules"]:
            if rec.get("valid_connected") and rec.get("smiles"):
                best.setdefault(job["task"], []).append({
                    "generator": job["generator"], "smiles": rec["smiles"], "return": rec.get("return"),
                    "formula": rec.get("formula"), "job_id": job["job_id"], "index": rec["index"],
                    "stable": bool(rec.get("molecule_stable")),
                })
    out = {}
    for task, cands in best.items():
        non_ref = [c for c in cands if c["generator"] != "qm9"]
        pool = non_ref or cands
        pool.sort(key=lambda c: (not c["stable"], -(c["return"] if c["return"] is not None else -math.inf)))
        seen, chosen = set(), []
        for c in pool:
            if c["smiles"] in seen:
                continue
            seen.add(c["smiles"])
            chosen.append(c)
            if len(chosen) == per_task:
                break
        out[task] = chosen
    return out


def _svg(smiles: str, size: tuple[int, int] = (220, 170)) -> str:
    from rdkit import Chem
    from rdkit.Chem.Draw import rdMolDraw2D

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return ""
    drawer = rdMolDraw2D.MolDraw2DSVG(*size)
    drawer.drawOptions().clearBackground = True
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    drawer.FinishDrawing()
    text = drawer.GetDrawingText()
    return text[text.find("<svg"):]  # drop the XML declaration so the SVG can sit inline in HTML


def _plots_png(results: dict) -> list[tuple[str, str]]:
    """``(title, base64 PNG)`` bar charts of the headline metrics per task and generator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(results["leaderboard"])
    gens = list(results["overall"])
    images = []
    for declaration in plotted_metrics():
        metric = declaration.name
        if not any(metric in results["leaderboard"][t].get(g, {}) for t in tasks for g in gens):
            continue
        fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(tasks) + 2), 3.0), dpi=96)
        width = 0.8 / max(len(gens), 1)
        x = np.arange(len(tasks))
        for k, g in enumerate(gens):
            means, errs = [], []
            for t in tasks:
                e = results["leaderboard"][t].get(g, {}).get(metric)
                m = e["mean"] if e and e["mean"] is not None else np.nan
                lo, hi = (e or {}).get("ci95", [None, None])
                means.append(m)
                errs.append((hi - lo) / 2 if lo is not None and hi is not None else 0.0)
            ax.bar(x + (k - (len(gens) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=g)
        ax.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
        arrow = "↑ better" if declaration.higher_is_better else "↓ better"
        ax.set_title(f"{metric} ({arrow})", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        images.append((metric, base64.b64encode(buf.getvalue()).decode()))
    return images


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (one header row, then one line per row of cells)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='tbl'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _header_lines(results: dict) -> list[str]:
    suite, pot, mach = results["suite"], results["potential"], results["machine"]
    return [
        f"suite **{suite['name']}** v{suite['version']} — {suite['description']}",
        f"molgym {results['molgym_version']}, results schema {results['schema_version']}, {results['timestamp']}",
        f"potential: {pot.get('name', pot['spec'])} (spec `{pot['spec']}`; {pot.get('selected_because', '')})",
        f"seeds {results['seeds']}, {results.get('n_samples', suite['n_samples'])} molecules per job, "
        f"{results['jobs_finished']}/{results['jobs_planned']} jobs finished"
        + ("" if results["complete"] else " (INCOMPLETE: rerun the same command to resume)"),
        f"machine: {mach['platform']}, {mach['cpu_count']} CPUs, executor {results['executor']}",
    ] + ([f"overrides of the suite (not a standard {suite['name']} run): {results['overrides']}"]
         if results.get("overrides") else []) + [
        f"skipped {s['generator']} on {s['task']}: {s['reason']}" for s in results.get("skipped_jobs", [])
    ]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.mols{display:flex;flex-wrap:wrap;gap:10px}
.mol{border:1px solid #ddd;padding:4px;font-size:0.8em;text-align:center;width:224px}
.plots img{max-width:100%;margin:6px 0}.meta{color:#555;font-size:0.9em}code{background:#f4f4f4}
.warn{color:#a00;font-weight:bold}.tbl{overflow-x:auto}
"""


def write_report(directory: str | os.PathLike, out: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for the run in ``directory`` (into ``out``, default the same);
    generators' figures are copied to ``out/figures/`` for the Markdown report and inlined in the HTML page."""
    from molgym.io import atomic_path, write_text

    directory = Path(directory)
    out = Path(out) if out else directory
    results = load_results(directory)
    best = best_molecules(directory, results)
    plots = _plots_png(results)
    figures = generator_figures(results)
    records = above_best_known(results)
    checks = posebusters_rows(results)
    above_note = ("Scores above a best-known return (a new record or a potential error: check the molecules with "
                  "GFN2-xTB; fused atoms are already unscored):")
    footnote = ("± are 95 % confidence half-widths (Wilson for fractions, Student-t for means). CPU s/valid: CPU "
                "seconds of generation per valid, connected, plausible molecule; calls/valid: potential calls per "
                "such molecule.")

    md = ["# molgym benchmark report", ""] + [f"- {line}" for line in _header_lines(results)] + [""]
    md += ["## Overall (mean over tasks)", "", md_table(*_overall_rows(results)), ""]
    md += ([above_note, ""] + [f"- {line}" for line in records] + [""] if records
           else ["No generator scores above a best-known return on any formula task.", ""])
    for task in results["leaderboard"]:
        desc = results["tasks"].get(task, {}).get("description", "")
        md += [f"## {task}", "", desc, "", md_table(*_table_rows(results, task)), ""]
        if best.get(task):
            md += ["Best molecules: " + ", ".join(
                f"`{b['smiles']}` ({b['generator']}, return {_fmt(b['return'], 'f3')} eV)" for b in best[task]), ""]
    if checks:
        md += ["## PoseBusters checks (pass rate over valid molecules, all tasks)", "", md_table(*checks), ""]
    for k, (title, b64) in enumerate(figures):
        name = f"figures/figure-{k + 1}.png"
        with atomic_path(out / name) as tmp:
            tmp.write_bytes(base64.b64decode(b64))
        md += [f"## {title[0].upper()}{title[1:]}", "", f"![{title}]({name})", ""]
    md += ["## Conventions", ""] + [f"- {line}" for line in CONVENTIONS] + [""]
    md += ["## Metric definitions", ""] + [f"- **{m.name}**: {m.description}" for m in REGISTRY.values()]
    md += ["", footnote, ""]
    md_path = out / "report.md"
    write_text(md_path, "\n".join(md))

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>molgym benchmark: "
             f"{html.escape(results['suite']['name'])}</title><style>{_CSS}</style></head><body>",
             "<h1>molgym benchmark report</h1><div class='meta'><ul>"]
    for line in _header_lines(results):
        parts.append("<li>" + html.escape(line).replace("**", "") + "</li>")
    parts.append("</ul></div><h2>Overall leaderboard (mean over tasks)</h2>")
    parts.append(_html_table(*_overall_rows(results)))
    if records:
        parts.append(f"<p class='warn'>{html.escape(above_note)}</p><ul>"
                     + "".join(f"<li>{html.escape(line)}</li>" for line in records) + "</ul>")
    else:
        parts.append("<p>No generator scores above a best-known return on any formula task.</p>")
    if plots:
        parts.append("<h2>Plots</h2><div class='plots'>")
        for title, b64 in plots:
            parts.append(f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>")
        parts.append("</div>")
    for task in results["leaderboard"]:
        desc = results["tasks"].get(task, {}).get("description", "")
        parts.append(f"<h2>{html.escape(task)}</h2><p>{html.escape(desc)}</p>")
        parts.append(_html_table(*_table_rows(results, task)))
        if best.get(task):
            parts.append("<div class='mols'>")
            for b in best[task]:
                parts.append(f"<div class='mol'>{_svg(b['smiles'])}<br><code>{html.escape(b['smiles'])}</code><br>"
                             f"{html.escape(b['generator'])}, return {_fmt(b['return'], 'f3')} eV</div>")
            parts.append("</div>")
    if checks:
        parts.append("<h2>PoseBusters checks (pass rate over valid molecules, all tasks)</h2>")
        parts.append(_html_table(*checks))
    for title, b64 in figures:
        parts.append(f"<h2>{html.escape(title[0].upper() + title[1:])}</h2><div class='plots'>"
                     f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'></div>")
    parts.append("<h2>Conventions</h2><ul>" + "".join(f"<li>{html.escape(c)}</li>" for c in CONVENTIONS) + "</ul>")
    parts.append("<h2>Metric definitions</h2><ul>")
    parts += [f"<li><b>{html.escape(m.name)}</b>: {html.escape(m.description)}</li>" for m in REGISTRY.values()]
    parts.append(f"</ul><p class='meta'>{html.escape(footnote)}</p></body></html>")
    html_path = out / "report.html"
    write_text(html_path, "\n".join(parts))
    return md_path, html_path
