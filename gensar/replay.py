"""Replay a dataset into Kafka in timestamp order: the catalogue first (item upserts),
then interactions and searches as they happened, as fast as possible or at real time x N.

The producer is idempotent with acks=all, so a broker restart mid-replay neither loses an
acknowledged event nor writes one twice; every send is checked before we report success.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from kafka import KafkaProducer
from tqdm import tqdm

from gensar.data import Dataset
from gensar.events import Event
from gensar.settings import KafkaSettings
from gensar.topics import INTERACTIONS, ITEMS, SEARCH_EVENTS


def replay_order(ds: Dataset, limit: int | None = None) -> list[Event]:
    """Items first, then user events in time order (optionally only the first `limit`)."""
    user_events = ds.user_events()
    return [*ds.items.values(), *(user_events[:limit] if limit is not None else user_events)]


def event_id_checksum(event_ids: Iterable[str]) -> str:
    """Order-independent checksum of a set of event ids (to compare source and topic)."""
    digest = hashlib.sha256()
    for event_id in sorted(event_ids):
        digest.update(event_id.encode() + b"\n")
    return digest.hexdigest()


@dataclass
class ReplayReport:
    sent: Counter = field(default_factory=Counter)  # topic -> events acknowledged
    seconds: float = 0.0
    checksum: str = ""

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    @property
    def events_per_second(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0


def make_producer(kafka: KafkaSettings, **overrides) -> KafkaProducer:
    config = dict(
        **kafka.client_options(),
        client_id="gensar-replay",
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        batch_size=256 * 1024,
        retries=2**31 - 1,  # bounded by delivery_timeout_ms instead
        delivery_timeout_ms=180_000,
        request_timeout_ms=30_000,
        reconnect_backoff_max_ms=2_000,
    )
    config.update(overrides)
    return KafkaProducer(**config)


def replay(events: list[Event], kafka: KafkaSettings, *, speed: float | None = None,
           progress: bool = True, producer: KafkaProducer | None = None) -> ReplayReport:
    """Send `events` in order. `speed=None`: as fast as possible; `speed=N`: event time
    advances N times faster than the wall clock. Raises if any send is not acknowledged."""
    topic_of = {"item": ITEMS.full_name(kafka), "interaction": INTERACTIONS.full_name(kafka),
                "search": SEARCH_EVENTS.full_name(kafka)}
    own_producer = producer is None
    producer = producer or make_producer(kafka)
    report = ReplayReport()
    failures: list[BaseException] = []
    start = time.perf_counter()
    first_ts = next((e.timestamp for e in events if e.type != "item"), 0.0)
    try:
        for event in tqdm(events, desc="replay", unit="ev", disable=not progress, mininterval=0.5):
            if speed and event.type != "item":
                due = start + (event.timestamp - first_ts) / speed
                if (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)
            topic = topic_of[event.type]
            future = producer.send(topic, key=event.key(), value=event.to_bytes())
            future.add_callback(lambda _meta, t=topic: report.sent.update((t,)))
            future.add_errback(failures.append)
        producer.flush()
    finally:
        if own_producer:
            producer.close()
    report.seconds = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} events were not acknowledged; first error: {failures[0]!r}")
    report.checksum = event_id_checksum(e.event_id for e in events)
    return report
