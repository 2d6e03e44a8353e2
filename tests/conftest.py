"""Shared fixtures. Integration tests run against a real Kafka broker (KRaft) that this
session starts on free loopback ports and removes afterwards."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from gensar.settings import BUNDLED_DATA, KafkaSettings, Settings
from infra.broker import KafkaBroker, ensure_topics
from infra.ports import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads weights in tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def kafka_broker():
    """A real single-node Kafka broker for the whole test session."""
    home = Path(tempfile.mkdtemp(prefix="gensar-kafka-"))
    broker = KafkaBroker(home, port=free_port(), controller_port=free_port(),
                         version=Settings().broker.kafka_version, cache_dir=Settings().cache_dir)
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def kafka(kafka_broker) -> KafkaSettings:
    """Kafka settings with a fresh topic prefix: each test gets its own, created topics."""
    settings = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap,
                             topic_prefix=f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka_broker.bootstrap, settings)
    return settings


@pytest.fixture(scope="session")
def bundled_data() -> Path:
    return BUNDLED_DATA
