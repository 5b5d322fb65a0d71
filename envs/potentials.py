"""One loaded potential per spec, shared by every environment in the process.

A MACE model takes seconds and hundreds of MB to load; 64 environments built with ``potential="default"`` must
share one copy (and a vector environment relies on it: its sub-environments' structures go through one batched
call of that one object).
"""

from __future__ import annotations

import os
import threading

from molgym.potentials.base import Potential

__all__ = ["shared_potential", "clear_potential_cache"]

_CACHE: dict[tuple[str, str | None], Potential] = {}
_LOCK = threading.Lock()


def _key(spec: str | os.PathLike, device: str | None) -> tuple[str, str | None]:
    from molgym.potentials.registry import canonical_spec

    return canonical_spec(spec), device


def shared_potential(spec: str | os.PathLike | Potential = "default", device: str | None = None) -> Potential:
    """The potential for ``spec``, loaded at most once per process (per spec and device).

    A :class:`~molgym.potentials.base.Potential` object passes through unchanged. Errors (unknown spec, missing
    model file, the default model not shipped yet) are raised by :func:`molgym.potentials.load_potential`.
    """
    if isinstance(spec, Potential):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"potential must be a spec string ('default', 'xtb', 'pm6', a MACE model path) or a Potential, "
            f"got {type(spec).__name__}"
        )
    key = _key(spec, device)
    with _LOCK:
        if key not in _CACHE:
            from molgym.potentials import load_potential

            _CACHE[key] = load_potential(spec, device=device)
        return _CACHE[key]


def clear_potential_cache() -> None:
    """Forget all shared potentials (the next environment loads its potential again)."""
    with _LOCK:
        _CACHE.clear()
