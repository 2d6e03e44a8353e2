"""Every use of faust-streaming's (0.15) and aiokafka's internals, in one place: the other
streams modules use only Faust's public API and the names exported here.

The corrections are subclasses, installed per app through Faust's own extension point:
`install(app, kafka, faults)` gives the app (through the public `App.transport` setter) a
transport whose `Consumer` is ours, before anything creates the consumer. Nothing is
patched at import, and no other app in the process is touched. `WRITTEN_FOR` is the
faust-streaming range these were written and tested against; tests/test_faust_fixes.py
(and, for the fault sites of 5., tests/test_streams_faults.py) fails on an upgrade that
moves or changes any private name relied on here (re-check this module then, against our
kill -9 and rebalance tests on the real broker).

1. How far table recovery must read a changelog partition (`_ConsumerThread._highwaters`).

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

2. Which fetched records reach the agents (`Consumer._read_offset`,
`Consumer.perform_seek`). Faust drops a fetched record whose offset is below the highest
offset it has delivered for the partition. When recovery ends it seeks the partitions to
their committed offsets; records fetched from before that seek still arrive, raise that
mark, and the re-fetched records after the committed offset are then dropped: a
restarted worker silently skipped events. Every fetched record is delivered instead, and
streams.delivery keeps each partition in order, once.

And at the end of recovery (`Recovery.on_recovery_completed`) Faust resumes the stream
partitions, seeks them, and only then resumes flow (`app.flow_control.resume()`), which
empties the agents' buffers. The fetch loop is running all the while (recovery started
it to read the changelogs), so what it fetched from the sought positions before that
resume was taken from the fetcher and then thrown away: the consumer's positions stood
past records no agent ever saw. streams.delivery notices such a gap only when the next
record of the partition arrives; with no more input the partition stalled (a worker
whose recovery waited 3 s after the seek processed one of 300 pending events; under load
the natural gap did the same). The seek now stops the flow first (`stop_flow`: the fetch
loop delivers nothing until recovery's `resume_flow`), so every record handed out or
buffered before the resume was fetched before the seek, and is fetched again after it.

3. Who commits (`Consumer.commit`). Faust commits a transaction from a timer and while
waiting out a rebalance, with the offsets acknowledged before it takes the transaction's
lock ([faust#440], [faust#517]); under exactly-once streams.transactions commits at event
boundaries instead, and the consumer's own commits (rebalance, shutdown) are routed to it
(`route_consumer_commits`).

4. Which transaction a send joins (`transactional_id`). Faust routes a send to the
transaction of its *destination* partition ([faust#323]: a KeyError / no producer for
topics the app does not consume); we name the transaction of the source partition, in
the id format Faust's TransactionManager opens transactions under.

3b. At-least-once, something to do before every commit (`before_consumer_commits`):
streams.transactions sends the queued outputs, so no offset is committed ahead of its
event's outputs.

5. Fault sites inside Faust (tests only; streams.faults). Two of the places a test kills or
delays a worker are inside Faust: a transaction's commit, after Faust has sent it the
consumed offsets (`Producer.commit_transactions`), and recovery's seek of the stream
partitions to their committed offsets right before it resumes flow
(`Consumer.perform_seek`). Only when a fault is set does the transport build the
subclasses that reach them; a worker without one runs exactly the classes of 1.-3.

6. Batched sends (`aiokafka_producer`). Faust's `Producer.send` takes a lock and goes
through aiokafka's `send` for every record; streams.transactions hands aiokafka whole
batches instead (`create_batch` / `send_batch`, public aiokafka API) on the producer
Faust keeps for the transaction (its private `_transaction_producers`), under the lock
Faust takes for it (`_trn_locks`), or on Faust's plain producer (`_ensure_producer()`)
when there is no transaction.

7. Table writes outside an event (`write_store`). Faust's RocksDB store finds the partition
of a write from the current event, which a commit from a timer does not have; and it
writes through the write-ahead log one key at a time. streams.transactions writes a
transaction's entries in one batch per partition (the store's private
`_db_for_partition`, and its `_key_index` of which partition holds a key), skipping the
log where the store is rebuilt from the changelogs at every start anyway.

[faust#440]: https://github.com/faust-streaming/faust/issues/440
[faust#517]: https://github.com/faust-streaming/faust/issues/517
[faust#323]: https://github.com/faust-streaming/faust/issues/323
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import faust
from faust.stores import rocksdb as rocksdb_store
from faust.transport.consumer import TopicPartitionGroup
import aiokafka
from faust.transport.drivers import aiokafka as aiokafka_driver
from kafka import KafkaConsumer, TopicPartition

from gensar.settings import KafkaSettings
from streams.faults import Faults

#: The faust-streaming releases these corrections were written for: [first, last) as in
#: pyproject.toml. Outside it, tests/test_faust_fixes.py fails until this module is re-checked.
WRITTEN_FOR = ("0.15.3", "0.16")
#: The same for aiokafka (the consumer thread's `_highwaters` reads its consumer).
AIOKAFKA_WRITTEN_FOR = ("0.14", "0.15")

#: What an app's Faust-opened transaction for a source partition is called (Faust's
#: TransactionManager.transactional_id_format); the tripwire test checks it is unchanged.
TRANSACTIONAL_ID_FORMAT = "{group_id}-{tpg.group}-{tpg.partition}"

CommitHandler = Callable[..., Awaitable[bool]]


# --- 1. the highwater recovery reads to ---------------------------------------------------


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


class _ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread, with the highwaters recovery reads up to (fix 1).

    Overrides the private `AIOKafkaConsumerThread._highwaters(partitions)`, which the public
    `highwaters(*partitions)` (what table recovery calls) runs in this thread. Like the
    method it replaces, it is used under both processing guarantees."""

    async def _highwaters(self, partitions: list) -> dict:
        kafka = self.consumer.transport.kafka_settings
        found = await asyncio.get_running_loop().run_in_executor(
            None, partial(after_last_committed_records, kafka,
                          [TopicPartition(tp.topic, tp.partition) for tp in partitions]))
        return {tp: found[TopicPartition(tp.topic, tp.partition)] for tp in partitions}


