"""The README's Python examples run as written (a placeholder model path becomes the shipped model's file)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
#: What the examples leave for the reader to fill in, and what the test puts there.
PLACEHOLDERS = {'"path/to/any.model"': "str(__import__('molgym.potentials.registry').potentials.registry"
                                        ".shipped_model_path())"}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(index):
    code = python_blocks()[index]
    for placeholder, value in PLACEHOLDERS.items():
        code = code.replace(placeholder, value)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"README example {index + 1} failed:\n{code}\n{done.stderr[-3000:]}"


def test_adding_a_generator_a_metric_or_a_task_takes_under_40_lines_each():
    text = README.read_text()
    section = text[text.index("### Adding a generator, a metric or a task"):]
    section = section[:section.index("\n### ", 10) if "\n### " in section[10:] else len(section)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 3 and all(len(b.strip().splitlines()) < 40 for b in blocks)
