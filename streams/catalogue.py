"""Which items exist, as this worker knows it: every valid upsert on the items topic,
read by a consumer of the worker's own.

The catalogue table (written by the catalogue agent) is the durable, changelog-backed
catalogue that the read API serves. Deciding "unknown item" cannot wait on it: Faust
feeds all agents from one fetcher, and a user-events agent waiting for the catalogue
agent would stop the fetcher that feeds the catalogue agent. This replica fetches on its
own, so a worker can always catch up with the items acknowledged before an event.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from gensar.events import InvalidEvent, ItemUpsert, decode

log = logging.getLogger("gensar.streams.catalogue")


class CatalogueReplica:
    def __init__(self, connection: dict, topic: str, partitions: int):
        self.connection, self.topic, self.partitions = connection, topic, partitions  # aiokafka options
        self.known: set[str] = set()  # items are only ever added (an upsert replaces, never removes)
        self._position: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._started = asyncio.Event()

    async def run(self) -> None:
        """Follow the items topic from its beginning, forever."""
        self._consumer = AIOKafkaConsumer(**self.connection, group_id=None,
                                          enable_auto_commit=False, isolation_level="read_committed",
                                          auto_offset_reset="earliest")
        await self._consumer.start()
        try:
            if self.topic not in await self._consumer.topics():
                raise RuntimeError(f"topic {self.topic} does not exist")
            partitions = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            self._consumer.assign(partitions)
            await self._consumer.seek_to_beginning(*partitions)
            self._position = {tp: 0 for tp in partitions}
            self._started.set()
            while True:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=10_000)
                for tp, records in batches.items():
                    for record in records:
                        self._learn(record.key, record.value)
                    self._position[tp] = records[-1].offset + 1
                for tp in partitions:  # past transaction markers and compacted gaps too
                    self._position[tp] = max(self._position[tp], await self._consumer.position(tp))
        finally:
            await self._consumer.stop()

    def _learn(self, key: bytes | None, value: bytes | None) -> None:
        try:
            item = decode(value, ItemUpsert)
        except InvalidEvent:
            return  # the catalogue agent dead-letters it
        if key == item.item_id.encode():
            self.known.add(item.item_id)

    async def caught_up(self, timeout_s: float) -> bool:
        """Wait until this replica has read every upsert acknowledged so far (or the
        timeout passes); return whether it has."""
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(self._started.wait(), timeout=timeout_s)
        except asyncio.TimeoutError:
            return False
        ends = await self._consumer.end_offsets(list(self._position))
        while any(self._position[tp] < end for tp, end in ends.items()):
            if time.monotonic() > deadline:
                log.warning("catalogue replica still behind the items topic after %.0fs", timeout_s)
                return False
            await asyncio.sleep(0.01)
        return True
