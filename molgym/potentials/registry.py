"""``load_potential(spec)``: the one way to get a potential by name or by file.

Specs:

- ``"default"``: the MACE model molgym ships (``molgym/potentials/models/default.model``), checked against the
  sha256 in its model card before it is unpickled; with its committee (``default-committee.npz``, also
  sha256-checked) when that ships, so ``uncertainties()`` works (:mod:`molgym.potentials.committee`);
- ``"xtb"`` / ``"gfn2-xtb"``, ``"gfn1-xtb"``, ``"ipea1-xtb"``: tblite;
- ``"pm6"``: SCINE Sparrow (the ``pm6`` extra);
- a path to any MACE model file.

Backends are imported only when asked for, so ``import molgym`` never pulls in torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from molgym.potentials.base import Potential

MODELS_DIR = Path(__file__).parent / "models"
SHIPPED_MODELS = ("default",)
_NAMED = ("default", "xtb", "gfn2-xtb", "gfn1-xtb", "ipea1-xtb", "pm6")
#: the named specs ``load_potential`` accepts besides model files
NAMED_SPECS = _NAMED
_ALIASES = {"gfn2-xtb": "xtb"}


class ModelNotAvailableError(FileNotFoundError):
    """A shipped model that this installation does not have (yet)."""


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, what: str, record: str, advice: str = "") -> Path:
    """``path`` if its sha256 is ``expected``; else a ``ValueError`` naming the file (``what``), the record it
    was checked against and both hashes. Every shipped file (model, committee, agent checkpoint) passes here before
    it is loaded."""
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(f"{what} {path} does not match {record} (sha256 {actual} != {expected}){advice}")
    return path


def shipped_model_card(name: str = "default") -> dict:
    """The JSON model card of a shipped model."""
    card = MODELS_DIR / f"{name}.json"
    if name not in SHIPPED_MODELS or not card.is_file():
        raise ModelNotAvailableError(
            f"molgym has no shipped model {name!r} in this installation (looked for {card}). "
            "Until the trained default MACE model ships, use 'xtb', 'pm6' or the path of a MACE model file."
        )
    return json.loads(card.read_text())


def shipped_committee_path(name: str = "default") -> Path | None:
    """Path of the committee heads shipped for model ``name`` (sha256-checked), or ``None`` if none ships."""
    card_path = MODELS_DIR / f"{name}-committee.json"
    if not card_path.is_file():
        return None
    card = json.loads(card_path.read_text())
    path = MODELS_DIR / card["file"]
    if not path.is_file():
        raise ModelNotAvailableError(f"the committee card for {name!r} names {path}, which is missing")
    return check_sha256(path, card["sha256"], "shipped committee", "its card")


def shipped_model_path(name: str = "default") -> Path:
    """Path of a shipped model file, after checking it against the sha256 in its model card."""
    card = shipped_model_card(name)
    path = MODELS_DIR / card["file"]
    if not path.is_file():
        raise ModelNotAvailableError(f"the model card for {name!r} names {path}, which is missing")
    return check_sha256(path, card["sha256"], "shipped model", "its model card",
                        "; refusing to unpickle it. Reinstall molgym.")


class ProvisionalModelWarning(UserWarning):
    """The shipped model works but does not yet meet molgym's accuracy targets (see its model card)."""


#: Environment variable listing the provisional models (``name:sha256-prefix``, comma-separated) this run has
#: already warned about. The first warning sets it, so the warning is printed once per process, and worker
#: processes started afterwards (``molgym bench`` jobs, which load the potential again) inherit it and stay quiet.
WARNED_ENV = "MOLGYM_PROVISIONAL_WARNED"


