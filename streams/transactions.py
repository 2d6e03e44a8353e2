"""Exactly-once: every output of an event and the event's offset commit in one Kafka
transaction, and a transaction never ends in the middle of an event.

Faust keeps one transaction open per source partition (transactional id
"<app id>-<partition group>-<partition>") and, left alone, commits it from a timer and
while waiting out a rebalance: the offsets it commits are those acknowledged *before* it
takes the transaction's lock, so events processed in between have their outputs
committed but not their offsets, and a crash then repeats those outputs. Here a
transaction is committed only by whoever holds its partition's processing lock — the
agent right after an event, a timer when the agent is idle, or Faust itself at a
rebalance or shutdown (its consumer's commit is routed here, by
streams.faust_fixes.route_consumer_commits) — with the offsets of exactly the events
processed in it.

Outputs are queued here, not sent one by one (sending a record through Faust cost more
than the rest of an event's processing): samples and dead letters in order, changelog
records by key, keeping only the last value of each key. A transaction commits all its
records or none, so nobody ever reads an earlier value of a key it wrote twice. The
queue is sent as one aiokafka batch per destination partition when the transaction
commits (the samples sooner, when many are queued). The table writes reach the local
store then too, each key encoded once, in one batch per partition, right before their
changelog records are sent (the agent reads its own writes from streams.app's
DecodedCache meanwhile). Exactly-once, a worker starts from the committed changelogs
(streams.worker deletes its store), so those batches skip RocksDB's write-ahead log.
Under at-least-once there is no transaction: the queue is sent when it is
AT_LEAST_ONCE_LINGER_S old or big, and always — waiting for the broker's
acknowledgements — before Faust commits offsets, so no committed offset is ahead of its
event's outputs.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import AsyncIterator, Callable, Iterable

import faust
from faust.types import TP

from streams import faust_fixes
from streams.faults import Faults
from streams.state import Record

#: Samples and dead letters queued before they are sent ahead of the commit.
MAX_QUEUED_RECORDS = 2000
#: At-least-once: how old the queue may grow before it is sent (samples become readable then).
AT_LEAST_ONCE_LINGER_S = 0.02

Output = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers
TableValue = Record | bytes  # a table entry, decoded (encoded when it is stored) or as stored


@dataclass
class Outbox:
    """One transaction's outputs not yet handed to the producer."""

    records: dict[tuple[str, int], list[Output]] = field(default_factory=lambda: defaultdict(list))
    queued: int = 0  # records in `records`
    # (table, partition of its changelog) -> key -> last value; exactly-once, the partition
    # is always the transaction's source partition
    changelogs: dict[tuple[faust.Table, int], dict[bytes, TableValue]] = field(default_factory=dict)
    since: float | None = None  # when its oldest output was queued


