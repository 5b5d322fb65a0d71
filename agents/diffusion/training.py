"""Training the energy-based diffusion model with EDM's loss (``molgym diffusion train``).

One step: draw a batch of training molecules, a noise level per molecule ``ln sigma ~ N(P_mean, P_std^2)``,
noise for positions (projected to zero centre of mass) and element channels, and minimise EDM's weighted loss
``lambda(sigma) |D(y + n; sigma) - y|^2``, where ``D`` comes from the energy's gradient (so the backward pass
differentiates through a gradient: ``create_graph=True``). The data order is a seeded permutation per epoch,
so a resumed run sees exactly the batches the uninterrupted run would have seen.

Outputs under ``out``: ``checkpoint.pt`` (full state, for ``--resume``), ``model.pt`` (EMA weights only, for
sampling and shipping), ``learning_curve.csv``, ``train.log`` and, with ``snapshot_every``,
``snapshots/model-STEP.pt`` (EMA weights every so many steps, to measure sample quality along training).
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from molgym.agents.diffusion.checkpoint import load_checkpoint, save_checkpoint
from molgym.agents.diffusion.data import MoleculeSet, size_distribution
from molgym.agents.diffusion.model import EnergyDenoiser, ModelConfig, center

__all__ = ["TrainSettings", "edm_loss", "train", "validation_loss"]

CURVE_FIELDS = ("step", "epoch", "seconds", "train_loss", "train_loss_x", "train_loss_h", "valid_loss", "lr")


@dataclass
class TrainSettings:
    """Options of a training run (recorded in the checkpoint)."""

    batch_size: int = 64
    lr: float = 2e-3
    max_steps: int | None = None
    epochs: float | None = None
    time_limit: float | None = None  # seconds of this invocation
    seed: int = 0
    ema_decay: float = 0.998
    p_mean: float = -1.2
    p_std: float = 1.2
    grad_clip: float = 10.0
    warmup_steps: int = 200
    log_every: int = 25
    valid_every: int = 250
    checkpoint_every: int = 100
    valid_molecules: int = 256
    train_subset: int | None = None  # use only the first N training molecules (tests, smoke runs)
    snapshot_every: int | None = None  # also keep the EMA weights every N steps (snapshots/), for learning curves

    def check(self) -> None:
        """Raise ``ValueError`` for settings that cannot work, before any data is loaded."""
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max steps must be at least 1, got {self.max_steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time limit must be positive seconds, got {self.time_limit}")
        if self.max_steps is None and self.epochs is None and self.time_limit is None:
            raise ValueError("give at least one of max steps, epochs or a time limit, or training never stops")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise ValueError(f"snapshot interval must be at least 1 step, got {self.snapshot_every}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {self.ema_decay}")


def edm_loss(model: EnergyDenoiser, batch, sigma: torch.Tensor, generator: torch.Generator):
    """``(loss, loss_x, loss_h)``: EDM's weighted denoising loss for ``batch`` at per-molecule noise ``sigma``.

    Each term is the mean over nodes and components of ``lambda(sigma) (D - y)^2``; with EDM's weighting the
    target has unit variance, so both terms start near 1.
    """
    device = batch.x.device
    sigma = sigma.to(device)
    s = sigma[batch.batch].unsqueeze(-1)
    # noise is drawn on the CPU generator and moved, so a run is the same on every device
    noise_x = center(torch.randn(batch.x.shape, generator=generator).to(device), batch.batch, batch.num_graphs) * s
    noise_h = torch.randn(batch.h.shape, generator=generator).to(device) * s
    d_x, d_h, _ = model(batch.x + noise_x, batch.h + noise_h, sigma, batch.edge_index, batch.batch,
                        create_graph=True)
    loss_x = (model.pre_x.loss_weight(s) * (d_x - batch.x) ** 2).mean()
    loss_h = (model.pre_h.loss_weight(s) * (d_h - batch.h) ** 2).mean()
    n_x, n_h = batch.x.shape[1], batch.h.shape[1]
    loss = (n_x * loss_x + n_h * loss_h) / (n_x + n_h)
    return loss, loss_x, loss_h


def sample_sigma(n: int, p_mean: float, p_std: float, generator: torch.Generator) -> torch.Tensor:
    """EDM's training noise levels: ``ln sigma ~ N(p_mean, p_std^2)``."""
    return torch.exp(torch.randn(n, generator=generator) * p_std + p_mean)


