"""The model registry: adapters as immutable, checksummed artifacts plus an append-only
log of decisions (candidate, promoted, rejected, rolled-back), each announced on the
compacted model-versions topic.

An artifact is written once (temp name, fsync, rename) and never changed; what changes is
its status, which is a line in `decisions.jsonl`. What serves for a task is the newest
promoted version that has not been rolled back, so a rollback is a new decision that
re-announces the version before it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from gensar.events import ModelVersion
from gensar.artifacts import ArtifactError, read_artifact, write_artifact

Status = Literal["candidate", "promoted", "rejected", "rolled-back"]
Task = Literal["joint", "search", "rec"]
FORMAT = "gensar-adapter"


class RegistryError(ValueError):
    pass


class TrainingWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(ge=0)
    first_event_time: float | None = None  # event time of the oldest sample trained on
    last_event_time: float | None = None  # event time of the newest: freshness is measured from it
    replayed: int = Field(0, ge=0)  # of `samples`, drawn from the replay buffer


class TaskComparison(BaseModel):
    """The gate on one task: candidate minus serving over the same held-out cases."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(ge=0)  # held-out cases both versions ranked
    verdict: Literal["better", "indistinguishable", "worse", "not decided"]
    difference: dict[str, float] = {}  # metric -> mean per-case difference (empty when not decided)
    ci95: dict[str, list[float]] = {}  # metric -> paired bootstrap 95% interval of that difference


