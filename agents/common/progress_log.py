"""SB3's training log of a run (``progress.csv``, TensorBoard events when installed), kept whole across resumes:
a resumed run's log continues the rows of the steps it kept and drops those it will train again.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

__all__ = ["tensorboard_available", "read_progress", "write_progress", "progress_logger"]

def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def read_progress(path: Path, resume_step: int) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a ``progress.csv`` that a run resuming at ``resume_step`` keeps: rows cut short (a run
    killed mid-write) and rows logged after that step (updates the resumed run redoes from its checkpoint) go."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as fh:
        table = list(csv.reader(fh))
    if not table:
        return [], []
    header, rows = table[0], [r for r in table[1:] if len(r) == len(table[0])]
    if "time/total_timesteps" in header:
        col = header.index("time/total_timesteps")

        def logged_by_then(row: list[str]) -> bool:
            try:
                return float(row[col]) <= resume_step
            except ValueError:
                return True

        rows = [r for r in rows if logged_by_then(r)]
    return header, rows


def write_progress(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write ``progress.csv`` atomically, rows padded with empty cells to the header's width."""
    from molgym.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(r + [""] * (len(header) - len(r)) for r in rows)


def progress_logger(out: Path, formats: list[str], resume_step: int | None = None):
    """The SB3 logger of a run: ``progress.csv`` (and TensorBoard events) under ``out``.

    A fresh run (``resume_step=None``) starts ``progress.csv`` anew. A resumed run continues it: SB3's own CSV
    writer opens the file in write mode and would drop the first session's rows, so the rows up to the resumed
    checkpoint are kept and the new ones appended under the same header; when a session logs a column the file
    lacks, the file is rewritten atomically with the wider header (earlier rows get empty cells).
    """
    from stable_baselines3.common.logger import (
        CSVOutputFormat,
        Logger,
        configure,
        filter_excluded_keys,
        make_output_format,
    )

    if resume_step is None:
        return configure(str(out), formats)
    path = out / "progress.csv"
    header, rows = read_progress(path, resume_step)
    write_progress(path, header, rows)

    class AppendingCSV(CSVOutputFormat):
        """SB3's CSV writer, appending to the existing file; new columns widen it atomically."""

        def __init__(self):  # not super().__init__: that truncates the file
            self.keys, self.separator, self.quotechar = list(header), ",", '"'
            self.file = open(path, "a")

        def write(self, key_values, key_excluded, step=0) -> None:
            shown = filter_excluded_keys(key_values, key_excluded, "csv")
            extra = [k for k in shown if k not in self.keys]
            if extra:
                self.file.close()
                _, kept = read_progress(path, math.inf)
                write_progress(path, self.keys + extra, kept)
                self.keys += extra
                self.file = open(path, "a")
            super().write(key_values, key_excluded, step)

    outputs = [AppendingCSV() if f == "csv" else make_output_format(f, str(out)) for f in formats]
    return Logger(folder=str(out), output_formats=outputs)
