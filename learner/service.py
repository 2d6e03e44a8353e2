"""The learner on Ray: actors and the loop that schedules refreshes.

    Intake   (actor)  reads training-samples in the consumer group `<topic prefix>learner`
                      into the SampleBuffer
    Collaborative (actor) every few seconds: new interactions into the collaborative
                      embeddings, ids for new items, re-coded drifted items, new map
                      versions (`learner.collaborative`); its own consumer group, its own thread
    Trainer  (actor)  one refresh at a time: LoRA-tune against the latest map, gate on
                      held-out recent samples, publish to the registry
                      (`learner.refresh.Refresher`); on a GPU worker when the cluster has one
    loop     (driver) refresh every N new samples or T seconds, then commit

Training and its gate run in one actor on purpose: the gate scores the candidate's
merged weights and the serving weights, and moving them between processes would cost
more than the scoring.

Delivery: before a refresh the intake saves its buffer and notes its consumer positions;
only after the refresh's decision is in the registry are those positions committed. The
intake keeps reading while a refresh trains, so the stream never waits on training. A
learner killed or stopped mid-refresh publishes nothing (artifacts are written whole or
not at all; a stop abandons the refresh) and, restarted, reads again from its last
commit; the buffer drops what it already holds.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path

import ray
from prometheus_client import Counter, Gauge, Histogram

from gensar.data import Dataset
from gensar.events import ModelVersion, TrainingSample
from gensar.layout import Layout
from gensar.settings import KafkaSettings
from infra.ray_local import has_gpu
from learner.registry import LocalArtifactStore, Registry, kafka_announcer
from learner.samples import SampleBuffer, SampleConsumer, consumer_group
from learner.settings import LearnerSettings

log = logging.getLogger("gensar.learner")
REFRESH_SECONDS = Histogram("gensar_learner_refresh_seconds", "Wall time of one refresh (train + gate + publish)",
                            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800))
DECISIONS = Counter("gensar_learner_gate_decisions_total", "Refresh outcomes", ["decision"])
PENDING = Gauge("gensar_learner_pending_samples", "Samples waiting for the next refresh")
COLLABORATIVE_SAMPLES = Counter("gensar_learner_collaborative_samples_total",
                                "Rec samples applied to the collaborative item embeddings")
COLLABORATIVE_ITEMS = Counter("gensar_learner_collaborative_items_total",
                              "Items the collaborative updater changed: vector moved, re-coded (drifted), added "
                              "(new item), unplaced (no free id under its prefix)", ["change"])
MAP_VERSIONS = Counter("gensar_learner_map_versions_total", "Identifier-map versions the collaborative updater published")


class CollaborativeMeters:
    """The updater's running totals as Prometheus counters. It runs in an actor, another
    process than the one serving /metrics, so the loop copies its totals over."""

    def __init__(self):
        self.seen: dict[str, int] = {}

    def update(self, totals: dict[str, int]) -> None:
        for name, total in totals.items():
            delta = total - self.seen.get(name, 0)
            self.seen[name] = total
            if name == "samples":
                COLLABORATIVE_SAMPLES.inc(delta)
            elif name == "versions":
                MAP_VERSIONS.inc(delta)
            else:
                COLLABORATIVE_ITEMS.labels(name).inc(delta)


@ray.remote
class Intake:
    def __init__(self, kafka: KafkaSettings, buffer_path: str, settings: LearnerSettings, group: str):
        self.path = Path(buffer_path)
        self.buffer = SampleBuffer(window=settings.window, replay=settings.replay, seed=settings.seed)
        self.buffer.load(self.path)
        self.consumer = SampleConsumer(kafka, group=group)
        self.snapshot_positions = None

    def poll(self, timeout_ms: int = 500) -> int:
        """New samples moved into the buffer; returns how many wait for the next refresh."""
        self.consumer.poll(self.buffer, timeout_ms=timeout_ms)
        self.buffer.bound()
        return self.buffer.pending()

    def snapshot(self) -> tuple[list[TrainingSample], list[TrainingSample]]:
        """What the next refresh trains on; saved (with the buffer) before any training."""
        self.buffer.save(self.path)
        self.snapshot_positions = self.consumer.positions()
        return self.buffer.take()

    def done(self) -> None:
        """The refresh of the last snapshot is decided: retire its samples, commit. What
        arrived while it trained stays for the next one (saved; its offsets are committed
        with the next decision, and a redelivery is dropped by sample id)."""
        self.buffer.retire()
        self.buffer.save(self.path)
        self.consumer.commit(self.snapshot_positions)

    def close(self) -> None:
        self.consumer.close()


@ray.remote(max_concurrency=3)  # `map_version`, `totals` and `stop` answer while `run` loops
class Collaborative:
    def __init__(self, layout: Layout, kafka: KafkaSettings, ds: Dataset, settings: LearnerSettings):
        self.args = (layout, kafka, ds, settings.collaborative)
        self.every = settings.collaborative.every_seconds
        self.stopped, self.started = threading.Event(), threading.Event()
        self.version: str | None = None
        self.error: Exception | None = None
        self.counted: collections.Counter[str] = collections.Counter()  # StepReport.counts, summed over steps
        self.counting = threading.Lock()  # `totals` reads while `run` adds

    def run(self) -> list[str]:
        """Step every `every_seconds` until stopped; returns the map versions published.
        The updater is made here: its SQLite handles (embedding cache, embedded Qdrant)
        belong to the thread that made them."""
        from learner.collaborative import CollaborativeUpdater

        logging.getLogger("gensar").setLevel(logging.INFO)
        try:
            updater = CollaborativeUpdater(*self.args)
        except Exception as exc:
            self.error = exc
            raise
        finally:
            self.started.set()
        self.version, published = updater.idmap.version, []
        try:
            while not self.stopped.is_set():
                started = time.monotonic()
                try:
                    report = updater.step()
                    published += report.versions
                    with self.counting:
                        self.counted.update(report.counts())
                except Exception:  # noqa: BLE001 - a broker hiccup must not end the updates; the log shows it
                    log.exception("collaborative step failed; retrying in %.0f s", self.every)
                self.stopped.wait(max(0.0, self.every - (time.monotonic() - started)))
        finally:
            updater.close()
        return published

    def map_version(self) -> str:
        """The map the updater started from, once it runs (its start-up error, if any)."""
        self.started.wait()
        if self.error is not None:
            raise self.error
        return self.version

    def totals(self) -> dict[str, int]:
        """What the updater did since it started (see StepReport.counts)."""
        with self.counting:
            return dict(self.counted)

    def stop(self) -> None:
        self.stopped.set()


@ray.remote
class Trainer:
    def __init__(self, layout: Layout, base_name: str, idmap_path: str | None, ds: Dataset,
                 settings: LearnerSettings, kafka: KafkaSettings, task: str = "joint"):
        from identifiers.idmap import IdentifierMap, MapStore
        from identifiers.semantic import item_texts
        from learner.refresh import Refresher
        from model.artifact import GenSARModel
        from model.tasks import Renderer

        base = GenSARModel.load(layout.base_model(base_name))
        # A pinned map (`idmap_path`) is used as it is; else the map store's latest is followed.
        maps = None if idmap_path else MapStore(layout.identifier_maps)
        idmap = IdentifierMap.load(Path(idmap_path)) if idmap_path else maps.load(base.idmap_version)
        base.check_map(idmap)
        renderer = Renderer(base.vocab, idmap, ds, item_texts(ds, []), base.render)
        registry = Registry(LocalArtifactStore(layout.registry), announce=kafka_announcer(kafka))
        self.refresher = Refresher(base, base_name, renderer, registry, settings, task, maps)

    def refresh(self, recent: list[TrainingSample], replayed: list[TrainingSample], version: str) -> ModelVersion:
        return self.refresher.run(recent, replayed, version)


def next_version(registry: Registry) -> str:
    return f"r{len(registry.store.keys()) + 1:04d}"


def run(*, layout: Layout, kafka: KafkaSettings, ds: Dataset, base_name: str, settings: LearnerSettings,
        idmap_path: Path | None = None, max_refreshes: int | None = None,
        idle_exit_seconds: float | None = None, stop: threading.Event | None = None) -> list[ModelVersion]:
    """Refresh until `max_refreshes` are decided, no sample arrived for `idle_exit_seconds`,
    or `stop` is set. A refresh still training when `stop` is set is abandoned: it
    publishes nothing, its offsets stay uncommitted, and the next start trains on its
    samples again (as after a crash, without waiting minutes for a refresh to end)."""
    stop = stop or threading.Event()
    registry = Registry(LocalArtifactStore(layout.registry))
    layout.learner_buffer.parent.mkdir(parents=True, exist_ok=True)
    intake = Intake.remote(kafka, str(layout.learner_buffer), settings, consumer_group(kafka))
    # One trainer per adapter: a joint one, or a search and a rec adapter over the one base.
    tasks = ["joint"] if settings.adapters == "joint" else ["search", "rec"]
    gpus = 1 / len(tasks) if has_gpu() else 0
    trainers = [Trainer.options(num_gpus=gpus).remote(layout, base_name, idmap_path and str(idmap_path), ds,
                                                      settings, kafka, task) for task in tasks]
    # The collaborative updater keeps the map store's latest version moving; a pinned map stays as it is.
    collaborative = updater_started = None
    meters = CollaborativeMeters()
    if settings.collaborative.every_seconds > 0 and idmap_path is None:
        collaborative = Collaborative.remote(layout, kafka, ds, settings)
        collaborative_run = collaborative.run.remote()  # first: `map_version` waits for it to start
        updater_started = collaborative.map_version.remote()  # not awaited: the intake reads meanwhile

    def observe() -> int:
        """Read on; export the samples waiting and what the updater has done."""
        pending = ray.get(intake.poll.remote())
        PENDING.set(pending)
        if collaborative is not None:
            meters.update(ray.get(collaborative.totals.remote()))
        return pending

    decided: list[ModelVersion] = []
    last_refresh = last_arrival = time.monotonic()
    seen = 0
    try:
        while not stop.is_set() and (max_refreshes is None or len(decided) < max_refreshes):
            pending = observe()
            if updater_started is not None and ray.wait([updater_started], timeout=0)[0]:
                log.info("collaborative updater following identifier map %s", ray.get(updater_started))  # or its error
                updater_started = None
            now = time.monotonic()
            if pending != seen:
                seen, last_arrival = pending, now
            due = pending >= settings.refresh_every_samples or (
                pending >= settings.min_samples and now - last_refresh >= settings.refresh_every_seconds)
            if due:
                recent, replayed = ray.get(intake.snapshot.remote())
                started = time.perf_counter()
                for trainer in trainers:  # in turn: on 2 cores, parallel refreshes only fight
                    version = next_version(registry)
                    log.info("refresh %s started on %d recent + %d replayed samples", version, len(recent),
                             len(replayed))
                    training = trainer.refresh.remote(recent, replayed, version)
                    while not ray.wait([training], timeout=1.0)[0]:  # the intake reads on meanwhile
                        if stop.is_set():
                            log.info("stopping: refresh %s abandoned (nothing published; its samples are "
                                     "trained again after a restart)", version)
                            ray.kill(trainer)
                            return decided
                        observe()
                    decision = ray.get(training)
                    DECISIONS.labels(decision.status).inc()
                    log.info("refresh %s (%s): %s (%s)", decision.version, decision.task, decision.status,
                             decision.reason)
                    decided.append(decision)
                REFRESH_SECONDS.observe(time.perf_counter() - started)
                ray.get(intake.done.remote())
                last_refresh, seen = time.monotonic(), 0
            elif idle_exit_seconds is not None and now - last_arrival > idle_exit_seconds:
                break
    finally:
        ray.get(intake.close.remote())
        if collaborative is not None:
            ray.get(collaborative.stop.remote())
            log.info("collaborative updater published map versions: %s", ray.get(collaborative_run) or "none")
    return decided