# --- 2. and 3. the consumer ------------------------------------------------------------------


class _NoReadOffsets(dict):
    """Faust's per-partition "highest offset delivered", always unknown to its fetch loop
    (which reads it through `__getitem__`; seeks and revocations still write and pop it)."""

    def __getitem__(self, tp):
        return None


class Consumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, delivering every fetched record and none that recovery's
    end throws away (fix 2), its thread reading highwaters as recovery needs them (fix 1),
    its commits optionally routed to a handler (fix 3)."""

    #: When set (route_consumer_commits), every commit of this consumer, Faust's own
    #: included, calls it instead: `await handler(topics, start_new_transaction)`.
    commit_handler: CommitHandler | None = None
    #: When set (before_consumer_commits), awaited before every commit of this consumer.
    before_commit: Callable[[], Awaitable[None]] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust's fetch loop (Consumer._drain_messages) drops a record whose offset is
        # below `_read_offset[tp]`; with this mapping it never knows one (fix 2).
        self._read_offset = _NoReadOffsets()

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        # The private factory ThreadDelegateConsumer.__init__ calls; the same arguments as
        # faust's own aiokafka Consumer._new_consumer_thread, our thread class.
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        # Recovery seeks, then empties the agents' buffers and resumes flow, with no await
        # in between; Faust's fetch loop also seeks here when it finds the flow stopped.
        # Stopped from before the seek, the loop hands out nothing fetched after it that
        # the emptying could throw away (fix 2).
        self.stop_flow()
        await super().perform_seek()

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if self.commit_handler is not None:
            return await self.commit_handler(topics, start_new_transaction)
        if self.before_commit is not None:
            await self.before_commit()
        return await super().commit(topics, start_new_transaction=start_new_transaction)


# --- 5. fault sites inside Faust --------------------------------------------------------------


class _FaultSitesConsumer(Consumer):
    """Our consumer, reaching the "recovery-seek" site once Faust's seek to the committed
    offsets is done: recovery (`Recovery.on_recovery_completed`, `_resume_streams`) awaits
    `perform_seek` and then resumes flow without awaiting anything else."""

    async def perform_seek(self) -> None:
        await super().perform_seek()
        await self.transport.faults.reach("recovery-seek")


class _FaultSitesAIOKafkaProducer(aiokafka.AIOKafkaProducer):
    """aiokafka's producer, reaching the commit's sites. Faust commits a transaction only in
    `Producer.commit_transactions`, which awaits `send_offsets_to_transaction` and then this."""

    def __init__(self, *args: Any, faults: Faults, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults = faults

    async def commit_transaction(self) -> None:
        await self.faults.reach("before-commit")
        await super().commit_transaction()
        await self.faults.reach("after-commit")


class _FaultSitesProducer(aiokafka_driver.Producer):
    """Faust's producer, building its aiokafka producers (the private `_producer_type`,
    which `_new_producer` calls for each transaction's producer) from ours."""

    @property
    def _producer_type(self) -> Callable[..., aiokafka.AIOKafkaProducer]:
        return partial(_FaultSitesAIOKafkaProducer, faults=self.transport.faults)


