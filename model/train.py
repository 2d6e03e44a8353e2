"""Training: a plain PyTorch loop over the task mixture, on CPU or CUDA.

`train_step` is the unit the learner reuses (LoRA-tuning with PEFT wraps the same model);
`train` adds epochs over the task mixture, a time budget, progress bars, and checkpoints
it resumes from. The learning rate warms up, then decays on a cosine over the run's
progress, measured in steps or in the time budget, whichever is further along, so a
time-boxed run still ends at a low rate.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from model.tasks import Sample, TaskMix, epoch_order


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(2e-3, gt=0)  # small transformer from scratch: a high rate with warmup
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0)  # short: a time-boxed CPU run has only a few hundred steps
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_minutes: float | None = Field(None, gt=0)  # stop (and finish the schedule) by this time
    checkpoint_every: int = Field(0, ge=0)  # steps; 0: only at the end (when a directory is given)
    log_every: int = Field(50, ge=1)  # steps per entry of the report's loss curve
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def collate(samples: Sequence[Sample], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Pad a batch: input_ids/attention_mask (B, S), labels (B, T) with -100 on padding."""
    s = max(len(x.source) for x in samples)
    t = max(len(x.target) for x in samples)
    input_ids = torch.full((len(samples), s), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), t), -100, dtype=torch.long)
    for i, x in enumerate(samples):
        input_ids[i, : len(x.source)] = torch.tensor(x.source)
        labels[i, : len(x.target)] = torch.tensor(x.target)
    return {"input_ids": input_ids.to(device), "attention_mask": (input_ids != pad_id).long().to(device),
            "labels": labels.to(device)}


def make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=settings.learning_rate)


def learning_rate(settings: TrainSettings, step: int, progress: float) -> float:
    """Warmup over steps, then cosine from the peak to min_lr_ratio x peak over progress in [0, 1]."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    floor = settings.min_lr_ratio
    return settings.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_step(model: PreTrainedModel, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               lr: float | None = None, grad_clip: float = 1.0) -> float:
    """One optimisation step on a collated batch; returns the loss (mean token cross-entropy)."""
    model.train()
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    loss = model(**batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


@dataclass
class TrainReport:
    device: str
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    epochs_done: float = 0.0
    samples_per_epoch: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss per `log_every` steps
    resumed_from_step: int = 0
    stopped_by: str = "epochs"

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / self.epochs_done if self.epochs_done else float("nan")

    def to_json(self) -> dict:
        return {**asdict(self), "samples_per_second": self.samples_per_second, "seconds_per_epoch": self.seconds_per_epoch}


# --- checkpoints ------------------------------------------------------------------------------


def save_checkpoint(directory: Path, model, optimizer, state: dict) -> None:
    """model.safetensors + optimizer.pt + state.json, swapped in atomically."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_model(model, str(staging / "model.safetensors"))
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    (staging / "state.json").write_text(json.dumps(state))
    for f in staging.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: Path, model, optimizer) -> dict | None:
    directory = Path(directory)
    if not (directory / "state.json").exists():
        return None
    load_model(model, str(directory / "model.safetensors"), device=str(next(model.parameters()).device))
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location=next(model.parameters()).device))
    return json.loads((directory / "state.json").read_text())


# --- the loop ---------------------------------------------------------------------------------


def train(model: PreTrainedModel, pools: dict[str, list[Sample]], mix: TaskMix, settings: TrainSettings,
          pad_id: int, checkpoint_dir: Path | None = None, progress: bool = True) -> TrainReport:
    """Train over the task mixture until `epochs` or `max_minutes`, resuming from
    `checkpoint_dir` when it holds a checkpoint of an earlier (interrupted) run."""
    device = pick_device(settings.device)
    model.to(device)
    optimizer = make_optimizer(model, settings)
    report = TrainReport(device=str(device))
    state = {"step": 0, "epoch": 0, "offset": 0, "elapsed": 0.0}
    if checkpoint_dir is not None:
        state = load_checkpoint(checkpoint_dir, model, optimizer) or state
        report.resumed_from_step = state["step"]
    budget = settings.max_minutes * 60 if settings.max_minutes else None
    per_epoch = len(epoch_order(pools, mix, settings.seed, 0))
    if per_epoch == 0:
        raise ValueError("the task mixture selects no samples")
    report.samples_per_epoch = per_epoch
    total_steps = math.ceil(settings.epochs * per_epoch / settings.batch_size)
    started = time.perf_counter() - state["elapsed"]
    window: list[float] = []
    bar = tqdm(total=total_steps, initial=state["step"], disable=not progress, desc="train", unit="step")
    step, epoch, offset = state["step"], state["epoch"], state["offset"]
    while step < total_steps:
        order = epoch_order(pools, mix, settings.seed, epoch)
        while offset < len(order) and step < total_steps:
            elapsed = time.perf_counter() - started
            if budget is not None and elapsed >= budget:
                report.stopped_by = "time"
                break
            batch = collate(order[offset: offset + settings.batch_size], pad_id, device)
            done = max(step / total_steps, elapsed / budget if budget else 0.0)
            loss = train_step(model, batch, optimizer, learning_rate(settings, step, done), settings.grad_clip)
            report.samples += batch["input_ids"].shape[0]
            offset += settings.batch_size
            step += 1
            window.append(loss)
            if len(window) == settings.log_every:
                report.losses.append(sum(window) / len(window))
                window.clear()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch)
            if checkpoint_dir is not None and settings.checkpoint_every and step % settings.checkpoint_every == 0:
                save_checkpoint(checkpoint_dir, model, optimizer, {"step": step, "epoch": epoch, "offset": offset,
                                                                   "elapsed": time.perf_counter() - started})
        if report.stopped_by == "time":
            break
        epoch, offset = epoch + 1, 0
    bar.close()
    if window:
        report.losses.append(sum(window) / len(window))
    report.steps = step - report.resumed_from_step
    report.seconds = time.perf_counter() - started - state["elapsed"]
    report.epochs_done = report.samples / per_epoch
    if checkpoint_dir is not None:
        save_checkpoint(checkpoint_dir, model, optimizer, {"step": step, "epoch": epoch, "offset": offset,
                                                           "elapsed": time.perf_counter() - started})
    model.eval()
    return report
