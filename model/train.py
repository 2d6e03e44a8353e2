"""Training: a plain PyTorch loop over the task mixture, on CPU or CUDA.

Sequences are packed into batches of about `batch_tokens` tokens (similar lengths
together, so padding stays small); the loss is the weighted mean over every target token
of the batch (model.tasks: each token knows which task's loss covers it). An identifier
code is scored against its own level's K codes (model.modeling.code_logits), as decoding
does; a text piece against the text vocabulary.

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

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from model.modeling import parts
from model.tasks import Sample, TaskMix, epoch_order
from model.vocab import Vocabulary


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_tokens: int = Field(8192, ge=16)  # tokens per batch, padding included
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


def batches(order: Sequence[Sample], batch_tokens: int, seed: int, epoch: int) -> list[list[Sample]]:
    """Cut an epoch's order into batches of at most `batch_tokens` (B x longest): samples
    are sorted by length within spans of ~64 batches, then the batches are shuffled."""
    rng = np.random.default_rng([seed, epoch, 1])
    mean = max(1.0, float(np.mean([len(s.tokens) for s in order]))) if order else 1.0
    span = max(1, int(64 * batch_tokens / mean))
    out: list[list[Sample]] = []
    for start in range(0, len(order), span):
        batch: list[Sample] = []
        for s in sorted(order[start: start + span], key=lambda s: len(s.tokens)):
            if batch and (len(batch) + 1) * len(s.tokens) > batch_tokens:
                out.append(batch)
                batch = []
            batch.append(s)
        if batch:
            out.append(batch)
    return [out[i] for i in rng.permutation(len(out))]


def collate(samples: Sequence[Sample], vocab: Vocabulary, mix: TaskMix, device: torch.device | str = "cpu"
            ) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids (B, T), attention_mask (B, T), weights (B, T): the loss
    weight of predicting each token (0 for context and padding)."""
    t = max(len(s.tokens) for s in samples)
    by_kind = torch.tensor(mix.weights(), dtype=torch.float32)
    input_ids = torch.full((len(samples), t), vocab.pad_id, dtype=torch.long)
    kinds = torch.zeros((len(samples), t), dtype=torch.long)
    mask = torch.zeros((len(samples), t), dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, : len(s.tokens)] = torch.tensor(s.tokens)
        kinds[i, : len(s.kinds)] = torch.tensor(s.kinds)
        mask[i, : len(s.tokens)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "weights": by_kind[kinds].to(device)}


