"""One refresh, end to end and without Ray: samples -> LoRA candidate -> gate -> registry.

    recent window ──┬─ oldest (1 - holdout) ─┐
                    │                        ├─▶ user sequences ─▶ tune (LoRA) ─▶ candidate
    replay draw ────┼────────────────────────┘
                    └─ newest holdout ─▶ evaluate candidate AND serving version ─▶ gate
    training part ─▶ scored by the serving version ─▶ prior pool ─▶ the candidate's prior weights

The trained samples are rendered as the base model was trained (model.tasks.Renderer.
stream_windows): one sequence per user in event order, the samples' events the targets,
their histories the context, cut into the base model's windows; a user's samples share
their context instead of each repeating its own history.

The held-out slice is the newest recent samples, so the gate asks what matters online:
is the candidate at least as good as what serves now on what users are doing now? It
decides on evidence (`gate`): a paired bootstrap interval per task, no verdict on a task
with too few cases, and a candidate it cannot tell apart from serving is promoted only when
it is fresher and not worse. The comparison and the case that decided are in the version's
manifest (`Manifest.gate`); a candidate whose loss went non-finite, or that the gate does
not promote, is published as rejected with the reason.

The candidate ranks with a history prior (model.history) refitted on the stream
(`PriorPool`): the bootstrap fits its weights on a few dozen held-out searches, the stream
brings hundreds, each scored by the version serving when it arrived, before any version
trained on it. The weights are in the manifest (`Manifest.prior`) and serving reads them
with the adapter; the gate compares the candidate with its prior against serving with its.

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
from evaluation.generative import GenerativeSystem, PriorEvidence, fit_weights, prior_evidence
from evaluation.metrics import expected_metrics, rank_counts, summarize as bootstrap
from evaluation.protocols import Case, paper_candidates
from gensar.events import ModelVersion, TrainingSample
from identifiers.idmap import MapStore
from learner.lora import NonFiniteLoss, merged, save_adapter, tune
from learner.registry import GateRecord, Manifest, PriorRecord, Registry, TaskComparison, TrainingWindow
from learner.settings import LearnerSettings
from model.artifact import GenSARModel
from model.history import HistoryPrior
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


def evaluate(gm: GenSARModel, renderer: Renderer, held_out: GateCases) -> dict[str, dict[str, np.ndarray]]:
    """Per task, per-case HR@10 / NDCG@10 among each case's candidates, ranked by the exact
    log-likelihood of their identifiers (no beam can drop the true item). Per case, not
    means: the gate pairs the candidate's and the serving version's answers case by case."""
    out = {}
    for task, (cases, candidates) in held_out.by_task.items():
        system = GenerativeSystem(f"gate-{task}", task, gm, renderer, held_out.item_index)
        scores = system.score(cases, candidates)
        per_case = expected_metrics(*rank_counts(scores, np.zeros(len(cases), np.int64)))  # column 0: the true item
        out[task] = {m: per_case[m] for m in GATE_METRICS}
    return out


def means(per_case: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """`evaluate`'s answer as the manifest's metrics: per task n and the mean of each metric."""
    return {task: {"n": len(values[GATE_METRICS[0]]), **{m: float(values[m].mean()) for m in GATE_METRICS}}
            for task, values in per_case.items()}


def compare(candidate: dict[str, np.ndarray], serving: dict[str, np.ndarray], min_cases: int, margin: float,
            seed: int) -> TaskComparison:
    """One task: candidate minus serving per case, with a paired 95% bootstrap interval per
    metric (both ranked the same cases, so cases are resampled once for both)."""
    n = len(candidate[GATE_METRICS[0]])
    if n < min_cases:
        return TaskComparison(n=n, verdict="not decided")
    difference, ci95 = bootstrap({m: candidate[m] - serving[m] for m in GATE_METRICS}, seed=seed, names=GATE_METRICS)
    not_worse = all(ci95[m][1] >= 0 and difference[m] >= -margin for m in GATE_METRICS)
    better = any(ci95[m][0] > 0 for m in GATE_METRICS)
    verdict = ("better" if better else "indistinguishable") if not_worse else "worse"
    return TaskComparison(n=n, verdict=verdict, difference=difference, ci95=ci95)


def describe(task: str, c: TaskComparison, min_cases: int) -> str:
    if c.verdict == "not decided":
        return f"{task} not decided ({c.n} < {min_cases} cases)"
    lo, hi = c.ci95["HR@10"]
    return f"{task} {c.verdict}: HR@10 {c.difference['HR@10']:+.4f} [{lo:+.4f}, {hi:+.4f}] on {c.n} cases"


def gate(candidate: dict[str, dict[str, np.ndarray]], serving: dict[str, dict[str, np.ndarray]], fresher: bool,
         min_cases: int, margin: float, seed: int = 0) -> GateRecord:
    """Decide on evidence. Per task (`compare`), with d = candidate minus serving per case
    and [lo, hi] its paired bootstrap 95% interval, for each of HR@10 and NDCG@10:

        not decided        fewer than `min_cases` cases: the task carries no evidence
        worse              on some metric hi < 0 or mean(d) < -margin
        better             not worse, and on some metric lo > 0
        indistinguishable  neither ("not worse": hi >= 0 and mean(d) >= -margin on both)

    Over the decided tasks: none decided -> not promoted ("not decided"); any worse ->
    rejected ("worse", reason "regressed: ..."); any better -> promoted ("better"); all
    indistinguishable -> promoted only if `fresher` ("fresher and not worse"), else
    rejected ("not fresher"). Paired bootstrap, not McNemar: the per-case metrics are
    expectations over tie orders (fractions, not hit/miss pairs), NDCG is graded, and the
    interval it gives is in the metric's own units, which is what the manifest records."""
    tasks = {t: compare(candidate[t], serving[t], min_cases, margin, seed) for t in candidate if t in serving}
    decided = {t: c for t, c in tasks.items() if c.verdict != "not decided"}
    verdicts = {c.verdict for c in decided.values()}
    if not decided:
        outcome, promote = "not decided", False
    elif "worse" in verdicts:
        outcome, promote = "worse", False
    elif "better" in verdicts:
        outcome, promote = "better", True
    else:
        outcome, promote = ("fresher and not worse", True) if fresher else ("not fresher", False)
    lead = {"not decided": "not decided", "worse": "regressed", "better": "better than serving",
            "fresher and not worse": "indistinguishable from serving, fresher and not worse",
            "not fresher": "indistinguishable from serving and not fresher"}[outcome]
    detail = "; ".join(describe(t, c, min_cases) for t, c in tasks.items()) or "no held-out sample could be scored"
    return GateRecord(outcome=outcome, promote=promote, reason=f"{lead}: {detail}", min_cases=min_cases, margin=margin,
                      fresher=fresher, tasks=tasks)


