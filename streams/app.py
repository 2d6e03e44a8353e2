"""The Faust app of the stream workers, declared in a fixed order: app, topics, tables,
agents, web views, timers.

    search-events ─┐                         ┌─▶ training-samples (one per event and target)
    interactions ──┴─▶ user-events agent ────┤
                        users, item-stats    └─▶ dead-letter (bad input, with reason and offset)
    items ──▶ catalogue agent ─▶ catalogue (a global table: every worker holds all of it)
    items ──▶ CatalogueReplica (each worker's own consumer: decides "unknown item")

Item statistics are counted where the events are, per user partition (key
"<partition>/<item id>"), so they commit with the events that made them; an item's
statistics are the sum of its partitions' shares (the read API adds them up). Re-keying
every use by item instead would double the records a worker handles per event.

Exactly-once (default): one Kafka transaction per source partition holds the event's
samples and dead letters, the changelog records of its table writes, and its consumed
offset. Faust would route a send to the transaction of its *destination* partition,
which only works for topics the app itself consumes, so every output is sent explicitly
in the transaction of the partition its source event came from, and transactions are
committed at event boundaries (streams.transactions). A crash or a rebalance aborts the
open transaction: its outputs never become visible to read_committed readers, its
offsets are not committed, and the events are processed again. State updates are also
idempotent per source offset (streams.state), and a worker starts from the committed
changelogs rather than a local store that may be ahead of them (streams.worker).
"""

from __future__ import annotations

from typing import Any, Iterable

import faust
import mode
from faust.types import TP
from aiokafka.partitioner import murmur2

from gensar.events import InteractionEvent, InvalidEvent, ItemUpsert, SearchEvent
from gensar.layout import Layout
from gensar.settings import Settings
from gensar.topics import DEAD_LETTER, INTERACTIONS, ITEMS, SEARCH_EVENTS, TRAINING_SAMPLES, TopicSpec
from streams import faust_fixes
from streams.catalogue import CatalogueReplica
from streams.dead_letters import dead_letter, validate
from streams.delivery import InOrderDelivery, Verdict
from streams.faults import Faults
from streams.connection import aiokafka_options, faust_broker
from streams.metrics import StreamMetrics
from streams.settings import StreamSettings
from streams.transactions import Transactions
from streams.state import (ItemStats, Record, UserState, apply_item_use, apply_user_event, item_stats_key,
                           item_stats_partition, items_used, samples_for)


def app_id(settings: Settings) -> str:
    """The consumer group, transactional-id prefix and changelog-topic prefix."""
    return f"{settings.kafka.topic_prefix}streams"


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{app_id(settings)}-{table}-changelog"


