"""Settings of the learner (env: GENSAR_LEARNER__*). Where it reads and writes is the layout's
(gensar.layout.Layout: the registry, base models and maps in the artifact store)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from gensar.settings import StrictSettings


class LoraSettings(BaseModel):
    """The adapters' shape (learner.lora). Kept here, not beside the PEFT code, so reading
    settings never imports torch: the learner's intake actor starts in seconds."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: every linear layer of the architecture's blocks


class RefreshTraining(BaseModel):
    """How one LoRA refresh trains: a short pass over recent + replayed samples."""

    model_config = ConfigDict(extra="forbid")

    # Whole user sequences read ~15x fewer tokens an epoch than one sample at a time, so a
    # refresh affords more epochs and smaller batches (more steps): on one window of 3,000
    # stream samples, 3 epochs of 512-token batches moved the gate's rec HR@10 +0.038
    # [+0.023, +0.057] against the base in 16.6 s; 1 epoch of 4,096, +0.005 in 14.0 s; the
    # per-sample recipe, +0.020 in 30.2 s (bench/results/refresh_recipe.md).
    epochs: float = Field(3.0, gt=0)
    batch_tokens: int = Field(512, ge=16)  # tokens per batch of user-sequence windows
    learning_rate: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0)


class CollaborativeSettings(BaseModel):
    """The collaborative updater (learner.collaborative); drift threshold: GENSAR_IDS__DRIFT_THRESHOLD."""

    model_config = ConfigDict(extra="forbid")

    every_seconds: float = Field(30.0, ge=0)  # one step this often; 0: no updater (the map stays as bootstrapped)
    epochs: int = Field(1, ge=1)  # SGNS passes over a step's new interactions
    cold_start_neighbours: int = Field(10, ge=1)  # semantic neighbours lending a new item its collaborative vector


class LearnerSettings(StrictSettings):
    model_config = SettingsConfigDict(env_prefix="GENSAR_LEARNER__")

    # Schedule: refresh after this many new samples, or this long after the last refresh
    # once at least `min_samples` arrived, whichever comes first.
    refresh_every_samples: int = Field(2000, ge=1)
    refresh_every_seconds: float = Field(300.0, gt=0)
    min_samples: int = Field(200, ge=1)
    window: int = Field(4096, ge=1)  # recent samples kept for the next refresh
    replay: int = Field(8192, ge=0)  # reservoir of older samples replayed against forgetting
    holdout_fraction: float = Field(0.15, gt=0, lt=1)  # newest share of a window held out for the gate
    # Gate (learner.refresh.gate): candidate and serving version rank the same held-out
    # recent events, each among `gate_negatives` others (the paper protocol:
    # learner.refresh.GateCases), and are compared per task with a paired bootstrap of the
    # per-case difference. "Not worse" on a metric: the interval's upper bound >= 0 and the
    # mean difference >= -gate_margin. A task with fewer than `gate_min_cases` cases is
    # not decided: when one case in five is ranked differently by the two versions, the
    # 95% interval of the HR@10 difference at 100 cases is about +-0.09 (1.96 *
    # sqrt(0.2 / 100)), as wide as the gains a refresh can show; below that a handful of
    # cases would swing the point estimate by more than the margin.
    gate_margin: float = Field(0.02, ge=0)
    gate_negatives: int = Field(99, ge=1)
    gate_min_cases: int = Field(100, ge=1)
    # History prior (model.history): each refresh scores up to `prior_cases` of its newest
    # training samples per task with the serving version, which has not trained on them,
    # and refits the candidate's prior weights on the newest `prior_pool` cases scored so
    # far; a task with fewer than `prior_min_cases` keeps the serving version's weights.
    # The bootstrap fits them on a few dozen held-out searches; the stream brings more.
    prior_pool: int = Field(1000, ge=0)  # 0: never refitted, every version keeps the base model's prior
    prior_cases: int = Field(150, ge=1)
    prior_min_cases: int = Field(100, ge=1)
    adapters: Literal["joint", "per-task"] = "joint"
    lora: LoraSettings = LoraSettings()
    training: RefreshTraining = RefreshTraining()
    collaborative: CollaborativeSettings = CollaborativeSettings()
    device: str = "auto"  # "auto": a GPU when the worker has one
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9109, ge=0, le=65535)  # 0: no metrics server
    seed: int = 0