@torch.no_grad()
def validation_loss(model: EnergyDenoiser, data: MoleculeSet, n: int = 256, seed: int = 1234,
                    batch_size: int = 64, p_mean: float = -1.2, p_std: float = 1.2, device: str = "cpu") -> float:
    """EDM loss on the first ``n`` molecules of ``data`` with fixed (seeded) noise: comparable across steps."""
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for lo in range(0, min(n, len(data)), batch_size):
        idx = np.arange(lo, min(lo + batch_size, n, len(data)))
        batch = data.batch(idx).to(device)
        sigma = sample_sigma(len(idx), p_mean, p_std, gen)
        with torch.enable_grad():
            loss, _, _ = edm_loss(model, batch, sigma, gen)
        total += loss.item() * len(idx)
        count += len(idx)
    return total / max(count, 1)


def _log(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")


def _append_curve(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CURVE_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in CURVE_FIELDS})


def _load_data(settings: TrainSettings, config: ModelConfig, train_data: MoleculeSet | None,
               valid_data: MoleculeSet | None) -> tuple[MoleculeSet, MoleculeSet]:
    """The training and validation sets (QM9's EDM split unless given), checked against the model's hydrogens."""
    if train_data is None:
        train_data = MoleculeSet.from_split("train", hydrogens=config.hydrogens)
    if settings.train_subset is not None:
        train_data = train_data.subset(settings.train_subset)
    if valid_data is None:
        valid_data = MoleculeSet.from_split("valid", hydrogens=config.hydrogens)
    for name, data in (("training", train_data), ("validation", valid_data)):
        if data.hydrogens != config.hydrogens:
            raise ValueError(f"the {name} data {'has' if data.hydrogens else 'lacks'} hydrogens but the model "
                             f"config says hydrogens={config.hydrogens}")
    return train_data, valid_data


