"""Typed settings shared by every part. Environment variables use the GENSAR_ prefix and
`__` for nesting (e.g. GENSAR_KAFKA__BOOTSTRAP_SERVERS); unknown keys are an error."""

from __future__ import annotations

import os
from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
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
    # TLS / SASL for an external cluster; the password comes from a Secret, never a file in git.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None

    @model_validator(mode="after")
    def _sasl_is_complete(self) -> "KafkaSettings":
        if self.security_protocol.startswith("SASL") and not (self.sasl_mechanism and self.sasl_username
                                                              and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                             "sasl_username and sasl_password")
        return self

    def client_options(self) -> dict:
        """Connection options for a kafka-python client (producer, consumer, admin)."""
        options: dict = {"bootstrap_servers": self.bootstrap_servers, "security_protocol": self.security_protocol}
        if self.ssl_cafile:
            options["ssl_cafile"] = str(self.ssl_cafile)
        if self.security_protocol.startswith("SASL"):
            options |= {"sasl_mechanism": self.sasl_mechanism, "sasl_plain_username": self.sasl_username,
                        "sasl_plain_password": self.sasl_password.get_secret_value()}
        return options


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
