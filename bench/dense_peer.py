"""The competing way in the serving scale bench (bench.scale_serving): dense top-k by a faiss
HNSW index, served by the same Ray Serve proxy with the same dynamic batching as
serving.app, so the two differ in what a request computes, not in how it reaches a replica.

    POST {vector: [384 floats], k}  -> {items: [{id, score}]}   (the vector comes with the
                                       request: no query encoder runs here)
    GET  (any path)                 -> {replica, pid}            (the bench finds replicas' CPU)
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
from ray import serve
from starlette.requests import Request


@serve.deployment
class DensePeer:
    def __init__(self, index_path: str, max_batch_size: int, batch_wait_s: float):
        import faiss

        faiss.omp_set_num_threads(1)  # one thread per replica, as the torch replicas have
        self.index = faiss.read_index(index_path)  # item ids and efSearch are in the file
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._search.set_max_batch_size(max_batch_size)
        self._search.set_batch_wait_timeout_s(batch_wait_s)

    async def __call__(self, request: Request) -> dict:
        if request.method == "GET":
            return {"replica": self.replica, "pid": os.getpid()}
        body = await request.json()
        return await self._search((np.asarray(body["vector"], np.float32), int(body["k"])))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)  # reset in __init__
    async def _search(self, queries: list[tuple[np.ndarray, int]]) -> list[dict]:
        vectors = np.stack([v for v, _ in queries])  # (B, 384)
        k = max(k for _, k in queries)
        scores, ids = await asyncio.to_thread(self.index.search, vectors, k)  # (B, k) each
        return [{"items": [{"id": str(i), "score": float(s)} for i, s in zip(row[:kq], score[:kq]) if i >= 0]}
                for (_, kq), row, score in zip(queries, ids.tolist(), scores.tolist())]
