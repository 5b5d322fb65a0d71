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
    log_path, curve_path = out / "train.log", out / "learning_curve.csv"

    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        config = ModelConfig.from_dict(state["config"])
    config = config or ModelConfig()
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

    torch.manual_seed(settings.seed)  # parameter initialisation only; everything else uses explicit generators
    model = EnergyDenoiser(config).to(device)
    ema = EnergyDenoiser(config).to(device)
    ema.load_state_dict(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    step, seconds, history = 0, 0.0, []
    if state is not None:
        # a checkpoint is always stored on the CPU; load_state_dict copies into the model's device
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, history = int(state["step"]), float(state["seconds"]), list(state.get("history", []))
        _log(log_path, f"resumed at step {step} ({seconds:.0f} s trained)")
    else:
        _log(log_path, f"new run: {len(train_data)} training molecules, config {config.as_dict()}, "
                       f"settings {asdict(settings)}")
    for p in ema.parameters():
        p.requires_grad_(False)

    steps_per_epoch = max(1, len(train_data) // settings.batch_size)
    limits = [settings.max_steps] if settings.max_steps is not None else []
    if settings.epochs is not None:
        limits.append(int(math.ceil(settings.epochs * steps_per_epoch)))
    final_step = min(limits) if limits else None
    sizes = size_distribution(train_data.sizes).tolist()

    def cpu(state_dict: dict) -> dict:
        return {k: v.detach().cpu() for k, v in state_dict.items()}

    def snapshot(full: bool) -> dict:
        s = {"config": config.as_dict(), "model": cpu(model.state_dict()), "ema": cpu(ema.state_dict()),
             "size_distribution": sizes, "step": step, "epoch": step / steps_per_epoch, "seconds": seconds,
             "settings": asdict(settings), "threads": torch.get_num_threads(),
             "train_molecules": len(train_data)}
        if full:
            s["optimizer"] = optimizer.state_dict()
            s["history"] = history
        return s

    def write_checkpoints() -> None:
        save_checkpoint(ckpt_path, snapshot(True))
        save_checkpoint(out / "model.pt", snapshot(False))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=final_step, initial=step, unit="step", desc="diffusion train", dynamic_ncols=True)
    start = time.perf_counter()
    run_losses: list[tuple[float, float, float]] = []
    order, order_epoch = None, -1
    stop_reason = "max steps/epochs"
    try:
        while final_step is None or step < final_step:
            if settings.time_limit is not None and time.perf_counter() - start >= settings.time_limit:
                stop_reason = "time limit"
                break
            epoch, within = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order = np.random.default_rng([settings.seed, epoch]).permutation(len(train_data))
                order_epoch = epoch
            idx = order[within * settings.batch_size:(within + 1) * settings.batch_size]
            gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
            t0 = time.perf_counter()
            batch = train_data.batch(idx).to(device)
            sigma = sample_sigma(len(idx), settings.p_mean, settings.p_std, gen)
            lr = settings.lr * min(1.0, (step + 1) / max(1, settings.warmup_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, loss_x, loss_h = edm_loss(model, batch, sigma, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}; last checkpoint kept")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            with torch.no_grad():
                decay = min(settings.ema_decay, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(decay).add_(pm, alpha=1 - decay)
            step += 1
            seconds += time.perf_counter() - t0
            run_losses.append((loss.item(), loss_x.item(), loss_h.item()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean([r[0] for r in run_losses]):.3f}", epoch=f"{step / steps_per_epoch:.2f}")
            if step % settings.log_every == 0 or step == final_step:
                row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "seconds": round(seconds, 1),
                       "train_loss": round(float(np.mean([r[0] for r in run_losses])), 5),
                       "train_loss_x": round(float(np.mean([r[1] for r in run_losses])), 5),
                       "train_loss_h": round(float(np.mean([r[2] for r in run_losses])), 5), "lr": lr}
                if step % settings.valid_every == 0 or step == final_step:
                    t1 = time.perf_counter()
                    row["valid_loss"] = round(validation_loss(ema, valid_data, settings.valid_molecules,
                                                              p_mean=settings.p_mean, p_std=settings.p_std,
                                                              device=device), 5)
                    seconds += time.perf_counter() - t1
                history.append(row)
                _append_curve(curve_path, row)
                _log(log_path, " ".join(f"{k}={v}" for k, v in row.items()))
                run_losses = []
            if step % settings.checkpoint_every == 0:
                write_checkpoints()
            if settings.snapshot_every and step % settings.snapshot_every == 0:
                save_checkpoint(out / "snapshots" / f"model-{step:07d}.pt", snapshot(False))
    except KeyboardInterrupt:
        stop_reason = "interrupted"
        write_checkpoints()
        _log(log_path, f"interrupted at step {step}; checkpoint written")
        raise
    finally:
        if bar is not None:
            bar.close()
    write_checkpoints()
    _log(log_path, f"stopped ({stop_reason}) at step {step}, epoch {step / steps_per_epoch:.3f}, {seconds:.0f} s")
    return {"step": step, "epoch": step / steps_per_epoch, "seconds": seconds, "stop_reason": stop_reason,
            "checkpoint": str(ckpt_path), "model": str(out / "model.pt"),
            "last": history[-1] if history else None}
