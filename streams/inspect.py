"""Look at what the workers wrote, from Kafka itself (no worker needed): the outputs as a
read_committed consumer sees them, the tables as their changelogs hold them, and whether
the workers' consumer group has processed everything. Tests, benchmarks and operators
use these."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from gensar.settings import KafkaSettings, Settings
from gensar.topics import INTERACTIONS, ITEMS, SEARCH_EVENTS
from streams.app import app_id, changelog_topic
from streams.state import entries_digest


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int


def read_topic(kafka: KafkaSettings, topic: str, *, read_committed: bool = True, idle_s: float = 1.0) -> list[Record]:
    """Every record of `topic` up to its current end (read_committed: what a transactional
    reader sees; aborted outputs are skipped)."""
    consumer = KafkaConsumer(**kafka.client_options(), enable_auto_commit=False, group_id=None,
                             isolation_level="read_committed" if read_committed else "read_uncommitted",
                             consumer_timeout_ms=int(idle_s * 1000))
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)  # the last stable offsets, for read_committed
        records: list[Record] = []
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = consumer.poll(timeout_ms=1000)
            if not batch and all(consumer.position(tp) >= ends[tp] for tp in remaining):
                break
            for tp, messages in batch.items():
                for m in messages:
                    records.append(Record(m.topic, m.partition, m.offset, m.key, m.value,
                                          {k: v for k, v in m.headers or ()}, m.timestamp))
            remaining = {tp for tp in remaining if consumer.position(tp) < ends[tp]}
        return records
    finally:
        consumer.close()


def table_snapshot(settings: Settings, table: str) -> dict[bytes, bytes]:
    """A table as its changelog holds it: the latest committed value per key."""
    snapshot: dict[bytes, bytes] = {}
    for record in read_topic(settings.kafka, changelog_topic(settings, table)):
        if record.value is None:
            snapshot.pop(record.key, None)
        else:
            snapshot[record.key] = record.value
    return snapshot


def changelog_digests(settings: Settings, table: str) -> dict[str, dict]:
    """Per changelog partition, the digest of what it holds committed (the latest value per
    key): what a caught-up worker holding every partition answers on GET /tables/{table}/digest."""
    latest: dict[int, dict[bytes, bytes]] = defaultdict(dict)
    for record in read_topic(settings.kafka, changelog_topic(settings, table)):
        if record.value is None:
            latest[record.partition].pop(record.key, None)
        else:
            latest[record.partition][record.key] = record.value
    return {str(p): entries_digest(entries.items()) for p, entries in sorted(latest.items()) if entries}


def source_topics(settings: Settings) -> list[str]:
    kafka = settings.kafka
    return [SEARCH_EVENTS.full_name(kafka), INTERACTIONS.full_name(kafka), ITEMS.full_name(kafka)]


def unprocessed(settings: Settings) -> dict[TopicPartition, int]:
    """Committed records of each source partition at or after the workers' committed
    offset: what the workers have not processed yet. (Offsets alone cannot tell: a
    transaction's commit marker takes an offset that no consumer ever commits past.)"""
    admin = KafkaAdminClient(**settings.kafka.client_options())
    consumer = KafkaConsumer(**settings.kafka.client_options(), group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed")
    try:
        try:
            committed = admin.list_group_offsets({app_id(settings): None}).get(app_id(settings), {})
        except KafkaError:  # e.g. no coordinator yet on a fresh broker: nothing known to be processed
            committed = {}
        partitions = [TopicPartition(t, p) for t in source_topics(settings)
                      for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = consumer.end_offsets(partitions)
        behind = {tp: committed[tp].offset if tp in committed else 0 for tp in partitions}
        behind = {tp: offset for tp, offset in behind.items() if offset < ends[tp]}
        left = {tp: 0 for tp in partitions}
        if behind:
            consumer.assign(list(behind))
            for tp, offset in behind.items():
                consumer.seek(tp, offset)
            deadline = time.monotonic() + 30
            while any(consumer.position(tp) < ends[tp] for tp in behind) and time.monotonic() < deadline:
                for tp, messages in consumer.poll(timeout_ms=500).items():
                    left[tp] += sum(m.offset < ends[tp] for m in messages)
        return left
    finally:
        admin.close()
        consumer.close()


def wait_caught_up(settings: Settings, timeout_s: float = 120.0, poll_s: float = 0.5) -> float:
    """Block until the workers have committed every source record; return the seconds
    waited. Raises TimeoutError naming what is left."""
    start = time.monotonic()
    left: dict = {}
    while time.monotonic() - start < timeout_s:
        left = unprocessed(settings)
        if left and not any(left.values()):
            return time.monotonic() - start
        time.sleep(poll_s)
    raise TimeoutError(f"workers still behind after {timeout_s:.0f}s: "
                       f"{ {f'{tp.topic}[{tp.partition}]': n for tp, n in left.items() if n} }")