def partition_for(key: bytes, partitions: int) -> int:
    """The Java client's default partitioner (murmur2), as the replay producer uses."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class StreamApp:
    """One worker's Faust app with its topics, tables, agents and metrics."""

    def __init__(self, settings: Settings, streams: StreamSettings):
        self.settings, self.streams = settings, streams
        self.metrics = StreamMetrics()
        self.faults = Faults.from_setting(streams.fault)
        self.replica = CatalogueReplica(aiokafka_options(settings.kafka), ITEMS.full_name(settings.kafka),
                                        ITEMS.partition_count(settings.kafka))
        kafka = settings.kafka
        exactly_once = streams.processing_guarantee == "exactly_once"
        self.app = faust.App(
            app_id(settings),
            **faust_broker(kafka),
            store=streams.store,
            datadir=str(Layout.of(settings).stream_store(streams.worker_name)),
            processing_guarantee=streams.processing_guarantee,
            # Exactly-once commits at event boundaries (streams.transactions); Faust's own
            # commits then only run on rebalance and shutdown.
            broker_commit_interval=streams.commit_interval_s if not exactly_once else 24 * 3600.0,
            broker_commit_every=10_000 if not exactly_once else 2**62,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=streams.session_timeout_s,
            broker_heartbeat_interval=streams.session_timeout_s / 5,
            topic_partitions=kafka.partitions,
            topic_replication_factor=kafka.replication_factor,
            topic_disable_leader=True,  # no extra leader-election topic; the group coordinator suffices
            table_standby_replicas=0,  # a moved partition is rebuilt from its changelog
            producer_acks=-1,
            producer_linger=0.005,  # batch sends for 5 ms instead of one request per record
            producer_max_batch_size=256 * 1024,  # samples carry histories: 16 KiB batches hold ~10
            web_enabled=True,
            web_bind=streams.web_host,
            web_port=streams.web_port,
            canonical_url=streams.advertised_url(),
            autodiscover=False,
            # An agent that raises on anything but bad input (which is dead-lettered) stops
            # the worker: the open transaction aborts and the event is processed again
            # after a restart. Faust's default restarts the agent past the event instead.
            agent_supervisor=mode.CrashingSupervisor,
        )
        faust_fixes.install(self.app, kafka, self.faults)  # before the agents: declaring one builds the transport
        self.transactions = Transactions(self.app, streams.commit_interval_s, self.faults,
                                         on_produced=self._count_produced, on_stored=self._stored)
        self.delivery = InOrderDelivery(kafka, self.app.conf.id)
        self._declare_topics()
        self._declare_tables()
        self._declare_agents()
        self._declare_views()
        self._declare_timers()

    # --- topics ------------------------------------------------------------------------

    def _topic(self, name: str, partitions: int, **kwargs: Any) -> faust.TopicT:
        return self.app.topic(name, partitions=partitions, key_type=bytes, value_type=bytes,
                              key_serializer="raw", value_serializer="raw", allow_empty=True, **kwargs)

    def _declare_topics(self) -> None:
        kafka = self.settings.kafka
        self.topic_spec: dict[str, TopicSpec] = {s.full_name(kafka): s for s in (SEARCH_EVENTS, INTERACTIONS, ITEMS)}
        self.user_events = self.app.topic(  # one stream over both user-keyed topics (co-partitioned)
            SEARCH_EVENTS.full_name(kafka), INTERACTIONS.full_name(kafka), key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw", allow_empty=True)
        self.items = self._topic(ITEMS.full_name(kafka), ITEMS.partition_count(kafka))
        self.samples_name = TRAINING_SAMPLES.full_name(kafka)
        self.sample_partitions = TRAINING_SAMPLES.partition_count(kafka)
        self.dead_letter_name = DEAD_LETTER.full_name(kafka)

    # --- tables ------------------------------------------------------------------------

    def _declare_tables(self) -> None:
        kafka = self.settings.kafka
        # Keys and values are bytes, so changelog keys hash like the source records' keys
        # (Faust routes web requests for a key by that hash).
        raw: dict[str, Any] = dict(key_type=bytes, value_type=bytes, on_changelog_event=self._on_recovered_record)
        if self.streams.store.startswith("rocksdb"):  # RocksDB's defaults size a big server (2 GiB cache)
            raw["options"] = {"write_buffer_size": 16 * 2**20, "block_cache_size": 64 * 2**20}
        # users: user id -> UserState; co-partitioned with the user-keyed topics.
        self.users = self.app.Table("users", partitions=kafka.partitions, help="Per-user bounded histories.", **raw)
        # catalogue: item id -> ItemUpsert, on every worker (any partition may name any item).
        self.catalogue = self.app.GlobalTable("catalogue", partitions=ITEMS.partition_count(kafka),
                                              help="The item catalogue.", **raw)
        # item_stats: "<partition>/<item id>" -> that partition's ItemStats of the item.
        self.item_stats = self.app.Table("item-stats", partitions=kafka.partitions, help="Running item statistics.",
                                         **raw)
        self.user_states = DecodedCache(self.users, UserState)
        self.item_shares = DecodedCache(self.item_stats, ItemStats)
        self._caches = {cache.table: cache for cache in (self.user_states, self.item_shares)}
        self.app.on_partitions_revoked.connect(self._on_revoked)
        self.app.on_partitions_assigned.connect(self._on_assigned)

    async def _on_recovered_record(self, _event: faust.EventT) -> None:
        """Faust calls this for every changelog record its recovery reads."""
        await self.faults.reach("recovery-record")

    async def _on_revoked(self, *_args: Any, **_kwargs: Any) -> None:
        self._forget_cached()

    async def _on_assigned(self, _sender: Any, assigned: set[TP], **_kwargs: Any) -> None:
        self.transactions.take_over_consumer_commits()  # the consumer exists from the first assignment
        self._forget_cached()
        await self.delivery.assigned({tp for tp in assigned if tp.topic in self.topic_spec})

    def partition_of(self, table: faust.Table, key: bytes) -> int:
        """The partition of `table` whose store holds `key`: an item share's is in its key;
        a user's and an item's are those of their source records (murmur2 of the key)."""
        if table is self.item_stats:
            return item_stats_partition(key)
        return partition_for(key, table.partitions)

    def _stored(self, table: faust.Table, keys: Iterable[bytes]) -> None:
        if table in self._caches:
            self._caches[table].stored(keys)

    def _forget_cached(self) -> None:
        """Partitions moved: recovery rewrites stores behind the caches' back. (Faust has
        committed every transaction before it signals a revocation, so no write is
        only in a cache.)"""
        self.user_states.clear()
        self.item_shares.clear()

    # --- agents ------------------------------------------------------------------------

    def _declare_agents(self) -> None:
        self.app.agent(self.user_events, name="user-events")(self._user_events_agent)
        self.app.agent(self.items, name="catalogue")(self._catalogue_agent)

    async def _user_events_agent(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            if await self._admitted(event.message):
                async with self.transactions.event(event.message):
                    with self._processing(event.message):
                        await self._on_user_event(event.message)

    async def _catalogue_agent(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            if await self._admitted(event.message):
                async with self.transactions.event(event.message):
                    with self._processing(event.message):
                        await self._on_item_upsert(event.message)

    async def _admitted(self, message: faust.types.Message) -> bool:
        """Whether to process `message` now (see streams.delivery)."""
        verdict = self.delivery.admit(message)
        if verdict is Verdict.REWIND:
            await self.app.consumer.seek_wait({message.tp: self.delivery.expected[message.tp]})
            self.metrics.count(message.topic, "rewound")
        elif verdict is Verdict.SKIP:
            self.metrics.count(message.topic, "repeated")
        return verdict is Verdict.PROCESS

    def _count_produced(self, topic: str, records: int) -> None:
        self.metrics.count(topic, "produced", records)

    def _processing(self, message: faust.types.Message):
        return self.metrics.processing_of(message.topic).time()

    async def _on_user_event(self, message: faust.types.Message) -> None:
        spec = self.topic_spec[message.topic]
        schema = SearchEvent if spec is SEARCH_EVENTS else InteractionEvent
        try:
            event = validate(message.key, message.value, schema)
            targets = [event.item_id] if isinstance(event, InteractionEvent) else event.clicked_items
            unknown = await self._unknown_items(targets)
            if unknown:
                raise InvalidEvent("unknown-item", f"not in the catalogue: {', '.join(unknown[:5])}")
            # Read, compute and write the user's state with no await in between: both
            # topics' events of one user are processed by this one agent, in arrival order.
            state = self.user_states.get(event.user_id.encode())
            samples = samples_for(state, event, self.streams.history_length, self.streams.search_history_length,
                                  self.streams.sample_events)
        except InvalidEvent as bad:
            await self._dead_letter(message, bad)
            return
        self._write(message, self.user_states, event.user_id.encode(), apply_user_event(
            state, event, spec.name, message.offset, self.streams.history_length,
            self.streams.search_history_length))
        for item_id in items_used(event):
            key = item_stats_key(message.partition, item_id)
            self._write(message, self.item_shares, key, apply_item_use(self.item_shares.get(key), event, spec.name,
                                                                       message.offset))
        await self.faults.reach("after-local-write")
        headers = _source_headers(message)
        for sample in samples:
            key = sample.key()
            self.transactions.send(message, self.samples_name, key, sample.to_bytes(),
                                   partition_for(key, self.sample_partitions), headers)
        self.metrics.count(message.topic, "processed")

    async def _on_item_upsert(self, message: faust.types.Message) -> None:
        try:
            item = validate(message.key, message.value, ItemUpsert)
        except InvalidEvent as bad:
            await self._dead_letter(message, bad)
            return
        self.transactions.write(message, self.catalogue, item.item_id.encode(), item.to_bytes())  # the latest upsert wins
        self.metrics.count(message.topic, "processed")

    async def _unknown_items(self, item_ids: list[str]) -> list[str]:
        """Items this worker does not know once it has read every upsert acknowledged
        before now (so an item produced before the event that names it is known)."""
        missing = [i for i in item_ids if i not in self.replica.known]
        if missing:
            await self.replica.caught_up(self.streams.catalogue_wait_s)
        return [i for i in missing if i not in self.replica.known]

    # --- outputs -----------------------------------------------------------------------

    async def _dead_letter(self, message: faust.types.Message, bad: InvalidEvent) -> None:
        letter, headers = dead_letter(bad, message.value, topic=message.topic, partition=message.partition,
                                      offset=message.offset)
        self.transactions.send(message, self.dead_letter_name, letter.key(), letter.to_bytes(), 0,
                               _source_headers(message) + headers)
        self.metrics.count(message.topic, "dead-lettered")
        self.metrics.dead_letters.labels(bad.reason).inc()

    def _write(self, source: faust.types.Message, cache: "DecodedCache", key: bytes, value: Record) -> None:
        """A table write: read back from the cache at once; in the store and the changelog
        with the source event's transaction (streams.transactions)."""
        cache.put(key, value)
        self.transactions.write(source, cache.table, key, value)

    # --- the read interface ------------------------------------------------------------

    def _declare_views(self) -> None:
        from streams.views import declare_views

        declare_views(self)

    # --- timers ------------------------------------------------------------------------

    def _declare_timers(self) -> None:
        self.app.task(self._follow_catalogue)
        self.app.timer(self.streams.commit_interval_s / 2, name="commit-idle")(self.transactions.commit_idle)
        self.app.timer(self.streams.lag_interval_s, name="consumer-lag")(self._measure_lag)

    async def _follow_catalogue(self) -> None:
        try:
            await self.replica.run()
        except Exception as exc:  # without it no event could be validated: stop the worker
            await self.app.crash(exc)
            raise

    async def _measure_lag(self) -> None:
        """Lag per assigned source partition: end offset (last stable offset under
        exactly-once) minus the next offset this worker will process."""
        consumer = self.app.consumer
        sources = set(self.topic_spec)
        for tp in consumer.assignment():
            if tp.topic not in sources or self.app.assignor.is_standby(tp):
                continue
            end = consumer.highwater(tp)
            if end is None:
                continue
            position = self.delivery.expected.get(tp)
            if position is None:
                position = await consumer.position(tp) or 0
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - position))


class DecodedCache:
    """Decoded values of a table's entries, in front of its store (decoding a user's
    history costs more than the rest of its processing), including the writes that reach
    the store only when their transaction is committed. Only this worker writes the
    entries of its partitions, through `put`, so the cache stays true until partitions
    move; then it is emptied."""

    def __init__(self, table: faust.Table, model: type[Record], limit: int = 200_000):
        self.table, self.model, self.limit = table, model, limit
        self._values: dict[bytes, Record] = {}
        self._unstored: set[bytes] = set()  # put, not yet in the store: never forgotten

    def get(self, key: bytes) -> Any:
        """The entry of `key` (the model's empty value when there is none)."""
        value = self.lookup(key)
        return self.model() if value is None else value

    def lookup(self, key: bytes) -> Any:
        """The entry of `key`, None when there is none."""
        value = self._values.get(key)
        if value is None:
            raw = self.table.get(key)
            value = None if raw is None else self._remember(key, self.model.from_bytes(raw))
        return value

    def put(self, key: bytes, value: Record) -> None:
        self._remember(key, value)
        self._unstored.add(key)

    def stored(self, keys: Iterable[bytes]) -> None:
        self._unstored.difference_update(keys)

    def clear(self) -> None:
        self._values = {key: self._values[key] for key in self._unstored}

    def _remember(self, key: bytes, value: Record) -> Record:
        if len(self._values) >= self.limit:
            self.clear()
        self._values[key] = value
        return value


def _source_headers(message: faust.types.Message) -> list[tuple[str, bytes]]:
    """Where an output came from, and when its source was produced (for end-to-end latency)."""
    return [("source-topic", message.topic.encode()), ("source-partition", str(message.partition).encode()),
            ("source-offset", str(message.offset).encode()),
            ("source-timestamp-ms", str(int((message.timestamp or 0) * 1000)).encode())]