class GateRecord(BaseModel):
    """What the gate saw and which of its cases decided (learner.refresh.gate)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: Literal["better", "fresher and not worse", "worse", "not fresher", "not decided"]
    promote: bool
    reason: str
    min_cases: int
    margin: float
    fresher: bool  # the candidate learned from newer events than the serving version
    tasks: dict[str, TaskComparison]


class PriorRecord(BaseModel):
    """The history prior a version serves with (model.history.HistoryPrior's weights) and
    how many stream cases each task's weights were fitted on (learner.refresh.PriorPool;
    0: too few, the serving version's weights kept)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, tuple[float, float, float]]  # task -> (per searched, per interacted, recency)
    cases: dict[str, int] = {}


class Manifest(BaseModel):
    """What an adapter is: enough to load it, trust it and explain it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    parent: str | None = None
    task: Task = "joint"
    base_model: str  # fingerprint of the base model the adapter sits on
    idmap_version: str
    window: TrainingWindow
    metrics: dict[str, dict[str, float]] = {}  # "candidate:<task>" / "serving:<task>" -> n and metric means
    gate: GateRecord | None = None  # None: never gated (e.g. a non-finite loss)
    prior: PriorRecord | None = None  # None: the base model's prior
    libraries: dict[str, str] = {}  # e.g. peft, transformers, torch versions
    refresh_seconds: float | None = None
    train_loss: list[float] = []  # mean loss per logging window of the refresh
    created_at: float = Field(default_factory=time.time)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    status: Status
    reason: str = ""
    timestamp: float = Field(default_factory=time.time)


class ArtifactStore(Protocol):
    """Where adapters live. The local directory is the default; object storage implements
    the same four methods."""

    def put(self, key: str, files: dict[str, bytes], manifest: dict) -> str: ...
    def get(self, key: str) -> tuple[dict, dict[str, bytes]]: ...
    def keys(self) -> list[str]: ...
    def append(self, log: str, line: bytes) -> None: ...
    def lines(self, log: str) -> list[bytes]: ...


class LocalArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "adapters").mkdir(parents=True, exist_ok=True)

    def uri(self, key: str) -> str:
        return (self.root / "adapters" / key).as_uri()

    def put(self, key: str, files: dict[str, bytes], manifest: dict) -> str:
        target = self.root / "adapters" / key
        if target.exists():
            raise RegistryError(f"{target}: version {key} exists already; versions are immutable")
        write_artifact(target, files, manifest)
        return self.uri(key)

    def get(self, key: str) -> tuple[dict, dict[str, bytes]]:
        path = self.root / "adapters" / key
        if not path.is_dir():
            raise RegistryError(f"unknown version {key} (no {path})")
        return read_artifact(path)

    def keys(self) -> list[str]:
        return sorted(p.name for p in (self.root / "adapters").iterdir() if p.is_dir() and not p.name.startswith("."))

    def append(self, log: str, line: bytes) -> None:
        with open(self.root / log, "ab") as f:
            f.write(line.rstrip(b"\n") + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def lines(self, log: str) -> list[bytes]:
        path = self.root / log
        return path.read_bytes().splitlines() if path.exists() else []


class Registry:
    def __init__(self, store: ArtifactStore, announce: Callable[[ModelVersion], None] | None = None):
        self.store = store
        self.announce = announce

    # --- writing -------------------------------------------------------------------------

    def publish(self, adapter_dir: Path, manifest: Manifest) -> ModelVersion:
        """Store an adapter directory as a new candidate version."""
        files = {p.name: p.read_bytes() for p in sorted(Path(adapter_dir).iterdir()) if p.is_file()}
        if not files:
            raise RegistryError(f"{adapter_dir}: no adapter files")
        if manifest.parent is not None and manifest.parent not in self.store.keys():
            raise RegistryError(f"parent version {manifest.parent} is not in the registry")
        self.store.put(manifest.version, files, {"format": FORMAT, "adapter": manifest.model_dump(mode="json")})
        return self._decide(manifest, "candidate", "trained")

    def promote(self, version: str, reason: str = "passed the gate") -> ModelVersion:
        return self._decide(self.manifest(version), "promoted", reason)

    def reject(self, version: str, reason: str) -> ModelVersion:
        return self._decide(self.manifest(version), "rejected", reason)

    def rollback(self, task: Task = "joint", reason: str = "operator rollback") -> ModelVersion:
        """Take the serving version of `task` out of service and re-announce the one it replaced.
        When it was the task's only promotion, the task falls back to what serves without one
        (a per-task line to the joint versions, the joint line to the base model) and the
        announcement returned is the rolled-back version's."""
        history = self.promoted()[task]  # newest first
        if not history:
            raise RegistryError(f"nothing to roll back for task {task}: no promoted version")
        current = history[0]
        out = self._decide(self.manifest(current), "rolled-back", reason)
        if len(history) < 2:
            return out
        return self._decide(self.manifest(history[1]), "promoted", f"rollback from {current}: {reason}")

    def _decide(self, manifest: Manifest, status: Status, reason: str) -> ModelVersion:
        decision = Decision(version=manifest.version, status=status, reason=reason)
        self.store.append("decisions.jsonl", decision.model_dump_json().encode())
        announcement = ModelVersion(version=manifest.version, parent=manifest.parent, task=manifest.task,
                                    status=status, idmap_version=manifest.idmap_version,
                                    artifact_uri=self._uri(manifest.version), reason=reason,
                                    timestamp=decision.timestamp)
        if self.announce:
            self.announce(announcement)
        return announcement

    def _uri(self, version: str) -> str:
        uri = getattr(self.store, "uri", None)
        return uri(version) if uri else version

    # --- reading -------------------------------------------------------------------------

    def manifest(self, version: str) -> Manifest:
        meta, _ = self.store.get(version)
        return Manifest(**meta["adapter"])

    def fetch(self, version: str, dest: Path) -> tuple[Manifest, Path]:
        """Verify a version's checksums and write its adapter files to `dest` (for PEFT to load)."""
        meta, files = self.store.get(version)  # raises ArtifactError on any mismatch
        if meta.get("format") != FORMAT:
            raise ArtifactError(f"version {version}: not a {FORMAT} artifact")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (dest / name).write_bytes(data)
        return Manifest(**meta["adapter"]), dest

    def decisions(self) -> list[Decision]:
        out = []
        lines = self.store.lines("decisions.jsonl")
        for i, line in enumerate(lines):
            try:
                out.append(Decision.model_validate_json(line))
            except ValueError:
                if i == len(lines) - 1:  # a torn last line from a crash mid-append: not a decision
                    continue
                raise RegistryError(f"decisions.jsonl line {i + 1} is damaged") from None
        return out

    def status(self, version: str) -> Decision:
        for decision in reversed(self.decisions()):
            if decision.version == version:
                return decision
        raise RegistryError(f"unknown version {version}")

    def promoted(self) -> dict[str, list[str]]:
        """Per task ("joint", "search", "rec"), its promoted versions newest first, rolled-back
        ones removed. A version whose artifact fails verification stands in the joint line,
        which every task falls back to: one damaged artifact must not hide every later
        promotion (a reader that loads it refuses it there, and the next in line serves)."""
        decisions = self.decisions()
        task_of: dict[str, str] = {}
        for version in dict.fromkeys(d.version for d in decisions):
            try:
                task_of[version] = self.manifest(version).task
            except (ValueError, OSError):  # ArtifactError (damaged), RegistryError (gone)
                task_of[version] = "joint"
        history: dict[str, list[str]] = {"joint": [], "search": [], "rec": []}
        for d in decisions:
            stack = history[task_of[d.version]]
            if d.status == "promoted":
                if d.version in stack:
                    stack.remove(d.version)
                stack.append(d.version)
            elif d.status == "rolled-back" and d.version in stack:
                stack.remove(d.version)
        return {task: stack[::-1] for task, stack in history.items()}

    def serving(self, task: Task = "joint") -> str | None:
        history = self.promoted()[task]
        return history[0] if history else None

    def versions(self) -> list[tuple[Manifest, Decision]]:
        latest = {d.version: d for d in self.decisions()}
        manifests = sorted((self.manifest(v) for v in self.store.keys()), key=lambda m: m.created_at)
        return [(m, latest[m.version]) for m in manifests if m.version in latest]


def kafka_announcer(kafka) -> Callable[[ModelVersion], None]:
    """Announce on the compacted model-versions topic, waiting for the broker's ack."""
    from gensar.replay import make_producer
    from gensar.topics import MODEL_VERSIONS

    producer = make_producer(kafka, client_id="gensar-registry", linger_ms=0)
    topic = MODEL_VERSIONS.full_name(kafka)

    def announce(version: ModelVersion) -> None:
        producer.send(topic, key=version.key(), value=version.to_bytes()).get(timeout=30)

    return announce


def read_announcements(kafka, timeout_ms: int = 3000) -> Iterable[ModelVersion]:
    from kafka import KafkaConsumer

    from gensar.topics import MODEL_VERSIONS

    consumer = KafkaConsumer(MODEL_VERSIONS.full_name(kafka), **kafka.client_options(),
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=timeout_ms)
    try:
        return [ModelVersion.model_validate_json(r.value) for r in consumer]
    finally:
        consumer.close()
