"""Typed settings shared by every part. Environment variables use the GENSAR_ prefix and
`__` for nesting (e.g. GENSAR_KAFKA__BOOTSTRAP_SERVERS); unknown keys are an error."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


BUNDLED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens-small"


class KafkaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    # Prefix for every topic name, so several deployments can share one cluster.
    topic_prefix: str = "gensar."
    # Partitions of the user-keyed topics. Faust tables are co-partitioned with their
    # source topics, so all user-keyed topics must agree.
    partitions: int = Field(4, ge=1, le=256)
    replication_factor: int = Field(1, ge=1)


class BrokerSettings(BaseModel):
    """The local single-node KRaft broker that `gensar infra up` runs."""

    model_config = ConfigDict(extra="forbid")

    kafka_version: str = "4.1.1"
    port: int = Field(9092, ge=1, le=65535)
    controller_port: int = Field(9093, ge=1, le=65535)
    heap: str = "512m"  # ample for one node on a 2-core machine


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GENSAR_", env_nested_delimiter="__", extra="forbid"
    )

    state_dir: Path = Field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state") / "gensar")
    cache_dir: Path = Field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "gensar")
    data_dir: Path = BUNDLED_DATA
    kafka: KafkaSettings = KafkaSettings()
    broker: BrokerSettings = BrokerSettings()
