"""Two corrections to faust-streaming 0.15 that exactly-once processing depends on, both
found by our kill -9 and rebalance tests on the real broker.

1. How far table recovery must read a changelog partition.

Faust recovers a changelog partition until it has applied the record at "highwater - 1".
Under exactly-once it takes that highwater from the consumer's cached last stable
offset, which aiokafka only knows for partitions it has already fetched from: a worker
that has just started or been handed partitions often has none yet, or an old one. And
even the true last stable offset points just past a transaction *marker*, an offset
that is never delivered as a record; Faust then waits for two 5-second timeouts and
declares the partition recovered once the consumer's fetch position has passed it,
while records already fetched may not have been applied yet. Both end recovery early,
and the tables silently miss committed state (our kill -9 test caught it doing so).

The fix: the highwater of a partition is one past its last *committed data record*,
found by reading the partition's tail under read_committed (aborted records and markers
are skipped). Recovery then ends exactly when that record has been applied.

2. Which fetched records reach the agents. Faust drops a fetched record whose offset is
below the highest offset it has delivered for the partition. When recovery ends it seeks
the partitions to their committed offsets; records fetched from before that seek still
arrive, raise that mark, and the re-fetched records after the committed offset are then
dropped: a restarted worker silently skipped events. Every fetched record is delivered
instead, and streams.delivery keeps each partition in order, once.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from kafka import KafkaConsumer, TopicPartition

from gensar.settings import KafkaSettings


def after_last_committed_records(kafka: KafkaSettings, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """One past the offset of each partition's last committed record (0 when it has none)."""
    consumer = KafkaConsumer(**kafka.client_options(), group_id=None, enable_auto_commit=False,
                             isolation_level="read_committed")
    try:
        ends = consumer.end_offsets(partitions)  # the last stable offsets
        return {tp: _after_last_record(consumer, tp, ends[tp]) for tp in partitions}
    finally:
        consumer.close()


def _after_last_record(consumer: KafkaConsumer, tp: TopicPartition, end: int, window: int = 64) -> int:
    while end > 0:
        start = max(0, end - window)
        consumer.assign([tp])
        consumer.seek(tp, start)
        last, deadline = None, time.monotonic() + 30
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=500).get(tp, []):
                if record.offset < end:
                    last = record.offset
        if consumer.position(tp) < end:
            raise TimeoutError(f"could not read {tp} up to offset {end}")
        if last is not None:
            return last + 1
        if start == 0:
            return 0
        window *= 8  # only markers and aborted records in this window: look further back
    return 0


class _NoReadOffsets(dict):
    """Faust's per-partition "highest offset delivered", always unknown to its fetch loop."""

    def __getitem__(self, tp):
        return None


def _deliver_every_fetched_record(init):
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._read_offset = _NoReadOffsets()

    return __init__


def apply(kafka: KafkaSettings) -> None:
    if not getattr(Consumer.__init__, "_gensar_fixed", False):
        Consumer.__init__ = _deliver_every_fetched_record(Consumer.__init__)
        Consumer.__init__._gensar_fixed = True

    async def _highwaters(self: AIOKafkaConsumerThread, tps: list) -> dict:
        found = await asyncio.get_running_loop().run_in_executor(
            None, partial(after_last_committed_records, kafka, [TopicPartition(tp.topic, tp.partition) for tp in tps]))
        return {tp: found[TopicPartition(tp.topic, tp.partition)] for tp in tps}

    AIOKafkaConsumerThread._highwaters = _highwaters
