"""Every record of a source partition reaches the agent once and in order — which Faust
0.15 does not quite guarantee, so the agents check.

Measured on the real broker (a worker restarted after kill -9): when recovery ends,
Faust seeks the stream partitions to their committed offsets and then resumes flow,
which clears the stream buffers; records fetched in between were dropped and the
partition continued after them (streams.faust_fixes now stops the flow for the seek, so
what is dropped is fetched again), and records an agent took before the seek come again
after it. And a few seconds later it delivered the last record of each partition a
second time. So each partition's next expected offset is tracked, starting from the
group's committed offset when the partition is assigned:

- an offset below it is a repeat: skipped (its outputs are in this worker's transaction);
- an offset above it is a gap: the consumer is sent back to the expected offset, and
  the records in between are read again; if the gap is real (a compacted topic, a
  transaction marker, deleted records) the same record comes back first, and is taken.
"""

from __future__ import annotations

import asyncio
import enum
from functools import partial

import faust
from faust.types import TP
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from gensar.settings import KafkaSettings


class Verdict(enum.Enum):
    PROCESS = "process"
    SKIP = "skip"  # a repeat, or a record read ahead of a gap being refilled
    REWIND = "rewind"  # a gap: the caller seeks back to `expected`


class InOrderDelivery:
    def __init__(self, kafka: KafkaSettings, group: str):
        self.kafka, self.group = kafka, group
        self.expected: dict[TP, int] = {}
        self._refilling: dict[TP, int] = {}  # partition -> the first offset seen after the gap

    async def assigned(self, tps: set[TP]) -> None:
        """Start tracking newly assigned partitions at the group's committed offsets."""
        starts = await asyncio.get_running_loop().run_in_executor(
            None, partial(start_offsets, self.kafka, self.group, [TopicPartition(tp.topic, tp.partition) for tp in tps]))
        self.expected = {tp: starts[TopicPartition(tp.topic, tp.partition)] for tp in tps}
        self._refilling.clear()

    def admit(self, message: faust.types.Message) -> Verdict:
        tp, offset = message.tp, message.offset
        expected = self.expected.get(tp)
        if expected is None or offset == expected or offset == self._refilling.get(tp):
            self._refilling.pop(tp, None)
            self.expected[tp] = offset + 1
            return Verdict.PROCESS
        if offset < expected:
            return Verdict.SKIP
        if tp in self._refilling:
            return Verdict.SKIP  # read before the rewind took effect; it comes again
        self._refilling[tp] = offset
        return Verdict.REWIND


def start_offsets(kafka: KafkaSettings, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Where the group resumes each partition: its committed offset, else the log start."""
    admin = KafkaAdminClient(**kafka.client_options())
    consumer = KafkaConsumer(**kafka.client_options(), group_id=None, enable_auto_commit=False)
    try:
        committed = admin.list_group_offsets({group: partitions}).get(group, {})
        starts = consumer.beginning_offsets(partitions)
        return {tp: committed[tp].offset if tp in committed and committed[tp].offset >= 0 else starts[tp]
                for tp in partitions}
    finally:
        admin.close()
        consumer.close()
