"""``molgym report DIR``: Markdown and self-contained HTML report of a benchmark run."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add ``molgym report`` to the top-level sub-parsers."""
    p = subparsers.add_parser(
        "report",
        help="write report.md and a self-contained report.html for a benchmark run",
        description="Read DIR/results.json (from `molgym bench --out DIR`) and write report.md and report.html "
        "(leaderboards with 95% CIs, plots, pictures of the best molecules; the HTML needs no network).",
    )
    p.add_argument("dir", help="benchmark output directory (holds results.json)")
    p.add_argument("--out", default=None, help="where to write the report (default: DIR)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """Write report.md and report.html for a run directory."""
    from molgym.benchmark.report import write_report

    md, html = write_report(args.dir, args.out)
    print(f"wrote {md}")
    print(f"wrote {html}")
    return 0