# --- the history prior, refitted on the stream ------------------------------------------------


class PriorPool:
    """The evidence the history prior's weights are refitted on (evaluation.generative.
    PriorEvidence), pooled over refreshes: each refresh's training samples are scored by the
    version serving when they arrived, which had not trained on them, so the weights are
    chosen on cases no scoring model saw (prequential, like the demo's own evaluation), and
    never on the gate's held-out slice. In memory: a restarted learner starts an empty pool,
    and versions keep their parent's weights until it holds `min_cases` again."""

    def __init__(self, size: int, per_refresh: int, min_cases: int):
        self.size, self.per_refresh, self.min_cases = size, per_refresh, min_cases
        self.evidence: dict[str, PriorEvidence] = {}  # task -> the newest `size` cases, oldest first
        self.pooled: set[str] = set()  # sample ids scored already: a retried refresh adds nothing twice

    def add(self, samples: list[TrainingSample], item_ids: list[str], item_text: dict[str, str], negatives: int,
            serving: GenSARModel, renderer: Renderer, seed: int) -> None:
        """Score the newest `per_refresh` samples per task with `serving` and pool them."""
        fresh = [s for s in samples if s.event_id not in self.pooled]
        newest = [s for task in ("search", "rec") for s in [s for s in fresh if s.task == task][-self.per_refresh:]]
        self.pooled.update(s.event_id for s in fresh)
        cases = GateCases(newest, item_ids, item_text, negatives, seed)
        for task, (task_cases, candidates) in cases.by_task.items():
            system = GenerativeSystem(f"prior-{task}", task, serving, renderer, cases.item_index)
            found = prior_evidence(system, task_cases, candidates)
            pooled = [self.evidence[task], found] if task in self.evidence else [found]
            self.evidence[task] = PriorEvidence.join(pooled).newest(self.size)

    def refit(self, serving: HistoryPrior) -> PriorRecord:
        """Per task, the weights that rank the pooled cases best, or `serving`'s where the
        pool holds fewer than `min_cases`."""
        weights, cases = dict(serving.weights), {}
        for task in ("search", "rec"):
            pooled = self.evidence.get(task)
            enough = pooled is not None and len(pooled) >= self.min_cases
            if enough:
                weights[task] = fit_weights(pooled)[0]
            cases[task] = len(pooled) if enough else 0
        return PriorRecord(weights=weights, cases=cases)


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
        self.prior_pool = PriorPool(settings.prior_pool, settings.prior_cases, settings.prior_min_cases) \
            if settings.prior_pool else None

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
        trained = [s for s in [*train_part, *replayed] if s.target_item in self.renderer.idmap]
        sequences = self.renderer.stream_windows(trained)  # the base model's way: whole user sequences
        times = [s.timestamp for s in train_part]
        window = TrainingWindow(samples=len(trained), first_event_time=min(times, default=None),
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
            serving = self.base if parent_dir is None else self._with(
                merged(self.base.model, parent_dir), serving_renderer.idmap, self.prior_of(parent))
            prior = None
            if self.prior_pool is not None:  # before training: serving has not seen these samples
                self.prior_pool.add(train_part, both_maps, self.renderer.item_text, settings.gate_negatives, serving,
                                    serving_renderer, settings.seed)
                prior = self.prior_pool.refit(serving.prior)
            adapter_dir, scores, report, verdict, failure = Path(tmp) / "adapter", {}, None, None, ""
            try:
                adapted, report = tune(self.base.model, sequences, self.base.vocab, train_settings,
                                       settings.lora, init_adapter=parent_dir)
                save_adapter(adapted, adapter_dir)
                candidate = self._with(adapted.merge_and_unload().eval(), self.renderer.idmap,
                                       HistoryPrior(weights=prior.weights) if prior else serving.prior)
                scores = {who: evaluate(gm, renderer, held_out)
                          for who, gm, renderer in (("candidate", candidate, self.renderer),
                                                    ("serving", serving, serving_renderer))}
                verdict = gate(scores["candidate"], scores["serving"], self.fresher(window, parent),
                               settings.gate_min_cases, settings.gate_margin, settings.seed)
            except NonFiniteLoss as exc:
                failure = f"non-finite loss: {exc}"
                adapter_dir.mkdir()
                (adapter_dir / "REJECTED").write_text(failure)
            manifest = Manifest(
                version=version, parent=parent, task=self.task, base_model=self.base_name,
                idmap_version=self.renderer.idmap.version, window=window,
                metrics={f"{who}:{task}": values for who, per_task in scores.items()
                         for task, values in means(per_task).items()}, gate=verdict, prior=prior,
                libraries={"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
                refresh_seconds=time.perf_counter() - started, train_loss=report.losses if report else [])
            self.registry.publish(adapter_dir, manifest)
        if verdict is None:
            return self.registry.reject(version, failure)
        if not verdict.promote:
            return self.registry.reject(version, verdict.reason)
        return self.registry.promote(version, verdict.reason)

    def fresher(self, window: TrainingWindow, parent: str | None) -> bool:
        """Did the candidate learn from newer events than the serving version? The base
        model learned from the bootstrap only, before every streamed event."""
        if window.last_event_time is None:
            return False
        served = self.registry.manifest(parent).window.last_event_time if parent else None
        return served is None or window.last_event_time > served

    def prior_of(self, version: str) -> HistoryPrior:
        """The history prior `version` serves with: its manifest's, or the base model's."""
        record = self.registry.manifest(version).prior
        return HistoryPrior(weights=record.weights) if record else self.base.prior

    def _with(self, model, idmap, prior: HistoryPrior) -> GenSARModel:
        """The base model's artifact with other weights, for the map they were trained on,
        ranking with `prior`."""
        return dataclasses.replace(self.base, model=model, idmap_version=idmap.version,
                                   idmap_fingerprint=idmap.fingerprint(), prior=prior)
