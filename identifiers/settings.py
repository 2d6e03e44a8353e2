"""Deployment settings of the identifiers part (paths, device, Qdrant). Method
hyper-parameters live in identifiers.build.BuildConfig and travel with the artifact.

Environment: GENSAR_IDS__<FIELD> and GENSAR_QDRANT__<FIELD>; unknown keys are an error."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from gensar.settings import StrictSettings


class QdrantSettings(StrictSettings):
    model_config = SettingsConfigDict(env_prefix="GENSAR_QDRANT__")

    url: str | None = None  # a Qdrant server, e.g. http://qdrant:6333; None: embedded, in the layout's state (Layout.qdrant)
    api_key: str | None = None
    collection: str = "gensar-items"
    timeout_s: float = Field(30.0, gt=0)


class IdentifierSettings(StrictSettings):
    model_config = SettingsConfigDict(env_prefix="GENSAR_IDS__")

    device: str = "cpu"  # torch device for the RQ-VAE and item2vec ("cuda" where there is a GPU)
    # CPU threads for torch during a build. One by default: on a shared 2-core machine a
    # contended second thread made an RQ-VAE step 20x slower (0.65 s vs 0.033 s, measured);
    # 0 leaves torch's own default.
    torch_threads: int = Field(1, ge=0)
    encode_batch_size: int = Field(64, ge=1)  # MiniLM texts per forward pass
    # Cosine distance between an item's collaborative vector now and when it was coded,
    # past which it is re-coded in a new map version. Streaming the last 30% of the
    # bundled ratings through partial_fit moved 99% of items < 0.06 and 12 of 5,004 > 0.1.
    drift_threshold: float = Field(0.1, gt=0, le=2)
