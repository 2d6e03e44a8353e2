"""Against the real broker: topic settings, broker lifecycle, and replay of the bundled
data (complete, checksummed, per-user order, surviving a broker restart)."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType

from gensar.data import load
from gensar.replay import event_id_checksum, replay, replay_order
from gensar.settings import KafkaSettings, Settings
from gensar.topics import ALL_TOPICS, INTERACTIONS, ITEMS, SEARCH_EVENTS
from infra.broker import KafkaBroker, ensure_topics
from infra.ports import free_port

pytestmark = pytest.mark.integration


def read_all(kafka: KafkaSettings, topics: list[str], expected: int, timeout: float = 60.0) -> list:
    """Every record on `topics`, from the beginning, once `expected` have arrived (or timeout)."""
    consumer = KafkaConsumer(*topics, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=2000,
                             max_poll_records=5000)
    records, deadline = [], time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer)
        records.extend(consumer)  # anything beyond `expected` (duplicates) shows up too
    finally:
        consumer.close()
    return records


def test_topics_are_created_with_their_declared_settings(kafka_broker, kafka):
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        described = {t["name"]: t for t in admin.describe_topics([s.full_name(kafka) for s in ALL_TOPICS])}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, s.full_name(kafka)) for s in ALL_TOPICS])
    finally:
        admin.close()
    actual = configs["topic"]
    for spec in ALL_TOPICS:
        name = spec.full_name(kafka)
        assert len(described[name]["partitions"]) == spec.partition_count(kafka)
        for key, value in spec.config.items():
            assert actual[name][key]["value"] == value, (name, key)
    assert actual[ITEMS.full_name(kafka)]["cleanup.policy"]["value"] == "compact"
    # Creating again changes nothing and reports nothing created.
    assert ensure_topics(kafka_broker.bootstrap, kafka) == []


def test_broker_start_is_idempotent_and_status_reports(kafka_broker):
    pid = kafka_broker.pid()
    status = kafka_broker.start()
    assert status.running and status.pid == pid
    assert kafka_broker.accepts_clients()


def test_replay_of_bundled_data_arrives_complete_and_in_per_user_order(kafka, bundled_data):
    events = replay_order(load(bundled_data))
    report = replay(events, kafka, progress=False)
    assert report.total == len(events) == 9742 + 100836 + 3683

    topics = [ITEMS.full_name(kafka), INTERACTIONS.full_name(kafka), SEARCH_EVENTS.full_name(kafka)]
    records = read_all(kafka, topics, expected=len(events))
    payloads = [json.loads(r.value) for r in records]
    assert len(payloads) == len(events)
    assert event_id_checksum(p["event_id"] for p in payloads) == report.checksum
    # Keys: users for user events, items for the catalogue.
    assert all(r.key.decode() == (p["item_id"] if p["type"] == "item" else p["user_id"]) for r, p in zip(records, payloads))

    # Per-user order: on each topic, one user's events sit on one partition in replay order.
    position = {e.event_id: i for i, e in enumerate(events)}
    by_user = defaultdict(list)
    for r, p in zip(records, payloads):
        if p["type"] != "item":
            by_user[(r.topic, p["user_id"])].append((r.partition, r.offset, position[p["event_id"]]))
    for seen in by_user.values():
        assert len({partition for partition, _, _ in seen}) == 1
        in_offset_order = [pos for _, _, pos in sorted(seen)]
        assert in_offset_order == sorted(in_offset_order)


def test_broker_restart_mid_replay_loses_nothing_acknowledged(bundled_data):
    """A hard kill (SIGKILL) of the broker while the replay runs, then a restart: the
    idempotent producer retries, and every event is on the topic exactly once."""
    home = Path(tempfile.mkdtemp(prefix="gensar-kafka-restart-"))
    broker = KafkaBroker(home, port=free_port(), controller_port=free_port(),
                         version=Settings().broker.kafka_version, cache_dir=Settings().cache_dir)
    try:
        broker.start()
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, topic_prefix="restart.")
        ensure_topics(broker.bootstrap, kafka)
        events = replay_order(load(bundled_data), limit=30_000)
        span = events[-1].timestamp - next(e.timestamp for e in events if e.type != "item")
        outcome: dict = {}

        def run():  # paced to last ~8 s, so the restart lands mid-replay
            try:
                outcome["report"] = replay(events, kafka, speed=span / 8, progress=False)
            except Exception as exc:  # surfaced by the assertion below
                outcome["error"] = exc

        paced = threading.Thread(target=run)
        start = time.monotonic()
        paced.start()
        time.sleep(2.0)
        assert paced.is_alive(), "replay finished before the broker restart: make it longer"
        broker.stop(hard=True)
        broker.start()
        paced.join(timeout=240)
        assert not paced.is_alive()
        assert "error" not in outcome, outcome.get("error")
        assert outcome["report"].total == len(events)

        topics = [ITEMS.full_name(kafka), INTERACTIONS.full_name(kafka), SEARCH_EVENTS.full_name(kafka)]
        ids = [json.loads(r.value)["event_id"] for r in read_all(kafka, topics, expected=len(events))]
        assert len(ids) == len(set(ids)), "an event was written twice"
        assert set(ids) == {e.event_id for e in events}
        assert time.monotonic() - start < 240
    finally:
        broker.stop(hard=True)
        shutil.rmtree(home, ignore_errors=True)
