"""Settings of the serving replicas. Environment: GENSAR_SERVING__<FIELD> (e.g.
GENSAR_SERVING__ADMIN_TOKEN from a Secret); unknown keys are an error. What a replica reads
(registry, maps, base models) is the layout's (gensar.layout.Layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from gensar.settings import Settings, StrictSettings

# Hard limits of the request schema (published in the OpenAPI spec); settings may lower them.
K_LIMIT = 100
QUERY_LIMIT = 512  # characters
HISTORY_LIMIT = 200  # item ids in a request's explicit history


class ServingSettings(StrictSettings):
    model_config = SettingsConfigDict(env_prefix="GENSAR_SERVING__")

    # Admin operations (pin, reload) need `Authorization: Bearer <token>`; without a token
    # configured they are refused outright. A blank token counts as none: an optional Secret
    # key that is empty must switch admin off, not make "" (or spaces) the password.
    admin_token: SecretStr | None = None
    # The stream workers' table read API (streams.views); the chart's Service is
    # http://<release>-streams:6066. Unreachable: the request is answered as for a user
    # without history, and gensar_serve_user_state_errors_total counts it.
    streams_url: str = "http://127.0.0.1:6066"
    streams_timeout_s: float = Field(0.25, gt=0, le=10)  # a slow state read must not hold a request
    # Request limits (422 beyond them; 413 for a body over max_body_bytes, checked before any
    # handler reads it). The largest valid body, a full explicit history of 128-character ids
    # sent \u-escaped, is ~310 KB.
    max_body_bytes: int = Field(512 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_k: int = Field(K_LIMIT, ge=1, le=K_LIMIT)
    max_query_chars: int = Field(QUERY_LIMIT, ge=1, le=QUERY_LIMIT)
    max_history: int = Field(HISTORY_LIMIT, ge=0, le=HISTORY_LIMIT)
    # Decoding: beams per request (the paper's 30; at least k), dynamic batching.
    beam_size: int = Field(30, ge=1, le=256)
    max_batch_size: int = Field(16, ge=1, le=256)
    # Requests decoded together in one forward pass (the beams branch from each request's
    # prefix, nothing is copied per beam). On 2 cores, batches of 8 requests with the
    # history prior: 9.4 ms/query at 8, 10.0 at 4, 14.8 at 1 (rec); search 2.5 / 3.2 / 7.8.
    decode_chunk: int = Field(8, ge=1, le=256)
    batch_wait_s: float = Field(0.005, ge=0, le=1)  # how long a batch waits to fill
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    # Replicas and what each one reserves.
    replicas: int = Field(1, ge=1, le=64)
    replica_cpus: float = Field(1.0, gt=0)
    replica_gpus: float = Field(0.0, ge=0)
    # Back-pressure: a request that would wait behind this many others queued for a replica
    # (at the proxy) is answered 503 with Retry-After at once instead of waiting (Ray Serve's
    # max_queued_requests, backpressure_config); -1: no limit.
    max_queued_requests: int = Field(256, ge=-1)
    retry_after_s: float = Field(1.0, ge=0, le=600)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Versions come from the artifact store (gensar.layout.Layout: the registry, identifier
    # maps, base models); this names the base model to load there. None: the only one present.
    base_model: str | None = None
    poll_s: float = Field(2.0, gt=0, le=600)  # how often a replica re-reads the registry
    # Replica r waits r x this before loading a new version, so replicas do not all load at
    # once and the others keep full speed (a rolling swap; each answer is still one version).
    swap_stagger_s: float = Field(1.0, ge=0, le=60)
    # The catalogue (titles, genres, popularity): a dataset directory; default GENSAR_DATA_DIR.
    catalogue: Path | None = None
    # Dense look-up (Qdrant) fused with the generated results for search, so items too new
    # for the model are reachable.
    dense: bool = True
    dense_k: int = Field(20, ge=1, le=K_LIMIT)
    # The dense list's weight in the fusion against the model's (1), for a search with a
    # history the map knows, and for one without (no user, or only items too new) and for
    # items without an identifier: chosen on validation searches by bench/fusion_weights.py
    # (2026-12-02: with a history 0.25, NDCG@10 0.222 vs 0.162 at 1; without 1).
    dense_weight: float = Field(0.25, ge=0, le=100)
    dense_weight_without_history: float = Field(1.0, ge=0, le=100)
    # Follow the items topic (GENSAR_KAFKA__*): items published while serving join the
    # catalogue and the dense index at once.
    follow_items: bool = True

    @field_validator("admin_token")
    @classmethod
    def _blank_is_none(cls, token: SecretStr | None) -> SecretStr | None:
        return token if token is not None and token.get_secret_value().strip() else None

    def catalogue_dir(self) -> Path:
        return self.catalogue or Settings().data_dir

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
