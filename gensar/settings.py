"""Typed settings shared by every part. Environment variables use the GENSAR_ prefix and
`__` for nesting (e.g. GENSAR_KAFKA__BOOTSTRAP_SERVERS); an unknown GENSAR_* variable is an
error that names it and the nearest valid name (StrictSettings)."""

from __future__ import annotations

import difflib
import os
import typing
from pathlib import Path

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Every settings class's environment prefix, so the root class can tell a part's variable
# (GENSAR_SERVING__PORT) from a typo (GENSAR_SERVNG__PORT) without importing the parts.
ROOT_PREFIX = "GENSAR_"
PART_PREFIXES = ("GENSAR_STREAMS__", "GENSAR_SERVING__", "GENSAR_LEARNER__", "GENSAR_IDS__", "GENSAR_QDRANT__")


class SettingsError(ValueError):
    """An environment variable under a settings prefix that names no setting."""


def _env_names(model: type[BaseModel], prefix: str) -> list[str]:
    """Every environment variable `model` reads under `prefix`, nested models spelled with `__`."""
    names = []
    for field, info in model.model_fields.items():
        name = f"{prefix}{field}".upper()
        names.append(name)
        nested = [t for t in (info.annotation, *typing.get_args(info.annotation))
                  if isinstance(t, type) and issubclass(t, BaseModel)]
        if nested:
            names += _env_names(nested[0], name + "__")
    return names


class StrictSettings(BaseSettings):
    """Settings read from the environment that refuse what they do not know. pydantic-settings
    reads only the variables it has a field for and ignores the rest, so a typo would
    silently leave the default in place; here it fails at start, as a typo in code would."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs):
        super().__pydantic_init_subclass__(**kwargs)
        prefix = cls.model_config.get("env_prefix", "")
        if prefix and prefix != ROOT_PREFIX and prefix not in PART_PREFIXES:
            raise TypeError(f"{cls.__name__}: env prefix {prefix!r} is not in gensar.settings.PART_PREFIXES")

    def __init__(self, **values):
        # Checked before pydantic reads anything, and raised as itself (pydantic would wrap an
        # error from a validator in a ValidationError that shows the values, secrets included).
        self._refuse_unknown_variables()
        super().__init__(**values)

    @classmethod
    def _refuse_unknown_variables(cls) -> None:
        prefix = cls.model_config["env_prefix"]
        if not prefix:
            raise TypeError(f"{cls.__name__} has no env_prefix: a strict settings class owns a prefix")
        valid = set(_env_names(cls, prefix))
        others = PART_PREFIXES if prefix == ROOT_PREFIX else ()
        unknown = sorted(k for k in os.environ if k.upper().startswith(prefix) and k.upper() not in valid
                         and not k.upper().startswith(others))
        if unknown:
            def nearest(name: str) -> str:
                close = difflib.get_close_matches(name.upper(), sorted(valid), n=1, cutoff=0.6)
                return f" (did you mean {close[0]}?)" if close else ""
            raise SettingsError(f"unknown setting{'s' * (len(unknown) > 1)} in the environment: "
                                + ", ".join(f"{k}{nearest(k)}" for k in unknown))


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


class Settings(StrictSettings):
    model_config = SettingsConfigDict(env_prefix=ROOT_PREFIX)

    state_dir: Path = Field(default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state") / "gensar")
    # The artifact store every part reads (registry, base models, identifier maps, pin control):
    # a directory, in a cluster a shared (ReadWriteMany) volume; default: the state directory.
    # Every location below these roots is gensar.layout.Layout's.
    artifacts_dir: Path | None = None
    cache_dir: Path = Field(default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "gensar")
    data_dir: Path = BUNDLED_DATA
    kafka: KafkaSettings = KafkaSettings()
    broker: BrokerSettings = BrokerSettings()