class Transport(aiokafka_driver.Transport):
    """Faust's `kafka://` transport (aiokafka), creating our Consumer. Carries the
    connection settings the consumer thread reads the changelogs' tails with, and the
    worker's faults (fix 5)."""

    Consumer = Consumer

    def __init__(self, url: list, app: faust.App, *, kafka: KafkaSettings, faults: Faults, **kwargs: Any) -> None:
        super().__init__(url, app, **kwargs)
        self.kafka_settings, self.faults = kafka, faults
        if faults.enabled:
            self.Consumer, self.Producer = _FaultSitesConsumer, _FaultSitesProducer


# --- what the other modules call -------------------------------------------------------------


def install(app: faust.App, kafka: KafkaSettings, faults: Faults) -> None:
    """Give `app` the corrected consumer (and, with a fault set, the fault sites inside
    Faust): call it right after creating the app, before declaring agents (declaring one
    builds the app's transport)."""
    app.transport = Transport(app.conf.broker_consumer, app, kafka=kafka, faults=faults)


def route_consumer_commits(consumer: object, handler: CommitHandler) -> None:
    """Every commit `consumer` makes from now on, Faust's own (rebalance, shutdown, its
    timer) included, calls `handler(topics, start_new_transaction)` instead (fix 3)."""
    _ours(consumer).commit_handler = handler


def before_consumer_commits(consumer: object, step: Callable[[], Awaitable[None]]) -> None:
    """Every commit `consumer` makes from now on awaits `step()` first (3b)."""
    _ours(consumer).before_commit = step


def _ours(consumer: object) -> Consumer:
    if not isinstance(consumer, Consumer):
        raise TypeError(f"{type(consumer).__name__} is not the consumer streams.faust_fixes.install gives an app")
    return consumer


@asynccontextmanager
async def aiokafka_producer(app: faust.App, transactional_id: str | None) -> AsyncIterator[aiokafka.AIOKafkaProducer]:
    """The aiokafka producer of the transaction `transactional_id` (None: the app's
    producer outside transactions), held under the lock Faust takes to send to it (6)."""
    producer = app.producer
    if transactional_id is None:
        yield producer._ensure_producer()
        return
    transaction_producer = producer._transaction_producers.get(transactional_id)
    if transaction_producer is None:  # Faust's own send fails the same way
        raise faust.exceptions.ProducerSendError(f"No transaction producer found for : {transactional_id}")
    async with producer._trn_locks[transactional_id]:
        yield transaction_producer


def write_store(table: faust.Table, partition: int, entries: list[tuple[bytes, bytes]], *, durable: bool) -> None:
    """Write `entries` to `partition` of `table`'s local store, in one batch (7); not
    `durable`: without RocksDB's write-ahead log (a crash may lose them)."""
    store = table.data
    if not isinstance(store, rocksdb_store.Store):  # memory://: a dict
        for key, value in entries:
            store[key] = value
        return
    if not rocksdb_store.USE_ROCKSDICT:
        raise RuntimeError("the rocksdb:// store needs rocksdict (python-rocksdb is not supported)")
    batch = rocksdb_store.WriteBatch(raw_mode=True)  # as the store opens its databases
    for key, value in entries:
        batch.put(key, value)
        store._key_index[key] = partition
    options = rocksdb_store.rocksdict.WriteOptions()
    options.disable_wal = not durable
    store._db_for_partition(partition).write(batch, options)


def transactional_id(app: faust.App, topic: str, partition: int) -> str:
    """The transaction Faust keeps open for the source partition `topic`/`partition` (fix 4):
    one per partition (of its partition group), opened and closed by Faust's
    TransactionManager on every rebalance under this name."""
    tpg = TopicPartitionGroup(topic, partition, app.assignor.group_for_topic(topic))
    return TRANSACTIONAL_ID_FORMAT.format(group_id=app.conf.id, tpg=tpg)
