"""File I/O shared by every command: atomic writes and reading structures.

Every result molgym writes goes through :func:`atomic_path`: the data is written to a temporary file in the same
directory and renamed over the target, so an interrupted run never leaves a half-written file that looks
complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ase import Atoms


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the result ordinary file permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically (indented, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_xyz(path: str | os.PathLike, structures: Sequence[Atoms]) -> None:
    """Write structures as extended XYZ atomically (``info`` and per-atom arrays included)."""
    import ase.io

    with atomic_path(path) as tmp:
        ase.io.write(tmp, list(structures), format="extxyz")


def read_structures(spec: str | os.PathLike) -> list[Atoms]:
    """All frames of a structure file ASE reads (extended XYZ, ...). For ``"qm9:N"`` specs as well, see
    :func:`molgym.data.qm9.read_data_spec`."""
    text = str(spec)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"structure file {text!r} does not exist")
    import ase.io

    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:
        raise ValueError(f"could not read structures from {text!r}: {err}") from err
    if not frames:
        raise ValueError(f"structure file {text!r} holds no structures")
    return frames


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
