"""Item vectors in Qdrant: one collection, two named vectors (`semantic`, `collaborative`,
cosine), payload {item_id, title, warm, ids: {<map version>: {search, rec}}}.

Embedded local mode (a persistent folder) by default; `QdrantSettings.url` switches to a
server. Point ids are uuid5 of the item id, so writing an item twice is an overwrite, not
a duplicate (idempotent upserts); the ids of earlier map versions survive a vector update.
Used for nearest-neighbour look-ups and for the cold-start fallback: an item without
interactions borrows the collaborative vector of its semantic neighbours.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from identifiers.collaborative import neighbour_mean, unit_rows
from identifiers.idmap import IdentifierMap
from identifiers.settings import QdrantSettings

NAMESPACE = uuid.UUID("5f1d1c7e-6b0a-4cde-9a55-3a7c1f0e2b41")  # fixed: point ids must be stable across runs
VECTORS = ("semantic", "collaborative")
BATCH = 256


def point_id(item_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, item_id))


class ItemVectorStore:
    def __init__(self, path: Path, settings: QdrantSettings | None = None):
        """`path`: embedded mode's folder (Layout.qdrant), unused with a server (`settings.url`)."""
        self.settings = settings or QdrantSettings()
        s = self.settings
        if s.url:
            self.client = QdrantClient(url=s.url, api_key=s.api_key, timeout=int(s.timeout_s))
            self.location = s.url
        else:
            path = Path(path)
            path.mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(path))  # embedded: one process holds the folder at a time
            self.location = str(path)
        self.collection = s.collection

    def __enter__(self) -> "ItemVectorStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def ensure_collection(self, semantic_dim: int, collaborative_dim: int) -> None:
        """Create the collection if missing; refuse one whose vector sizes differ."""
        wanted = {"semantic": semantic_dim, "collaborative": collaborative_dim}
        if self.client.collection_exists(self.collection):
            vectors = self.client.get_collection(self.collection).config.params.vectors
            found = {name: vectors[name].size for name in vectors} if isinstance(vectors, dict) else {}
            if found != wanted:
                raise ValueError(f"Qdrant collection {self.collection!r} at {self.location} has vectors {found}, "
                                 f"expected {wanted}; use another collection name (GENSAR_QDRANT__COLLECTION)")
            return
        self.client.create_collection(self.collection, vectors_config={
            name: models.VectorParams(size=size, distance=models.Distance.COSINE) for name, size in wanted.items()})

    # --- writing ----------------------------------------------------------------------

    def upsert_items(self, item_ids: Sequence[str], titles: Sequence[str], semantic: np.ndarray,
                     collaborative: np.ndarray, warm: np.ndarray | None = None, idmap: IdentifierMap | None = None) -> int:
        """Write items' vectors, titles, warm flags (and their ids in `idmap`), keeping the
        ids of other map versions already on the points. Points whose content would not
        change are not rewritten (embedded mode commits every point to disk on its own).
        Returns the number of points written."""
        self.ensure_collection(semantic.shape[1], collaborative.shape[1])
        warm = np.ones(len(item_ids), bool) if warm is None else np.asarray(warm, bool)
        semantic, collaborative = unit_rows(semantic), unit_rows(collaborative)  # what cosine storage keeps
        written = 0
        for start in range(0, len(item_ids), BATCH):
            chunk = slice(start, start + BATCH)
            stored = {str(p.id): p for p in self.client.retrieve(self.collection, [point_id(i) for i in item_ids[chunk]],
                                                                 with_payload=True, with_vectors=True)}
            points = []
            for item, title, s, c, w in zip(item_ids[chunk], titles[chunk], semantic[chunk], collaborative[chunk], warm[chunk]):
                old = stored.get(point_id(item))
                ids = dict((old.payload or {}).get("ids", {})) if old else {}
                if idmap is not None and item in idmap:
                    ids[idmap.version] = _ids(idmap, item)
                payload = {"item_id": item, "title": title, "warm": bool(w), "ids": ids}
                if old and old.payload == payload and all(
                        np.allclose(old.vector[name], v, atol=1e-5) for name, v in (("semantic", s), ("collaborative", c))):
                    continue
                points.append(models.PointStruct(id=point_id(item), payload=payload,
                                                 vector={"semantic": s.tolist(), "collaborative": c.tolist()}))
            if points:
                self.client.upsert(self.collection, points=points, wait=True)
                written += len(points)
        return written

    def record_map(self, idmap: IdentifierMap) -> int:
        """Store each item's ids of `idmap` under payload ids.<version>, for the items in
        the collection that do not have them yet. Returns how many points were updated."""
        operations = []
        for start in range(0, len(idmap), BATCH):
            items = idmap.item_ids[start:start + BATCH]
            for p in self.client.retrieve(self.collection, [point_id(i) for i in items], with_payload=["item_id", "ids"]):
                item = p.payload["item_id"]
                if p.payload.get("ids", {}).get(idmap.version) != _ids(idmap, item):
                    operations.append(models.SetPayloadOperation(set_payload=models.SetPayload(
                        payload={idmap.version: _ids(idmap, item)}, points=[p.id], key="ids")))
        for start in range(0, len(operations), BATCH):
            self.client.batch_update_points(self.collection, operations[start:start + BATCH], wait=True)
        return len(operations)

    # --- reading ----------------------------------------------------------------------

    def count(self) -> int:
        if not self.client.collection_exists(self.collection):
            return 0
        return self.client.count(self.collection, exact=True).count

    def get(self, item_id: str, with_vectors: bool = False) -> dict | None:
        points = self.client.retrieve(self.collection, [point_id(item_id)], with_payload=True, with_vectors=with_vectors)
        if not points:
            return None
        out = dict(points[0].payload)
        if with_vectors:
            out["vectors"] = {name: np.asarray(v, np.float32) for name, v in points[0].vector.items()}
        return out

    def nearest(self, vector: np.ndarray, using: str = "semantic", k: int = 10, warm_only: bool = False,
                exclude: Sequence[str] = ()) -> list[tuple[str, float]]:
        """The k items nearest to `vector` in the `using` space: [(item_id, cosine)]."""
        if using not in VECTORS:
            raise ValueError(f"unknown vector {using!r}; one of {VECTORS}")
        must = [models.FieldCondition(key="warm", match=models.MatchValue(value=True))] if warm_only else []
        must_not = [models.HasIdCondition(has_id=[point_id(i) for i in exclude])] if exclude else []
        hits = self.client.query_points(self.collection, query=np.asarray(vector, np.float32).tolist(), using=using,
                                        limit=k, with_payload=["item_id"],
                                        query_filter=models.Filter(must=must, must_not=must_not) if must or must_not else None)
        return [(p.payload["item_id"], float(p.score)) for p in hits.points]

    def cold_start_collaborative(self, semantic: np.ndarray, k: int = 10, exclude: Sequence[str] = ()) -> np.ndarray:
        """A collaborative vector for an item with no interactions: the similarity-weighted
        mean over its k semantically nearest warm items (the bootstrap's rule, see
        collaborative.fill_cold)."""
        must_not = [models.HasIdCondition(has_id=[point_id(i) for i in exclude])] if exclude else []
        hits = self.client.query_points(
            self.collection, query=np.asarray(semantic, np.float32).tolist(), using="semantic", limit=k,
            with_payload=False, with_vectors=["collaborative"],
            query_filter=models.Filter(must=[models.FieldCondition(key="warm", match=models.MatchValue(value=True))],
                                       must_not=must_not)).points
        if not hits:
            raise LookupError(f"no warm items in Qdrant collection {self.collection!r}")
        vectors = np.array([p.vector["collaborative"] for p in hits], np.float32)  # (k, d)
        return neighbour_mean(vectors, np.array([p.score for p in hits], np.float32))


def _ids(idmap: IdentifierMap, item: str) -> dict[str, list[int]]:
    return {"search": list(idmap.search_id(item)), "rec": list(idmap.rec_id(item))}
