"""The demo's knobs: two profiles (full, quick) sized for a 2-core machine."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DemoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: int | None = Field(None, ge=100)  # keep only the N most active items (None: all)
    bootstrap_fraction: float = Field(0.7, gt=0, lt=1)  # first part by time: identifiers + base model
    replay_events: int | None = Field(None, ge=1)  # replay at most this many events after the cut
    replay_seconds: float = Field(300.0, gt=0)  # accelerated clock: the replayed span takes this long
    chunk_events: int = Field(200, ge=1)  # events produced per step of the replay loop
    eval_every: int = Field(10, ge=1)  # prequential: every search and every k-th interaction is predicted first
    rqvae_epochs: int = Field(100, ge=1)
    train_minutes: float = Field(4.0, gt=0)  # base model training budget
    train_epochs: float = Field(3.0, gt=0)
    # The base model trains on the bootstrap but its last prior_fraction (by time); up to
    # prior_cases of those held-out events per task fit its history prior (model.history).
    prior_fraction: float = Field(0.1, ge=0, lt=1)
    prior_cases: int = Field(200, ge=0)
    refresh_every_samples: int = Field(1500, ge=1)  # learner: refresh cadence during the replay
    learner_window: int = Field(3000, ge=1)
    learner_replay: int = Field(3000, ge=0)
    learner_epochs: float = Field(3.0, gt=0)  # LearnerSettings' default (bench/results/refresh_recipe.md)
    drain_seconds: float = Field(120.0, ge=0)  # after the replay: wait this long at most for the last refresh
    gate_min_cases: int = Field(100, ge=1)  # the learner's gate decides a task on at least this many held-out cases
    # The learner's stream refit of the history prior (LearnerSettings.prior_*): each refresh
    # scores up to prior_refit_cases training samples per task first; 0: never refitted.
    prior_refit_cases: int = Field(150, ge=0)
    prior_refit_min_cases: int = Field(100, ge=1)
    # The streaming popularity baseline's window in interactions; None: the best of
    # demo.baselines.WINDOWS on the bootstrap's last prior_fraction (never on the replay).
    popularity_window: int | None = Field(None, ge=1)
    qdrant: bool = True  # write the item vectors to embedded Qdrant (minutes on 2 cores)
    seed: int = 0  # the identifiers', the base model's and the learner's random draws

    def changes_to(self, other: "DemoSettings") -> dict[str, tuple]:
        """The settings `other` sets differently: name -> (this value, other's)."""
        return {k: (v, getattr(other, k)) for k, v in self if getattr(other, k) != v}


# The whole rest after the 70% cut (26,929 events of the 3,000 most active items, 1,618 of them
# real tag searches, most in its second half: MovieLens tags are sparse and bursty), every 20th
# interaction asked: at least 1,000 prequential cases per task (1,618 search, ~1,270 rec).
FULL = DemoSettings(items=3000, replay_events=None, replay_seconds=600, eval_every=20, rqvae_epochs=50)
QUICK = DemoSettings(items=600, replay_events=1500, replay_seconds=30, chunk_events=100, eval_every=10,
                     rqvae_epochs=20, train_minutes=0.6, train_epochs=2.0, prior_cases=60, refresh_every_samples=300,
                     learner_window=600, learner_replay=600, drain_seconds=60, qdrant=False,
                     # its refreshes hold out 30-90 samples, searches among them: the gate decides on
                     # fewer cases than the default asks, so the quick demo shows the machinery, not evidence
                     gate_min_cases=25,
                     # scoring 150 samples per task before each of its short refreshes took the
                     # quick demo from 161 s to 200 s; a few dozen still show the refit
                     prior_refit_cases=30, prior_refit_min_cases=25)
