"""Tripwire for streams/faust_fixes.py: every private name of faust-streaming (and of the
aiokafka driver) that module relies on still exists and still means what it did, and an
override still matches the signature of what it overrides. A failure here after an upgrade
is the signal to re-read streams/faust_fixes.py against the new release (and to run
tests/test_streams_integration.py: the kill -9 and rebalance tests are what found the
defects it works around). No broker: this runs in well under a second."""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from types import SimpleNamespace

import faust
import faust.tables.recovery
import faust.transport
import pytest
from faust.transport import base as transport_base
from faust.transport import consumer as consumer_module
from faust.transport.drivers import aiokafka as aiokafka_driver
from packaging.version import Version

from gensar.settings import KafkaSettings, Settings
from streams import faust_fixes
from streams.settings import StreamSettings

RECHECK = "re-check streams/faust_fixes.py against this release (see its docstring) before moving the range"


def source(obj) -> str:
    return inspect.getsource(obj)


def shape(function) -> list[tuple[str, object, object]]:
    """A signature without annotations (ours are strings, under `from __future__ import annotations`)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


# --- the versions the fixes were written for ----------------------------------------------------


def test_installed_faust_streaming_is_the_release_the_fixes_were_written_for():
    installed, (low, high) = Version(version("faust-streaming")), faust_fixes.WRITTEN_FOR
    assert Version(low) <= installed < Version(high), (
        f"faust-streaming {installed} is outside [{low}, {high}), the range streams/faust_fixes.py was written "
        f"for: {RECHECK}, then update faust_fixes.WRITTEN_FOR and pyproject.toml")


def test_installed_aiokafka_is_the_release_the_fixes_were_written_for():
    installed, (low, high) = Version(version("aiokafka")), faust_fixes.AIOKAFKA_WRITTEN_FOR
    assert Version(low) <= installed < Version(high), (
        f"aiokafka {installed} is outside [{low}, {high}): {RECHECK}, then update faust_fixes.AIOKAFKA_WRITTEN_FOR")


# --- where the fixes plug in: the app's transport ------------------------------------------------


def test_our_transport_replaces_exactly_the_one_faust_picks_for_our_broker_urls():
    assert faust.transport.by_url("kafka://127.0.0.1:9092") is aiokafka_driver.Transport, RECHECK
    assert issubclass(faust_fixes.Transport, aiokafka_driver.Transport)
    assert isinstance(faust.App.transport, property) and faust.App.transport.fset is not None, \
        "App.transport lost its setter (faust_fixes.install sets it): " + RECHECK
    assert shape(transport_base.Transport.__init__)[:3] == [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("url", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("app", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty)], RECHECK
    assert "self.Consumer(" in source(transport_base.Transport.create_consumer), \
        "the transport no longer builds its consumer from its Consumer class: " + RECHECK
    assert "self.transport.create_consumer(" in source(faust.App._new_consumer), RECHECK


# --- fix 2: every fetched record is delivered (Consumer._read_offset) ----------------------------


def test_the_read_offset_mapping_the_fetch_loop_consults_is_still_there():
    assert "_read_offset" in consumer_module.Consumer.__annotations__, RECHECK
    assert "self._read_offset = " in source(consumer_module.Consumer.__init__), RECHECK
    drain = source(consumer_module.Consumer._drain_messages)
    assert "self._read_offset.__getitem__" in drain, \
        "the fetch loop no longer reads Consumer._read_offset through __getitem__ (faust_fixes._NoReadOffsets): " + RECHECK
    assert "r_offset is None or offset >= r_offset" in drain, \
        "the fetch loop's drop rule changed (faust_fixes fix 2): " + RECHECK


def test_recovery_resumes_the_flow_its_seek_stopped_and_a_stopped_flow_delivers_nothing():
    for method in (faust.tables.recovery.Recovery.on_recovery_completed, faust.tables.recovery.Recovery._resume_streams):
        after_seek = source(method).split("consumer.perform_seek()", 1)[-1]
        assert "flow_control.resume()" in after_seek.split("consumer.resume_flow()", 1)[0] \
            and "consumer.resume_flow()" in after_seek, \
            f"{method.__qualname__} no longer empties the buffers and resumes flow after its seek (fix 2): " + RECHECK
    assert "self.flow_active = False" in source(consumer_module.Consumer.stop_flow), RECHECK
    assert "await self.wait(self.can_resume_flow)" in source(consumer_module.Consumer._wait_next_records), \
        "the fetch loop no longer waits for a stopped flow to resume: " + RECHECK
    assert "if not self.consumer.flow_active:\n            return {}" in source(
        aiokafka_driver.AIOKafkaConsumerThread._fetch_records), RECHECK
    getmany = source(consumer_module.Consumer.getmany)
    assert "if not self.flow_active:\n                    break" in getmany, RECHECK
    # What a fetch in flight when the flow stopped returns is dropped, and sought back to
    # the committed offsets: it may have been fetched after recovery's seek.
    assert "await self.perform_seek()" in getmany.split("else:", 1)[-1], RECHECK
    assert "callback(message), self.suspend_flow.wait()" in source(consumer_module.Consumer._drain_messages), RECHECK


def test_the_consumer_thread_factory_we_override_is_still_called_and_shaped_the_same():
    assert "self._new_consumer_thread()" in source(consumer_module.ThreadDelegateConsumer.__init__), RECHECK
    assert "AIOKafkaConsumerThread(self, loop=self.loop, beacon=self.beacon)" in source(
        aiokafka_driver.Consumer._new_consumer_thread), \
        "faust's consumer builds its thread differently now (faust_fixes.Consumer._new_consumer_thread copies it): " + RECHECK


# --- fix 1: the highwaters recovery reads to (AIOKafkaConsumerThread._highwaters) ----------------


def test_the_private_highwaters_we_override_is_what_the_public_one_runs():
    assert inspect.iscoroutinefunction(aiokafka_driver.AIOKafkaConsumerThread._highwaters), RECHECK
    assert "self._highwaters" in source(aiokafka_driver.AIOKafkaConsumerThread.highwaters), RECHECK
    assert "self.consumer = consumer" in source(consumer_module.ConsumerThread.__init__), \
        "the consumer thread no longer knows its consumer (our _highwaters reads consumer.transport): " + RECHECK
    assert "consumer.highwaters(" in source(faust.tables.recovery), \
        "table recovery no longer asks the consumer for highwaters: " + RECHECK


# --- fix 4: the transaction a send joins ----------------------------------------------------------


def test_faust_still_names_a_source_partitions_transaction_as_we_do():
    assert consumer_module.TransactionManager.transactional_id_format == faust_fixes.TRANSACTIONAL_ID_FORMAT, RECHECK
    app = SimpleNamespace(conf=SimpleNamespace(id="gensar-streams"),
                          assignor=SimpleNamespace(group_for_topic=lambda topic: {"a": 0, "b": 1}[topic]))
    for topic, partition in (("a", 0), ("a", 3), ("b", 2)):
        tpg = consumer_module.TopicPartitionGroup(topic, partition, app.assignor.group_for_topic(topic))
        assert faust_fixes.transactional_id(app, topic, partition) == \
            faust_fixes.TRANSACTIONAL_ID_FORMAT.format(group_id=app.conf.id, tpg=tpg)


# --- every override matches what it overrides ---------------------------------------------------


OVERRIDES = [
    (faust_fixes.Consumer, "perform_seek"),
    (faust_fixes.Consumer, "commit"),
    (faust_fixes.Consumer, "_new_consumer_thread"),
    (faust_fixes._ConsumerThread, "_highwaters"),
    # The fault sites (5.): checked against ours, which the lines above check against Faust's,
    # and against aiokafka's producer.
    (faust_fixes._FaultSitesConsumer, "perform_seek"),
    (faust_fixes._FaultSitesAIOKafkaProducer, "commit_transaction"),
]


@pytest.mark.parametrize("cls, name", OVERRIDES, ids=lambda x: getattr(x, "__name__", x))
def test_each_override_has_the_signature_of_the_method_it_replaces(cls, name):
    ours = cls.__dict__[name]
    theirs = getattr(cls.__mro__[1], name)
    assert shape(ours) == shape(theirs), f"{cls.__mro__[1].__qualname__}.{name} is now {inspect.signature(theirs)}: {RECHECK}"
    assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs)


def test_the_list_of_overrides_is_complete():
    """A new override in faust_fixes must be added to OVERRIDES (and so to the tripwire)."""
    defined = {(cls, name) for cls in (faust_fixes.Consumer, faust_fixes._ConsumerThread, faust_fixes._FaultSitesConsumer,
                                       faust_fixes._FaultSitesAIOKafkaProducer, faust_fixes._FaultSitesProducer)
               for name, value in cls.__dict__.items() if callable(value) and name != "__init__"}
    assert defined == set(OVERRIDES)


# --- the fixes are really in place in a stream app (no broker needed to build one) ---------------


def test_a_stream_app_gets_the_corrected_consumer(tmp_path):
    from streams.app import StreamApp

    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), state_dir=tmp_path)
    stream_app = StreamApp(settings, StreamSettings(store="memory://", metrics_port=0))
    app = stream_app.app
    assert type(app.transport) is faust_fixes.Transport
    assert app.transport.kafka_settings == settings.kafka

    async def check() -> None:
        app.in_worker = True  # as faust.Worker sets it: exactly-once is on from here
        assert app.in_transaction
        consumer = app.consumer
        assert type(consumer) is faust_fixes.Consumer
        assert isinstance(consumer._read_offset, faust_fixes._NoReadOffsets)
        assert consumer._read_offset[("any", 0)] is None
        assert type(consumer._thread) is faust_fixes._ConsumerThread
        calls = []

        async def handler(topics, start_new_transaction):
            calls.append((topics, start_new_transaction))
            return True

        stream_app.transactions.take_over_consumer_commits()  # exactly-once: Faust's commits come to us
        assert consumer.commit_handler == stream_app.transactions.commit_all
        faust_fixes.route_consumer_commits(consumer, handler)
        assert await consumer.commit() is True and await consumer.commit({"t"}, start_new_transaction=False)
        assert calls == [(None, True), ({"t"}, False)]

    asyncio.run(check())


def test_the_consumers_seek_stops_the_flow_before_it_seeks(tmp_path):
    from streams.app import StreamApp

    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), state_dir=tmp_path)
    consumer = StreamApp(settings, StreamSettings(store="memory://", metrics_port=0)).app.consumer
    seen = []

    async def seek_to_committed():
        seen.append((consumer.flow_active, consumer.can_resume_flow.is_set(), consumer.suspend_flow.is_set()))
        return {}

    async def check() -> None:
        consumer.resume_flow()  # as recovery leaves it while it reads the changelogs
        consumer.seek_to_committed = seek_to_committed
        await consumer.perform_seek()
        assert seen == [(False, False, True)] and not consumer.flow_active
        consumer.resume_flow()
        assert consumer.flow_active

    asyncio.run(check())


def test_commits_cannot_be_routed_on_a_consumer_install_did_not_make():
    with pytest.raises(TypeError):
        faust_fixes.route_consumer_commits(object(), lambda *_: None)


# --- 3b: at-least-once, a step before every commit -----------------------------------------------


def test_at_least_once_every_commit_first_sends_what_is_queued(tmp_path, monkeypatch):
    from streams.app import StreamApp

    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), state_dir=tmp_path)
    stream_app = StreamApp(settings, StreamSettings(store="memory://", metrics_port=0,
                                                    processing_guarantee="at_least_once"))
    order = []

    async def faust_commit(self, topics=None, start_new_transaction=True):
        order.append("commit")
        return True

    async def flush_all():
        order.append("flush")

    monkeypatch.setattr(aiokafka_driver.Consumer, "commit", faust_commit)  # what ours calls after the step
    monkeypatch.setattr(stream_app.transactions, "flush_all", flush_all)

    async def check() -> None:
        stream_app.app.in_worker = True
        assert not stream_app.app.in_transaction
        stream_app.transactions.take_over_consumer_commits()
        assert stream_app.app.consumer.commit_handler is None
        assert await stream_app.app.consumer.commit() is True

    asyncio.run(check())
    assert order == ["flush", "commit"]
    with pytest.raises(TypeError):
        faust_fixes.before_consumer_commits(object(), flush_all)


# --- 6: batched sends on the producer Faust keeps for a transaction -------------------------------


def test_the_transaction_producers_and_their_locks_are_where_faust_sends_through_them():
    send = source(aiokafka_driver.Producer.send)
    assert "self._transaction_producers.get(transactional_id)" in send, RECHECK
    assert "async with self._trn_locks[transactional_id]:" in send, RECHECK
    assert "transaction_producer = self._ensure_producer()" in send, RECHECK
    commit = source(aiokafka_driver.Producer.commit_transactions)
    assert "async with self._trn_locks[transactional_id]:" in commit, RECHECK
    import aiokafka

    for name in ("create_batch", "send_batch"):  # public aiokafka API, used on that producer
        assert callable(getattr(aiokafka.AIOKafkaProducer, name)), RECHECK
    assert "partition" in inspect.signature(aiokafka.AIOKafkaProducer.send_batch).parameters, RECHECK


# --- 7: table writes outside an event ---------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_a_batch_written_to_a_partition_of_a_rocksdb_store_reads_back_through_the_table(tmp_path, durable):
    from faust.stores import rocksdb as rocksdb_store

    from streams.app import StreamApp

    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), state_dir=tmp_path)
    stream_app = StreamApp(settings, StreamSettings(store="rocksdb://", metrics_port=0))
    table = stream_app.users
    assert isinstance(table.data, rocksdb_store.Store) and rocksdb_store.USE_ROCKSDICT, RECHECK
    assert "self._key_index[key] = partition" in source(rocksdb_store.Store._set), RECHECK
    faust_fixes.write_store(table, 2, [(b"u1", b"one"), (b"u2", b"two")], durable=durable)
    faust_fixes.write_store(table, 3, [(b"u3", b"three")], durable=durable)
    assert table.data._key_index[b"u1"] == 2 and table.data._key_index[b"u3"] == 3
    assert dict(table.data._dbs[2].items()) == {b"u1": b"one", b"u2": b"two"}
    assert table.get(b"u2") == b"two" and table.get(b"u3") == b"three"


def test_the_cache_never_forgets_a_write_that_has_not_reached_the_store(tmp_path):
    from streams.app import DecodedCache, StreamApp
    from streams.state import UserState

    settings = Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"), state_dir=tmp_path)
    stream_app = StreamApp(settings, StreamSettings(store="memory://", metrics_port=0))
    cache = DecodedCache(stream_app.users, UserState, limit=2)
    stream_app.users.data[b"old"] = UserState(searches=7).to_bytes()
    assert cache.lookup(b"old").searches == 7 and cache.lookup(b"none") is None and cache.get(b"none") == UserState()
    cache.put(b"a", UserState(interactions=1))
    cache.put(b"b", UserState(interactions=2))  # over the limit: only stored entries are forgotten
    cache.clear()
    assert cache.lookup(b"a").interactions == 1 and cache.lookup(b"b").interactions == 2  # the store has neither
    cache.stored([b"a"])
    cache.clear()
    assert cache.lookup(b"a") is None and cache.lookup(b"b").interactions == 2
