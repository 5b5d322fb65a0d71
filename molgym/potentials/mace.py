"""MACE force fields (mace-torch) as molgym potentials, evaluated in batches.

Any MACE model file loads here: molgym's shipped default, MACE-OFF23, MACE-MP-0, or one a user trained. A whole
list of structures goes through **one** forward pass (chunked only to bound memory), which is what makes the
vectorised environments fast.

The graph is built here, directly in the model's dtype and on its device, rather than through
``mace.data.AtomicData``: that path creates tensors in torch's *global* default dtype, and molgym never touches
that global. Molecules are isolated (no periodic images), so the neighbour list is all pairs within ``r_max``.

Loading a model file unpickles it, which runs code from the file: load only files you trust.

On the CPU a batched call allocates and frees tensors of tens of MB (the edge messages: edges x 288 floats for the
default model). With glibc's default malloc settings those blocks are often handed back to the operating system
when freed and page-faulted in again by the next call; measured on the 2-core machine, some processes took 4,000-
9,000 page faults per batched call and their mean call time rose by up to 55%. A CPU ``MACEPotential`` therefore
asks glibc, once per process, to keep freed memory for reuse (:func:`keep_freed_memory`). Set
``MOLGYM_KEEP_FREED_MEMORY=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from molgym.potentials.base import Potential

_DTYPES = ("float32", "float64")


def _torch():
    # mace must be imported before e3nn touches torch.load (e3nn 0.4.4 loads its constants file with torch.load,
    # which needs mace's safe-globals set-up on torch >= 2.6).
    import mace  # noqa: F401
    import torch

    return torch


def default_device() -> str:
    """``"cuda"`` when a GPU is visible to torch, else ``"cpu"``."""
    torch = _torch()
    return "cuda" if torch.cuda.is_available() else "cpu"


#: glibc ``mallopt`` parameters (malloc.h): M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30
_kept_freed_memory: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep up to 1 GiB of freed memory in the process instead of returning it to the OS.

    Without it, the large tensors of a batched MACE call are often unmapped when freed and page-faulted in again
    on the next call (see the module docstring for the measured cost). Process-wide and done once; the price is
    that the process keeps its peak heap (up to 1 GiB of it) after large calls. Does nothing, and returns False,
    when the C library is not glibc or ``MOLGYM_KEEP_FREED_MEMORY=0`` is set; True when the setting is in force.
    """
    global _kept_freed_memory
    if _kept_freed_memory is None:
        _kept_freed_memory = False
        if os.environ.get("MOLGYM_KEEP_FREED_MEMORY", "1") != "0" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
            except OSError:
                return False
            # both are needed: setting either one switches off glibc's dynamic mmap threshold
            _kept_freed_memory = bool(
                libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
            )
    return _kept_freed_memory


