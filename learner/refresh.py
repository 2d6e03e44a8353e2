"""One refresh, end to end and without Ray: samples -> LoRA candidate -> gate -> registry.

    recent window ──┬─ oldest (1 - holdout) ─┐
                    │                        ├─▶ tune (LoRA) ─▶ candidate
    replay draw ────┼────────────────────────┘
                    └─ newest holdout ─▶ evaluate candidate AND serving version ─▶ gate

The held-out slice is the newest recent samples, so the gate asks what matters online:
is the candidate at least as good as what serves now on what users are doing now?
A candidate whose loss went non-finite, or that falls below the serving version by more
than the margin on either task, is published as rejected with the reason, never promoted.

Identifier maps: with a map store, each refresh trains against the LATEST map version
(the collaborative updater's, learner.collaborative), and the serving version is scored
with the map it was trained on; both rank the same held-out cases among the same
candidates, drawn from the items both maps know.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import peft
import torch
import transformers

from evaluation.baselines import BM25Search
from evaluation.generative import GenerativeSystem
from evaluation.metrics import expected_metrics, rank_counts
from evaluation.protocols import Case, paper_candidates
from gensar.events import ModelVersion, TrainingSample
from identifiers.idmap import MapStore
from learner.lora import NonFiniteLoss, merged, save_adapter, tune
from learner.registry import Manifest, Registry, TrainingWindow
from learner.settings import LearnerSettings
from model.artifact import GenSARModel
from model.tasks import Renderer
from model.train import TrainSettings
from model.vocab import IdLayout

GATE_METRICS = ("HR@10", "NDCG@10")


# --- stream samples in the evaluation harness --------------------------------------------------


def as_case(sample: TrainingSample) -> Case:
    """A held-out sample as a harness case (the renderer reads its HistoryEntry history)."""
    return Case(sample.event_id, sample.task, "recent", sample.user_id, sample.target_item, sample.query,
                tuple(sample.events))


# --- the gate ----------------------------------------------------------------------------------


class GateCases:
    """The held-out samples both maps know, as harness cases with the paper protocol's
    candidate lists (the true item among `negatives` others: for rec, random items outside
    the user's history; for search, BM25 hard negatives for the query). Ranking among 100
    tells versions apart where the full catalogue's HR@10 is 0 for both on a few hundred
    cases; the same lists are used for the candidate and the serving version."""

    def __init__(self, samples: list[TrainingSample], item_ids: list[str], item_text: dict[str, str], negatives: int,
                 seed: int):
        self.item_index = {item: row for row, item in enumerate(item_ids)}
        bm25 = BM25Search([item_text.get(item, "") for item in item_ids])
        self.by_task: dict[str, tuple[list[Case], np.ndarray]] = {}
        for task in ("search", "rec"):
            cases = [as_case(s) for s in samples if s.task == task and s.target_item in self.item_index]
            if not cases:
                continue
            touched = defaultdict(set)
            for case in cases:
                touched[case.user_id] |= {self.item_index[e.item_id] for e in case.history if e.item_id in self.item_index}
            # a small catalogue offers fewer negatives outside a user's history
            fit = min(negatives, len(item_ids) - 1 - max(len(items) for items in touched.values()))
            self.by_task[task] = (cases, paper_candidates(None, self.item_index, cases, bm25, seed, fit, touched).rows)


def evaluate(gm: GenSARModel, renderer: Renderer, held_out: GateCases) -> dict[str, dict]:
    """HR@10 / NDCG@10 per task, with n, among each case's candidates, ranked by the exact
    log-likelihood of their identifiers (no beam can drop the true item)."""
    out = {}
    for task, (cases, candidates) in held_out.by_task.items():
        system = GenerativeSystem(f"gate-{task}", task, gm, renderer, held_out.item_index)
        scores = system.score(cases, candidates)
        per_case = expected_metrics(*rank_counts(scores, np.zeros(len(cases), np.int64)))  # column 0: the true item
        out[task] = {"n": len(cases), **{m: float(per_case[m].mean()) for m in GATE_METRICS}}
    return out


def gate(candidate: dict[str, dict], serving: dict[str, dict], margin: float) -> tuple[bool, str]:
    """Promote unless a gate metric of a task falls more than `margin` below serving."""
    falls = [f"{task} {m} {candidate[task][m]:.4f} < serving {serving[task][m]:.4f} - {margin}"
             for task in serving for m in GATE_METRICS
             if task in candidate and candidate[task][m] < serving[task][m] - margin]
    if not candidate:
        return False, "no held-out sample could be scored"
    if falls:
        return False, "regressed: " + "; ".join(falls)
    summary = ", ".join(f"{t} HR@10 {candidate[t]['HR@10']:.3f} (serving {serving.get(t, {}).get('HR@10', float('nan')):.3f})"
                        for t in candidate)
    return True, f"not worse than serving by more than {margin}: {summary}"


# --- one refresh -------------------------------------------------------------------------------


class Refresher:
    """Holds the base model and renders, tunes, gates and publishes refreshes. `renderer`
    is over the base model's map; `maps`, when given, is followed to its latest version."""

    def __init__(self, base: GenSARModel, base_name: str, renderer: Renderer, registry: Registry,
                 settings: LearnerSettings, task: str = "joint", maps: MapStore | None = None):
        self.base, self.base_name, self.base_renderer = base, base_name, renderer
        self.registry, self.settings, self.task, self.maps = registry, settings, task, maps
        self.renderer = renderer  # over the map the next refresh trains against
        self._renderers = {renderer.idmap.version: renderer}

    def renderer_for(self, version: str) -> Renderer:
        """The renderer over map `version`: the base's, the latest, or a serving version's."""
        if version not in self._renderers:
            if self.maps is None:
                raise ValueError(f"map {version} asked for, but this refresher follows no map store")
            idmap = self.maps.load(version)
            if IdLayout.of(idmap) != self.base.vocab.layout:
                raise ValueError(f"map {version} has layout {IdLayout.of(idmap)}, the base model {self.base.vocab.layout}")
            self._renderers[version] = Renderer(self.base.vocab, idmap, self.base_renderer.ds,
                                                self.base_renderer.item_text, self.base.render)
        return self._renderers[version]

    def run(self, recent: list[TrainingSample], replayed: list[TrainingSample], version: str) -> ModelVersion:
        """One refresh of this refresher's task: "joint" learns from every sample, a task
        adapter ("search" | "rec") only from its own and is gated on its own."""
        settings = self.settings
        if self.maps is not None and (latest := self.maps.latest()) != self.renderer.idmap.version:
            self.renderer = self.renderer_for(latest)
        if self.task != "joint":
            recent = [s for s in recent if s.task == self.task]
            replayed = [s for s in replayed if s.task == self.task]
        cut = max(1, int(len(recent) * (1 - settings.holdout_fraction)))
        train_part, holdout = recent[:cut], recent[cut:]
        samples = [s for s in map(self.renderer.training_sample, [*train_part, *replayed]) if s is not None]
        times = [s.timestamp for s in train_part]
        window = TrainingWindow(samples=len(samples), first_event_time=min(times, default=None),
                                last_event_time=max(times, default=None), replayed=len(replayed))
        train_settings = TrainSettings(epochs=settings.training.epochs, batch_tokens=settings.training.batch_tokens,
                                       learning_rate=settings.training.learning_rate,
                                       warmup_steps=settings.training.warmup_steps, device=settings.device,
                                       seed=settings.seed, log_every=1)  # refreshes are short: every step
        parent = self.registry.serving(self.task)
        serving_renderer = self.renderer_for(self.registry.manifest(parent).idmap_version) if parent \
            else self.base_renderer
        in_use = {r.idmap.version for r in (self.base_renderer, self.renderer, serving_renderer)}
        self._renderers = {v: r for v, r in self._renderers.items() if v in in_use}
        both_maps = [i for i in self.renderer.idmap.item_ids if i in serving_renderer.idmap]
        held_out = GateCases(holdout, both_maps, self.renderer.item_text, settings.gate_negatives, settings.seed)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            parent_dir = self.registry.fetch(parent, Path(tmp) / "parent")[1] if parent else None
            serving = self.base if parent_dir is None else self._with(merged(self.base.model, parent_dir),
                                                                      serving_renderer.idmap)
            adapter_dir, scores, report, rejected_for = Path(tmp) / "adapter", {}, None, None
            try:
                adapted, report = tune(self.base.model, samples, self.base.vocab, train_settings,
                                       settings.lora, init_adapter=parent_dir)
                save_adapter(adapted, adapter_dir)
                candidate = self._with(adapted.merge_and_unload().eval(), self.renderer.idmap)
                scores = {who: evaluate(gm, renderer, held_out)
                          for who, gm, renderer in (("candidate", candidate, self.renderer),
                                                    ("serving", serving, serving_renderer))}
            except NonFiniteLoss as exc:
                rejected_for = f"non-finite loss: {exc}"
                adapter_dir.mkdir()
                (adapter_dir / "REJECTED").write_text(rejected_for)
            manifest = Manifest(
                version=version, parent=parent, task=self.task, base_model=self.base_name,
                idmap_version=self.renderer.idmap.version, window=window,
                metrics={f"{who}:{task}": values for who, per_task in scores.items() for task, values in per_task.items()},
                libraries={"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
                refresh_seconds=time.perf_counter() - started, train_loss=report.losses if report else [])
            self.registry.publish(adapter_dir, manifest)
        if rejected_for is None:
            promote, reason = gate(scores["candidate"], scores["serving"], settings.gate_margin)
            if not promote:
                rejected_for = reason
        if rejected_for is not None:
            return self.registry.reject(version, rejected_for)
        return self.registry.promote(version, reason)

    def _with(self, model, idmap) -> GenSARModel:
        """The base model's artifact with other weights, for the map they were trained on."""
        return dataclasses.replace(self.base, model=model, idmap_version=idmap.version,
                                   idmap_fingerprint=idmap.fingerprint())