def _warn_if_provisional(name: str) -> None:
    """Warn (:class:`ProvisionalModelWarning`) that shipped model ``name`` is not a release, once per run."""
    card = shipped_model_card(name)
    status = card.get("status", "release")
    if status != "release":
        import warnings

        key = f"{name}:{str(card.get('sha256', ''))[:16]}"
        warned = [k for k in os.environ.get(WARNED_ENV, "").split(",") if k]
        if key in warned:
            return
        os.environ[WARNED_ENV] = ",".join([*warned, key])
        warnings.warn(
            f"the shipped '{name}' MACE model is {status}: its test errors exceed molgym's accuracy targets "
            f"(figures in molgym/potentials/models/{name}.md); for reference-quality rewards use potential='xtb'",
            ProvisionalModelWarning,
            stacklevel=3,
        )


def resolve_potential_spec(spec: str | None = "auto") -> tuple[str, str]:
    """``(spec, why)``: ``"auto"`` (or ``None``) means the shipped MACE ``"default"`` when this installation has
    it, else ``"xtb"``; other specs pass through."""
    if spec not in (None, "auto"):
        return str(spec), "requested"
    try:
        shipped_model_path("default")
    except (ModelNotAvailableError, ValueError) as err:
        return "xtb", f"auto: shipped default MACE model unavailable ({type(err).__name__}); fell back to GFN2-xTB"
    return "default", "auto: shipped default MACE model"


def canonical_spec(spec: str | os.PathLike) -> str:
    """One key per distinct potential: named specs lower-cased with aliases folded (``"GFN2-xTB"`` -> ``"xtb"``),
    file paths made absolute and resolved. Used to share one loaded potential between callers."""
    text = str(spec).strip()
    lower = text.lower()
    if lower in _NAMED:
        return _ALIASES.get(lower, lower)
    return os.path.realpath(os.path.expanduser(text))


def load_potential(spec: str | os.PathLike | Potential = "default", device: str | None = None, **options) -> Potential:
    """Load a potential by spec (see module docstring). A ``Potential`` passes through unchanged.

    ``device`` applies to MACE models; ``options`` go to the backend's constructor (e.g. ``dtype="float64"``
    for MACE, ``accuracy=0.1`` for xTB). For MACE, ``committee=`` the path of committee heads (``.npz``) adds
    uncertainties; for ``"default"`` the shipped committee is attached unless ``committee=False``.
    """
    if isinstance(spec, Potential):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"potential spec must be a string, a path or a Potential, got {type(spec).__name__}")
    key = str(spec).strip()
    lower = key.lower()
    if lower == "default":
        from molgym.potentials.mace import MACEPotential

        path = shipped_model_path("default")
        _warn_if_provisional("default")
        committee = options.pop("committee", True)
        if committee is True:
            committee = shipped_committee_path("default")
        return _mace(path, device, committee or None, name="MACE(default)", **options)
    if lower in ("xtb", "gfn2-xtb", "gfn1-xtb", "ipea1-xtb"):
        from molgym.potentials.xtb import XTB_METHODS, XTBPotential

        return XTBPotential(method=XTB_METHODS[lower], **options)
    if lower == "pm6":
        from molgym.potentials.pm6 import PM6Potential

        return PM6Potential(**options)
    path = Path(key).expanduser()
    if path.exists() or path.suffix in (".model", ".pt", ".pth") or os.sep in key:
        return _mace(path, device, options.pop("committee", None), **options)
    raise ValueError(
        f"unknown potential {key!r}: expected one of {', '.join(repr(s) for s in _NAMED)} "
        "or the path of a MACE model file"
    )


def _mace(path, device, committee, **options) -> Potential:
    """A MACE potential, with a last-layer committee when ``committee`` (heads or their ``.npz`` path) is given."""
    if committee is None:
        from molgym.potentials.mace import MACEPotential

        if options.pop("correct", False):
            raise ValueError("correct=True needs a committee (committee='heads.npz') whose mean it adds")
        return MACEPotential(path, device=device, **options)
    from molgym.potentials.committee import CommitteeMACEPotential

    return CommitteeMACEPotential(path, committee, device=device, **options)