def load_mace_model(path: str | os.PathLike, device: str = "cpu"):
    """Unpickle a MACE model file onto ``device``; clear errors for missing, corrupt or non-MACE files."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MACE model file {str(path)!r} does not exist")
    try:
        model = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # pickle, zip and torch errors all mean "not a loadable model"
        try:
            model = torch.jit.load(str(path), map_location=device)
        except Exception:
            raise ValueError(f"could not load MACE model file {str(path)!r}: {type(err).__name__}: {err}") from err
    if isinstance(model, dict) or not hasattr(model, "atomic_numbers") or not hasattr(model, "r_max"):
        raise ValueError(
            f"{str(path)!r} is not a MACE model file (expected a pickled mace-torch model with atomic_numbers "
            f"and r_max, got {type(model).__name__}); a training checkpoint must be converted to a model first"
        )
    return model


class MACEPotential(Potential):
    """A MACE model evaluated in batches.

    Args:
        model: a path to a MACE model file, or an already loaded mace-torch model.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: the GPU when present, else the CPU.
        dtype: ``"float32"`` or ``"float64"``; default: the dtype the model was saved in.
        name: display name; default: the file name.
        max_atoms_per_batch: structures are evaluated in chunks of at most this many atoms (memory bound).
        head: for multi-head models, the head to use (default: the model's first head).
        accelerate: swap the model's e3nn edge convolution and element-dependent skip connection for molgym's
            exact, faster CPU versions (:mod:`molgym.potentials.mace_cpu`; each swap is checked on random inputs
            first). Default: on when the device is the CPU. The swap is made on the model object itself, like
            the device and dtype conversion; :attr:`accelerated` lists the swapped modules.
    """

    capabilities = frozenset({"energies", "forces", "descriptors"})

    def __init__(
        self,
        model,
        device: str | None = None,
        dtype: str | None = None,
        name: str | None = None,
        max_atoms_per_batch: int = 20000,
        head: str | None = None,
        accelerate: bool | None = None,
    ):
        torch = _torch()
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        if accelerate not in (None, True, False):
            raise ValueError(f"accelerate must be True, False or None (on for the CPU), got {accelerate!r}")
        if max_atoms_per_batch < 1:
            raise ValueError(f"max_atoms_per_batch must be >= 1, got {max_atoms_per_batch}")
        self.device = device or default_device()
        if str(self.device).startswith("cpu"):
            keep_freed_memory()
        self.path: str | None = None
        if isinstance(model, (str, os.PathLike)):
            self.path = str(model)
            model = load_mace_model(model, self.device)
        model = model.to(self.device)
        model_dtype = next(model.parameters()).dtype
        self.dtype = getattr(torch, dtype) if dtype else model_dtype
        if self.dtype != model_dtype:
            model = model.to(self.dtype)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if accelerate is None:
            accelerate = str(self.device).startswith("cpu")
        if accelerate:
            from molgym.potentials.mace_cpu import accelerate as accelerate_modules

            accelerate_modules(model)
        self.model = model
        self.r_max = float(model.r_max)
        self.z_table = [int(z) for z in model.atomic_numbers]
        self._z_to_index = np.full(max(self.z_table) + 1, -1, dtype=np.int64)
        self._z_to_index[self.z_table] = np.arange(len(self.z_table))
        self.species = frozenset(self.z_table)
        self.max_atoms_per_batch = int(max_atoms_per_batch)
        heads = list(getattr(model, "heads", None) or ["Default"])
        if head is not None and head not in heads:
            raise ValueError(f"model has no head {head!r}; heads: {heads}")
        self.head_index = heads.index(head) if head is not None else 0
        self.name = name or (f"MACE({Path(self.path).name})" if self.path else "MACE")

    @property
    def accelerated(self) -> list[str]:
        """The modules of the model that are molgym's CPU replacements (:mod:`molgym.potentials.mace_cpu`), read
        from the model itself, so it is right also for a model another potential already accelerated."""
        from molgym.potentials.mace_cpu import swapped_modules

        return swapped_modules(self.model)

    # --- pickling: ship the weights, rebuild on the receiving side -------------------------------------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["device"] = str(self.device)
        return state

    # --- graph construction -----------------------------------------------------------------------------------
    def _chunks(self, structures: Sequence[Atoms]):
        start, atoms_in_chunk = 0, 0
        for i, atoms in enumerate(structures):
            if atoms_in_chunk and atoms_in_chunk + len(atoms) > self.max_atoms_per_batch:
                yield start, i
                start, atoms_in_chunk = i, 0
            atoms_in_chunk += len(atoms)
        if start < len(structures):
            yield start, len(structures)

    def _batch(self, structures: Sequence[Atoms]) -> dict:
        """The dict MACE's forward expects, built with numpy and moved to the device in one go."""
        torch = self._torch
        counts = np.array([len(a) for a in structures], dtype=np.int64)
        if np.any(counts == 0):
            raise ValueError("cannot evaluate a structure with no atoms")
        ptr = np.concatenate([[0], np.cumsum(counts)])
        positions = np.concatenate([a.positions for a in structures], axis=0)
        numbers = np.concatenate([a.numbers for a in structures])
        senders, receivers = [], []
        r2 = self.r_max**2
        for k, atoms in enumerate(structures):
            pos = atoms.positions
            d2 = np.sum((pos[:, None, :] - pos[None, :, :]) ** 2, axis=-1)
            np.fill_diagonal(d2, np.inf)
            i, j = np.nonzero(d2 < r2)
            senders.append(i + ptr[k])
            receivers.append(j + ptr[k])
        edge_index = np.stack([np.concatenate(senders), np.concatenate(receivers)])
        n_edges, n_graphs = edge_index.shape[1], len(structures)
        node_attrs = np.zeros((len(numbers), len(self.z_table)))
        node_attrs[np.arange(len(numbers)), self._z_to_index[numbers]] = 1.0
        dev, dt = self.device, self.dtype
        return {
            "positions": torch.tensor(positions, dtype=dt, device=dev),
            "node_attrs": torch.tensor(node_attrs, dtype=dt, device=dev),
            "edge_index": torch.tensor(edge_index, dtype=torch.long, device=dev),
            "shifts": torch.zeros((n_edges, 3), dtype=dt, device=dev),
            "unit_shifts": torch.zeros((n_edges, 3), dtype=dt, device=dev),
            "cell": torch.zeros((3 * n_graphs, 3), dtype=dt, device=dev),
            "batch": torch.repeat_interleave(
                torch.arange(n_graphs, device=dev), torch.tensor(counts, device=dev)
            ),
            "ptr": torch.tensor(ptr, dtype=torch.long, device=dev),
            "head": torch.full((n_graphs,), self.head_index, dtype=torch.long, device=dev),
        }

    @property
    def _torch(self):
        return _torch()

    def _forward(self, structures: list[Atoms], forces: bool):
        torch = self._torch
        for start, stop in self._chunks(structures):
            data = self._batch(structures[start:stop])
            ctx = torch.enable_grad() if forces else torch.no_grad()
            with ctx:
                out = self.model(data, training=False, compute_force=forces, compute_stress=False)
            yield start, stop, data, out

    # --- public API -------------------------------------------------------------------------------------------
    def energies(self, structures: Sequence[Atoms]) -> np.ndarray:
        self.check_species(structures)
        structures = list(structures)
        result = np.empty(len(structures), dtype=np.float64)
        for start, stop, _, out in self._forward(structures, forces=False):
            result[start:stop] = out["energy"].detach().cpu().double().numpy()
        return result

    def energies_and_forces(self, structures: Sequence[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        self.check_species(structures)
        structures = list(structures)
        energies = np.empty(len(structures), dtype=np.float64)
        forces: list[np.ndarray] = []
        for start, stop, data, out in self._forward(structures, forces=True):
            energies[start:stop] = out["energy"].detach().cpu().double().numpy()
            f = out["forces"].detach().cpu().double().numpy()
            ptr = data["ptr"].cpu().numpy()
            forces.extend(f[ptr[k] : ptr[k + 1]] for k in range(stop - start))
        return energies, forces

    def descriptors(self, structures: Sequence[Atoms], num_layers: int | None = None) -> list[np.ndarray]:
        """Per-atom invariant (l=0) node features of the first ``num_layers`` interaction layers (default all).

        These are the MACE descriptors SiMGen's similarity kernel works on.
        """
        self.check_species(structures)
        structures = list(structures)
        layers = int(self.model.num_interactions) if num_layers is None else int(num_layers)
        if not 1 <= layers <= int(self.model.num_interactions):
            raise ValueError(f"num_layers must be in 1..{int(self.model.num_interactions)}, got {num_layers}")
        columns = self._invariant_columns(layers)
        result: list[np.ndarray] = []
        for start, stop, data, out in self._forward(structures, forces=False):
            feats = out["node_feats"][:, columns].detach().cpu().double().numpy()
            ptr = data["ptr"].cpu().numpy()
            result.extend(feats[ptr[k] : ptr[k + 1]] for k in range(stop - start))
        return result

    def torch_descriptors(self, structures: Sequence[Atoms], positions=None, num_layers: int | None = None):
        """Differentiable per-atom invariant descriptors, for generators that follow their gradient (SiMGen).

        Args:
            structures: the molecules (their elements and, unless ``positions`` is given, their positions).
            positions: optional ``(n_atoms_total, 3)`` torch tensor replacing the positions of all structures
                concatenated; gradients flow from the descriptors back to it. The neighbour list is built from
                these positions at call time (MACE's smooth cutoff keeps the descriptors continuous).
            num_layers: interaction layers to include (default all).

        Returns:
            ``(features, ptr)``: a ``(n_atoms_total, n_features)`` tensor in the model's dtype on its device, and
            the numpy offsets of each structure's atoms.
        """
        self.check_species(structures)
        torch = self._torch
        structures = list(structures)
        if positions is not None:
            flat = positions.detach().cpu().double().numpy()
            if flat.shape != (sum(len(a) for a in structures), 3):
                raise ValueError(f"positions has shape {tuple(flat.shape)}, expected ({sum(map(len, structures))}, 3)")
            moved, start = [], 0
            for atoms in structures:
                copy = atoms.copy()
                copy.positions = flat[start : start + len(atoms)]
                moved.append(copy)
                start += len(atoms)
            structures = moved
        layers = int(self.model.num_interactions) if num_layers is None else int(num_layers)
        data = self._batch(structures)
        if positions is not None:
            moved_positions = positions.to(device=self.device, dtype=self.dtype)
            # MACE's forward calls requires_grad_(True) on its positions: never flip that flag on the caller's tensor
            data["positions"] = moved_positions if moved_positions.requires_grad else moved_positions.clone()
        with torch.enable_grad():
            out = self.model(data, training=False, compute_force=False, compute_stress=False)
        columns = torch.as_tensor(self._invariant_columns(layers), device=self.device)
        return out["node_feats"].index_select(1, columns), data["ptr"].cpu().numpy()

    def _invariant_columns(self, num_layers: int) -> np.ndarray:
        """Column indices of the scalar (0e) channels of each layer in MACE's concatenated node features."""
        from e3nn import o3

        columns, offset = [], 0
        for product in list(self.model.products)[:num_layers]:
            irreps = o3.Irreps(str(product.linear.irreps_out))
            for mul, ir in irreps:
                width = mul * ir.dim
                if ir.l == 0 and ir.p == 1:
                    columns.extend(range(offset, offset + width))
                offset += width
        return np.array(columns, dtype=np.int64)
