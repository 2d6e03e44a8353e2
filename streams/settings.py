"""Settings of the stream workers. Environment: GENSAR_STREAMS__<FIELD> (e.g.
GENSAR_STREAMS__HISTORY_LENGTH=100); unknown keys are an error. Kafka settings are the
shared ones (gensar.settings.KafkaSettings)."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from gensar.settings import StrictSettings
from streams.faults import parse_fault


class StreamSettings(StrictSettings):
    model_config = SettingsConfigDict(env_prefix="GENSAR_STREAMS__")

    # How much of a user's past each table entry and each training sample carries.
    history_length: int = Field(50, ge=1, le=1000)  # interacted items (the paper's sequences are <= 50)
    search_history_length: int = Field(20, ge=1, le=1000)  # earlier queries
    # Events (both kinds merged) a training sample carries for the model to render; at
    # least the model's RenderSettings.history_events (10), which is all it reads.
    sample_events: int = Field(20, ge=1, le=1000)
    # exactly_once: Kafka transactions (outputs, changelogs and offsets commit together);
    # at_least_once: faster, but a crash can repeat samples (dedup by the sample's event_id).
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    # How often offsets are committed (and, exactly-once, transactions closed). Samples
    # become visible to read_committed consumers at a commit, so this bounds latency.
    commit_interval_s: float = Field(0.5, gt=0, le=60)
    # A worker that dies without leaving the group (SIGKILL, a lost node) holds its
    # partitions this long before the group hands them on. At least the broker's default
    # group.min.session.timeout.ms (6 s): below it the broker refuses the join, and the
    # worker would wait forever instead of exiting.
    session_timeout_s: float = Field(10.0, ge=6, le=300)
    # "rocksdb://" (persistent, via rocksdict) or "memory://" (tests of logic only).
    store: str = "rocksdb://"
    worker_name: str = Field("worker-0", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # one table store per worker (Layout.stream_store)
    web_host: str = "127.0.0.1"  # where the table read API listens (GET /users/{id}/history, ...)
    web_port: int = Field(6066, ge=1, le=65535)
    # The address other workers use to forward requests for keys this worker owns (the
    # pod IP on Kubernetes); default: web_host, or this host's address when listening on
    # all interfaces.
    web_advertised_host: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9108, ge=0, le=65535)  # Prometheus exposition; 0 disables it
    # An interaction naming an item this worker's catalogue does not hold waits this long
    # for the catalogue to catch up with the items topic before it is dead-lettered.
    catalogue_wait_s: float = Field(10.0, ge=0, le=600)
    lag_interval_s: float = Field(2.0, gt=0, le=600)  # how often consumer lag is measured
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Tests only: kill:<site>:<n> or delay:<site>:<seconds> (streams.faults, which lists the sites).
    fault: str | None = None

    @field_validator("fault")
    @classmethod
    def _valid_fault(cls, value: str | None) -> str | None:
        if value is not None:
            parse_fault(value)  # its ValueError says what is wrong
        return value

    def advertised_url(self) -> str:
        host = self.web_advertised_host or self.web_host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostbyname(socket.gethostname())
        return f"http://{host}:{self.web_port}"