class _Run:
    """The state of one training run (model, EMA, optimiser, step, seconds, history) and its files under ``out``:
    set up fresh or from ``out/checkpoint.pt``, advanced one optimiser step at a time, written atomically."""

    def __init__(self, out: Path, settings: TrainSettings, config: ModelConfig, state: dict | None,
                 train_data: MoleculeSet, valid_data: MoleculeSet, device: str):
        self.out, self.settings, self.config, self.device = out, settings, config, device
        self.train_data, self.valid_data = train_data, valid_data
        self.log_path, self.curve_path = out / "train.log", out / "learning_curve.csv"
        torch.manual_seed(settings.seed)  # parameter initialisation only; everything else uses explicit generators
        self.model = EnergyDenoiser(config).to(device)
        self.ema = EnergyDenoiser(config).to(device)
        self.ema.load_state_dict(self.model.state_dict())
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.step, self.seconds, self.history = 0, 0.0, []
        if state is not None:
            # a checkpoint is always stored on the CPU; load_state_dict copies into the model's device
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.seconds = int(state["step"]), float(state["seconds"])
            self.history = list(state.get("history", []))
            _log(self.log_path, f"resumed at step {self.step} ({self.seconds:.0f} s trained)")
        else:
            _log(self.log_path, f"new run: {len(train_data)} training molecules, config {config.as_dict()}, "
                                f"settings {asdict(settings)}")
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.steps_per_epoch = max(1, len(train_data) // settings.batch_size)
        limits = [settings.max_steps] if settings.max_steps is not None else []
        if settings.epochs is not None:
            limits.append(int(math.ceil(settings.epochs * self.steps_per_epoch)))
        self.final_step = min(limits) if limits else None
        self.sizes = size_distribution(train_data.sizes).tolist()
        self._order, self._order_epoch = None, -1
        self._losses: list[tuple[float, float, float]] = []

    # --- files ----------------------------------------------------------------------------------------------------
    def snapshot(self, full: bool) -> dict:
        """The run as a checkpoint dict: EMA weights and what sampling needs; with ``full`` also the optimiser and
        history that resuming needs."""
        def cpu(state_dict: dict) -> dict:
            return {k: v.detach().cpu() for k, v in state_dict.items()}

        s = {"config": self.config.as_dict(), "model": cpu(self.model.state_dict()), "ema": cpu(self.ema.state_dict()),
             "size_distribution": self.sizes, "step": self.step, "epoch": self.step / self.steps_per_epoch,
             "seconds": self.seconds, "settings": asdict(self.settings), "threads": torch.get_num_threads(),
             "train_molecules": len(self.train_data)}
        if full:
            s["optimizer"] = self.optimizer.state_dict()
            s["history"] = self.history
        return s

    def write_checkpoints(self) -> None:
        save_checkpoint(self.out / "checkpoint.pt", self.snapshot(True))
        save_checkpoint(self.out / "model.pt", self.snapshot(False))

    # --- one step ---------------------------------------------------------------------------------------------------
    def _batch_indices(self) -> np.ndarray:
        """This step's molecules: a seeded permutation per epoch, so a resumed run sees the same batches."""
        epoch, within = divmod(self.step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.settings.seed, epoch]).permutation(len(self.train_data))
            self._order_epoch = epoch
        size = self.settings.batch_size
        return self._order[within * size:(within + 1) * size]

    def advance(self) -> float:
        """One optimiser step (and the EMA update); returns the learning rate it used."""
        settings = self.settings
        idx = self._batch_indices()
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + self.step)
        t0 = time.perf_counter()
        batch = self.train_data.batch(idx).to(self.device)
        sigma = sample_sigma(len(idx), settings.p_mean, settings.p_std, gen)
        lr = settings.lr * min(1.0, (self.step + 1) / max(1, settings.warmup_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, loss_x, loss_h = edm_loss(self.model, batch, sigma, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step}; last checkpoint kept")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), settings.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            decay = min(settings.ema_decay, (1 + self.step) / (10 + self.step))
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.mul_(decay).add_(pm, alpha=1 - decay)
        self.step += 1
        self.seconds += time.perf_counter() - t0
        self._losses.append((loss.item(), loss_x.item(), loss_h.item()))
        return lr

    def running_loss(self) -> float:
        return float(np.mean([r[0] for r in self._losses]))

    def record(self, lr: float) -> None:
        """After a step: the learning-curve row (every ``log_every``; the validation loss every ``valid_every``),
        the checkpoint (every ``checkpoint_every``) and the snapshot (every ``snapshot_every``)."""
        settings, step = self.settings, self.step
        if step % settings.log_every == 0 or step == self.final_step:
            mean = [round(float(np.mean([r[k] for r in self._losses])), 5) for k in range(3)]
            row = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "seconds": round(self.seconds, 1),
                   "train_loss": mean[0], "train_loss_x": mean[1], "train_loss_h": mean[2], "lr": lr}
            if step % settings.valid_every == 0 or step == self.final_step:
                t1 = time.perf_counter()
                row["valid_loss"] = round(validation_loss(self.ema, self.valid_data, settings.valid_molecules,
                                                          p_mean=settings.p_mean, p_std=settings.p_std,
                                                          device=self.device), 5)
                self.seconds += time.perf_counter() - t1
            self.history.append(row)
            _append_curve(self.curve_path, row)
            _log(self.log_path, " ".join(f"{k}={v}" for k, v in row.items()))
            self._losses = []
        if step % settings.checkpoint_every == 0:
            self.write_checkpoints()
        if settings.snapshot_every and step % settings.snapshot_every == 0:
            save_checkpoint(self.out / "snapshots" / f"model-{step:07d}.pt", self.snapshot(False))


def train(out: str | Path, settings: TrainSettings, config: ModelConfig | None = None, resume: bool = False,
          progress: bool = True, train_data: MoleculeSet | None = None,
          valid_data: MoleculeSet | None = None, device: str = "cpu") -> dict:
    """Train (or resume) a model under ``out``; returns a summary (steps, epochs, seconds, last losses).

    ``resume=True`` continues from ``out/checkpoint.pt`` (its model config and step count win over ``config``).
    Stops at ``max_steps`` total steps, ``epochs`` total epochs or ``time_limit`` seconds of this call, whichever
    comes first, and always writes a checkpoint before returning (also on Ctrl-C).
    """
    settings.check()
    out = Path(out)
    ckpt_path = out / "checkpoint.pt"
    if resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    if not resume and ckpt_path.is_file():
        raise ValueError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        config = ModelConfig.from_dict(state["config"])
    config = config or ModelConfig()
    train_data, valid_data = _load_data(settings, config, train_data, valid_data)
    run = _Run(out, settings, config, state, train_data, valid_data, device)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=run.final_step, initial=run.step, unit="step", desc="diffusion train", dynamic_ncols=True)
    start = time.perf_counter()
    stop_reason = "max steps/epochs"
    try:
        while run.final_step is None or run.step < run.final_step:
            if settings.time_limit is not None and time.perf_counter() - start >= settings.time_limit:
                stop_reason = "time limit"
                break
            lr = run.advance()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{run.running_loss():.3f}", epoch=f"{run.step / run.steps_per_epoch:.2f}")
            run.record(lr)
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        run.write_checkpoints()
        _log(run.log_path, f"interrupted at step {run.step}; checkpoint written")
        raise
    finally:
        if bar is not None:
            bar.close()
    run.write_checkpoints()
    _log(run.log_path, f"stopped ({stop_reason}) at step {run.step}, epoch {run.step / run.steps_per_epoch:.3f}, "
                       f"{run.seconds:.0f} s")
    return {"step": run.step, "epoch": run.step / run.steps_per_epoch, "seconds": run.seconds,
            "stop_reason": stop_reason, "checkpoint": str(ckpt_path), "model": str(out / "model.pt"),
            "last": run.history[-1] if run.history else None}
