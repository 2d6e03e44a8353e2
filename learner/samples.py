"""Training samples from the stream: an at-least-once consumer and the buffer it fills.

The buffer keeps the RECENT window (what the next refresh learns from) and a reservoir of
OLDER samples replayed beside it against forgetting. Redelivered samples are dropped by
sample id (stable per source event, task and target: streams.state.sample_id). Offsets
are committed only after the buffer is saved, so a learner that dies re-reads from its
last commit, loads its last save, and the duplicates fall away.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict, deque
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from gensar.artifacts import write_file
from gensar.events import InvalidEvent, TrainingSample, decode
from gensar.settings import KafkaSettings
from gensar.topics import TRAINING_SAMPLES


class SampleBuffer:
    def __init__(self, window: int = 2048, replay: int = 8192, remember_ids: int = 1_000_000, seed: int = 0):
        self.window, self.replay, self.remember_ids = window, replay, remember_ids
        self.recent: deque[TrainingSample] = deque()
        self.reservoir: list[TrainingSample] = []
        self.seen_total = 0  # samples that ever left the recent window (reservoir sampling)
        self._ids: OrderedDict[str, None] = OrderedDict()  # the most recent sample ids
        self._rng = random.Random(seed)
        # The oldest recent samples a refresh is training on. Not saved: a buffer is saved
        # before a refresh takes its samples, so a restart trains on them again.
        self.in_flight = 0

    def __len__(self) -> int:
        return len(self.recent)

    def pending(self) -> int:
        """Samples waiting for the next refresh."""
        return len(self.recent) - self.in_flight

    def take(self) -> tuple[list[TrainingSample], list[TrainingSample]]:
        """The next refresh's samples (every recent one) and its replay draw; they stay in
        the buffer, and samples keep arriving behind them, until `retire`."""
        self.in_flight = len(self.recent)
        recent = list(self.recent)
        return recent, self.peek_replay(len(recent))

    def retire(self) -> None:
        """The refresh of the last `take` is decided: its samples age into the reservoir."""
        self.drain(self.in_flight)
        self.in_flight = 0

    def bound(self) -> None:
        """At most `window` recent samples: the oldest go to the reservoir untrained, but
        never while a refresh trains on them."""
        overflow = len(self.recent) - self.window
        if overflow > 0 and not self.in_flight:
            self.drain(overflow)

    def add(self, sample: TrainingSample) -> bool:
        """Add a sample unless it was seen already; returns whether added."""
        key = sample.event_id
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self.remember_ids:
            self._ids.popitem(last=False)
        self.recent.append(sample)
        return True

    def drain(self, count: int | None = None) -> tuple[list[TrainingSample], list[TrainingSample]]:
        """The oldest `count` recent samples (default: all, oldest first) and a replay draw
        of older ones, as many as `replay` allows but no more than the recent ones; the
        drained samples then age into the reservoir."""
        recent = [self.recent.popleft() for _ in range(len(self.recent) if count is None else count)]
        replayed = self._rng.sample(self.reservoir, min(len(self.reservoir), len(recent)))
        for sample in recent:
            self.seen_total += 1
            if len(self.reservoir) < self.replay:
                self.reservoir.append(sample)
            elif (j := self._rng.randrange(self.seen_total)) < self.replay:
                self.reservoir[j] = sample
        return recent, replayed

    def peek_replay(self, count: int) -> list[TrainingSample]:
        """A replay draw of up to `count` older samples, leaving the buffer as it is
        (the draw is seeded by the buffer's state, so a retried refresh draws the same)."""
        rng = random.Random(f"{self.seen_total}:{len(self.reservoir)}")
        return rng.sample(self.reservoir, min(len(self.reservoir), count))

    # --- persistence -------------------------------------------------------------------

    def save(self, path: Path) -> None:
        state = {"recent": [s.model_dump(mode="json") for s in self.recent],
                 "reservoir": [s.model_dump(mode="json") for s in self.reservoir],
                 "seen_total": self.seen_total, "ids": list(self._ids), "rng": self._rng.getstate()[1]}
        write_file(path, json.dumps(state))

    def load(self, path: Path) -> None:
        if not path.exists():
            return
        state = json.loads(path.read_text())
        self.recent = deque(TrainingSample(**s) for s in state["recent"])
        self.reservoir = [TrainingSample(**s) for s in state["reservoir"]]
        self.seen_total = state["seen_total"]
        self._ids = OrderedDict.fromkeys(state["ids"])
        self._rng.setstate((3, tuple(state["rng"]), None))


def consumer_group(kafka: KafkaSettings) -> str:
    """The learner's consumer group: one per deployment, named after its topic prefix."""
    return f"{kafka.topic_prefix}learner"


class SampleConsumer:
    """Reads the training-samples topic in a consumer group with manual commits."""

    def __init__(self, kafka: KafkaSettings, group: str | None = None):
        group = group or consumer_group(kafka)
        self.consumer = KafkaConsumer(
            TRAINING_SAMPLES.full_name(kafka), **kafka.client_options(), group_id=group,
            client_id=f"{group}-samples", enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed",  # never samples of an aborted stream transaction
            # The learner's loop polls about every second, also while a refresh trains; the
            # margin keeps the assignment through a stalled driver or a slow snapshot.
            max_poll_interval_ms=3_600_000, max_poll_records=2000)
        self.invalid = 0  # samples the stream workers should never have emitted

    def poll(self, buffer: SampleBuffer, timeout_ms: int = 1000) -> int:
        """Move what has arrived into `buffer`; returns how many were new."""
        added = 0
        for records in self.consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                try:
                    sample = decode(record.value, TrainingSample)
                except InvalidEvent:
                    self.invalid += 1
                    continue
                added += buffer.add(sample)
        return added

    def positions(self) -> dict[TopicPartition, int]:
        """The next offset to read per assigned partition: what has been polled so far."""
        return {tp: self.consumer.position(tp) for tp in self.consumer.assignment()}

    def commit(self, positions: dict[TopicPartition, int] | None = None) -> None:
        """Commit `positions` (default: everything polled). Call only once the samples
        before them are safe: saved in the buffer, or trained into a published version."""
        offsets = None if positions is None else {tp: OffsetAndMetadata(o, "", -1) for tp, o in positions.items()}
        self.consumer.commit(offsets)

    def close(self) -> None:
        self.consumer.close(autocommit=False)