class Transactions:
    def __init__(self, app: faust.App, commit_interval_s: float, faults: Faults,
                 on_produced: Callable[[str, int], None], on_stored: Callable[[faust.Table, Iterable[bytes]], None]):
        """`on_produced(topic, records)` counts what the broker has acknowledged;
        `on_stored(table, keys)` is told which queued table writes are in the local store."""
        self.app, self.commit_interval_s, self.faults = app, commit_interval_s, faults
        self.on_produced, self.on_stored = on_produced, on_stored
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._pending: dict[str, dict[TP, int]] = defaultdict(dict)  # id -> next offset per source partition
        self._opened: dict[str, float] = {}  # id -> when its first uncommitted event was processed
        self._outboxes: dict[str | None, Outbox] = defaultdict(Outbox)  # transactional id (None: none) -> outputs
        self._in_flight: set[asyncio.Future] = set()  # at-least-once: sent, not yet acknowledged
        self._sending = asyncio.Lock()  # at-least-once: held while a queue is handed to the producer
        self._tids: dict[TP, str | None] = {}

    @property
    def enabled(self) -> bool:
        return self.app.in_transaction

    def transactional_id(self, source: faust.types.Message) -> str | None:
        """The transaction of the partition `source` came from (None: at-least-once)."""
        tp = source.tp
        if tp not in self._tids:
            self._tids[tp] = faust_fixes.transactional_id(self.app, tp.topic, tp.partition) if self.enabled else None
        return self._tids[tp]

    # --- outputs -------------------------------------------------------------------------

    def send(self, source: faust.types.Message, topic: str, key: bytes, value: bytes, partition: int,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue a record in the transaction of `source`'s partition."""
        outbox = self._outbox(source)
        outbox.records[(topic, partition)].append((key, value, headers or []))
        outbox.queued += 1

    def write(self, source: faust.types.Message, table: faust.Table, key: bytes, value: TableValue) -> None:
        """Queue a table write, for the local store and (to `source`'s partition) the
        table's changelog, replacing one queued for the same key."""
        self._outbox(source).changelogs.setdefault((table, source.partition), {})[key] = value

    def _outbox(self, source: faust.types.Message) -> Outbox:
        outbox = self._outboxes[self.transactional_id(source)]
        if outbox.since is None:
            outbox.since = time.monotonic()
        return outbox

    # --- events and commits ---------------------------------------------------------------

    @asynccontextmanager
    async def event(self, source: faust.types.Message) -> AsyncIterator[None]:
        """Process one event inside its partition's transaction; commit after it when due."""
        tid = self.transactional_id(source)
        if tid is None:
            yield
            outbox = self._outboxes[None]
            if outbox.queued >= MAX_QUEUED_RECORDS or (
                    outbox.since is not None and time.monotonic() - outbox.since >= AT_LEAST_ONCE_LINGER_S):
                await self._flush(None)
            return
        async with self._locks[tid]:
            yield
            self._pending[tid][source.tp] = source.offset + 1
            self._opened.setdefault(tid, time.monotonic())
            if time.monotonic() - self._opened[tid] >= self.commit_interval_s:
                await self._commit(tid)
            elif self._outboxes[tid].queued >= MAX_QUEUED_RECORDS:
                await self._flush(tid, changelogs=False)

    async def commit_idle(self) -> None:
        """Commit transactions whose partitions went quiet; at-least-once, send what is
        queued (a timer calls this)."""
        if not self.enabled:
            await self.flush_all()
            return
        for tid in list(self._pending):
            lock = self._locks[tid]
            if lock.locked() or time.monotonic() - self._opened.get(tid, time.monotonic()) < self.commit_interval_s:
                continue
            async with lock:
                await self._commit(tid)

    def take_over_consumer_commits(self) -> None:
        """Route the commits Faust makes itself (rebalance, shutdown; at-least-once, its
        timer as well) through here."""
        consumer = self.app.consumer
        if self.enabled:
            faust_fixes.route_consumer_commits(consumer, self.commit_all)
        else:
            faust_fixes.before_consumer_commits(consumer, self.flush_all)

    async def commit_all(self, topics: object = None, start_new_transaction: bool = True) -> bool:
        """Commit every open transaction at an event boundary (Faust's consumer commit)."""
        for tid in list(self._pending):
            async with self._locks[tid]:
                await self._commit(tid, start_new_transaction)
        return True

    async def flush_all(self) -> None:
        """At-least-once: send everything queued and wait until the broker has it."""
        await self._flush(None)
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _commit(self, tid: str, start_new_transaction: bool = True) -> None:
        offsets = self._pending.pop(tid, None)
        self._opened.pop(tid, None)
        await self._flush(tid)
        if offsets:
            await self.app.producer.commit_transactions({tid: offsets}, self.app.conf.id,
                                                        start_new_transaction=start_new_transaction)

    async def _flush(self, tid: str | None, changelogs: bool = True) -> None:
        """Hand the queued outputs of transaction `tid` to its producer: samples and dead
        letters, then the changelogs table by table, in the order they were first
        written (users before item-stats)."""
        if tid is not None:
            await self._hand_over(tid, changelogs)  # the caller holds the transaction's lock
            return
        async with self._sending:  # so that flush_all waits for a queue being handed over
            await self._hand_over(None, changelogs)

    async def _hand_over(self, tid: str | None, changelogs: bool) -> None:
        outbox = self._outboxes.get(tid)
        if outbox is None or not (outbox.queued or (changelogs and outbox.changelogs)):
            return
        records, outbox.records, outbox.queued = outbox.records, defaultdict(list), 0
        tables: dict[tuple[faust.Table, int], dict[bytes, TableValue]] = {}
        if changelogs:
            tables, outbox.changelogs, outbox.since = outbox.changelogs, {}, None
        async with faust_fixes.aiokafka_producer(self.app, tid) as producer:
            for (topic, partition), queued in records.items():
                await self._send_batches(producer, topic, partition, queued)
            for i, ((table, partition), entries) in enumerate(tables.items()):
                if i == 1:
                    await self.faults.reach("between-changelog-sends")
                encoded = [(key, value if isinstance(value, bytes) else value.to_bytes())
                           for key, value in entries.items()]
                faust_fixes.write_store(table, partition, encoded, durable=not self.enabled)
                self.on_stored(table, entries.keys())
                topic = table.changelog_topic.get_topic_name()
                await self._send_batches(producer, topic, partition, [(k, v, []) for k, v in encoded],
                                         partial(_persist_offset, table, TP(topic, partition)))

    async def _send_batches(self, producer, topic: str, partition: int, records: list[Output],
                            on_sent: Callable[[int], None] | None = None) -> None:
        """Send `records` to `topic`/`partition` in as few batches as the producer's batch size allows."""
        batch, count = producer.create_batch(), 0
        for key, value, headers in records:
            while batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                if not count:
                    raise ValueError(f"a record of {len(value)} bytes for {topic} is larger than a producer batch")
                await self._submit(producer, batch, topic, partition, count, on_sent)
                batch, count = producer.create_batch(), 0
            count += 1
        if count:
            await self._submit(producer, batch, topic, partition, count, on_sent)

    async def _submit(self, producer, batch, topic: str, partition: int, count: int,
                      on_sent: Callable[[int], None] | None) -> None:
        future = await producer.send_batch(batch, topic, partition=partition)

        def sent(done: asyncio.Future) -> None:
            self._in_flight.discard(done)
            if done.cancelled() or done.exception() is not None:
                return
            self.on_produced(topic, count)
            if on_sent is not None:
                on_sent(done.result().offset + count - 1)  # a batch's records have consecutive offsets

        future.add_done_callback(sent)
        if not self.enabled:
            self._in_flight.add(future)


def _persist_offset(table: faust.Table, tp: TP, last_offset: int) -> None:
    """Once a changelog record is stored, the local store remembers its offset, so a
    restart recovers only what came after it."""
    table.data.set_persisted_offset(tp, last_offset)