def token_losses(model: PreTrainedModel, vocab: Vocabulary, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 select: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every selected next token. select (B, T) bool marks the predicted
    positions (token t from the state at t - 1; select[:, 0] is ignored) -> (N,) losses in
    the order of select.nonzero()."""
    decoder, out_weight = parts(model)
    # Right padding under a causal mask: no real token can see a pad, so no padding mask is
    # needed, and without one SDPA takes its fused causal kernel (~2x faster on CPU).
    right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
    mask = None if right_padded else attention_mask
    hidden = decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, T, d)
    chosen = select[:, 1:]
    h = hidden[:, :-1][chosen]  # (N, d) the states that predict
    target = input_ids[:, 1:][chosen]  # (N,)
    k = vocab.layout.codebook_size
    slot = torch.div(target - vocab.text_size, k, rounding_mode="floor")  # (N,) id slot; < 0 for text
    is_id = (target >= vocab.text_size) & (target < vocab.id_end)
    losses = torch.zeros(len(target), device=h.device)
    for s in torch.unique(slot[is_id]).tolist():  # each id level against its own K codes
        at = is_id & (slot == s)
        logits = h[at] @ out_weight[vocab.text_size + s * k: vocab.text_size + (s + 1) * k].T  # (n, K)
        losses[at] = torch.nn.functional.cross_entropy(logits.float(), target[at] - vocab.text_size - s * k,
                                                       reduction="none")
    text = target < vocab.text_size
    if text.any():  # query and title pieces against the text vocabulary
        logits = h[text] @ out_weight[: vocab.text_size].T  # (n, V_text)
        losses[text] = torch.nn.functional.cross_entropy(logits.float(), target[text], reduction="none")
    return losses


def batch_loss(model: PreTrainedModel, vocab: Vocabulary, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weighted mean cross-entropy over the batch's target tokens."""
    weights = batch["weights"]
    losses = token_losses(model, vocab, batch["input_ids"], batch["attention_mask"], weights > 0)
    w = weights[:, 1:][weights[:, 1:] > 0]
    return (losses * w).sum() / w.sum().clamp(min=1e-8)


@torch.no_grad()
def mean_loss(model: PreTrainedModel, vocab: Vocabulary, samples: Sequence[Sample], mix: TaskMix,
              batch_tokens: int = 8192) -> float:
    """The weighted mean loss over `samples` (every one once), with the model in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    total = weight = 0.0
    for batch in batches(list(samples), batch_tokens, seed=0, epoch=0):
        b = collate(batch, vocab, mix, device)
        w = b["weights"][:, 1:][b["weights"][:, 1:] > 0]
        total += float((token_losses(model, vocab, b["input_ids"], b["attention_mask"], b["weights"] > 0) * w).sum())
        weight += float(w.sum())
    return total / max(weight, 1e-8)


def identifiers_in(batch: dict[str, torch.Tensor], vocab: Vocabulary) -> int:
    """Identifiers trained in a batch: runs of weighted id tokens."""
    ids = batch["input_ids"]
    target = (ids >= vocab.text_size) & (ids < vocab.id_end) & (batch["weights"] > 0)
    starts = target[:, 1:] & ~target[:, :-1]
    return int(starts.sum())


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


def train_step(model: PreTrainedModel, vocab: Vocabulary, batch: dict[str, torch.Tensor],
               optimizer: torch.optim.Optimizer, lr: float | None = None, grad_clip: float = 1.0) -> float:
    """One optimisation step on a collated batch; returns the loss."""
    model.train()
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    loss = batch_loss(model, vocab, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


@dataclass
class TrainReport:
    device: str
    steps: int = 0
    samples: int = 0  # sequences
    identifiers: int = 0  # identifier targets trained (item targets)
    tokens: int = 0  # real tokens read (no padding)
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
    def identifiers_per_second(self) -> float:
        return self.identifiers / self.seconds if self.seconds else 0.0

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / self.epochs_done if self.epochs_done else float("nan")

    def to_json(self) -> dict:
        return {**asdict(self), "samples_per_second": self.samples_per_second,
                "identifiers_per_second": self.identifiers_per_second, "seconds_per_epoch": self.seconds_per_epoch}


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
          vocab: Vocabulary, checkpoint_dir: Path | None = None, progress: bool = True) -> TrainReport:
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
    first = batches(epoch_order(pools, mix, settings.seed, 0), settings.batch_tokens, settings.seed, 0)
    if not first:
        raise ValueError("the task mixture selects no samples")
    report.samples_per_epoch = sum(map(len, first))
    total_steps = math.ceil(settings.epochs * len(first))
    started = time.perf_counter() - state["elapsed"]
    window: list[float] = []
    bar = tqdm(total=total_steps, initial=state["step"], disable=not progress, desc="train", unit="step")
    step, epoch, offset = state["step"], state["epoch"], state["offset"]
    while step < total_steps:
        order = first if epoch == 0 else batches(epoch_order(pools, mix, settings.seed, epoch), settings.batch_tokens,
                                                 settings.seed, epoch)
        while offset < len(order) and step < total_steps:
            elapsed = time.perf_counter() - started
            if budget is not None and elapsed >= budget:
                report.stopped_by = "time"
                break
            batch = collate(order[offset], vocab, mix, device)
            done = max(step / total_steps, elapsed / budget if budget else 0.0)
            loss = train_step(model, vocab, batch, optimizer, learning_rate(settings, step, done), settings.grad_clip)
            report.samples += len(order[offset])
            report.identifiers += identifiers_in(batch, vocab)
            report.tokens += int(batch["attention_mask"].sum())
            offset += 1
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
    report.epochs_done = report.samples / report.samples_per_epoch
    if checkpoint_dir is not None:
        save_checkpoint(checkpoint_dir, model, optimizer, {"step": step, "epoch": epoch, "offset": offset,
                                                           "elapsed": time.perf_counter() - started})
    model.eval()
    return report
