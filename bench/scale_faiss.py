"""The dense ANN peer of the scale benches (bench.scale, bench.scale_serving): faiss HNSW
and exact top-k over the items' semantic vectors, run in a process of its own.

Why a process of its own: faiss-cpu and torch each ship their own OpenMP runtime, and two
runtimes in one process are a known crash (faiss issue 4273, pytorch issue 149201); the
test run that first loaded both died with a segmentation fault at interpreter exit after
every test had passed. This module imports neither torch nor anything that does, and
`isolated` runs a function of it in a fresh (spawned) interpreter.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.scale_catalogue import PeakRSS, timed_calls

HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 64


def isolated(fn, *args):
    """fn(*args) in a spawned interpreter (fn must live in a module that does not import torch)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def hnsw_index(dim: int):
    """An empty IndexHNSWFlat by inner product (cosine over unit rows), the bench's parameters."""
    import faiss

    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION  # used while adding
    index.hnsw.efSearch = HNSW_EF_SEARCH  # used while searching
    return index


def measure(vectors: str, q: np.ndarray, k: int, queries: int, batches: int, threads: int) -> dict:
    """HNSW and exact top-k over the (n, d) rows saved at `vectors` (.npy): build time, index
    bytes, peak memory, recall@k of the HNSW against exact, latency at batch 1 and 16."""
    import faiss

    faiss.omp_set_num_threads(threads)
    x = np.load(vectors)
    with PeakRSS() as mem:
        started = time.perf_counter()
        hnsw = hnsw_index(x.shape[1])
        hnsw.add(x)
        build_s = time.perf_counter() - started
    graph = hnsw.hnsw
    index_bytes = x.nbytes + graph.neighbors.size() * 4 + graph.offsets.size() * 8 + graph.levels.size() * 4
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    _, exact = flat.search(q[:64], k)
    _, approx = hnsw.search(q[:64], k)
    recall = np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)])

    def latencies(search) -> dict:
        return {"batch1": timed_calls([q[i:i + 1] for i in range(queries)], search),
                "batch16": timed_calls([q[i * 16:(i + 1) * 16] for i in range(batches)], search)}

    return {
        "faiss-hnsw": {"build_s": round(build_s, 2), "index_bytes": int(index_bytes), "peak_rss_mib": mem.mib,
                       "recall_at_30": round(float(recall), 3), **latencies(lambda b: hnsw.search(b, k))},
        "faiss-flat": {"build_s": 0.0, "index_bytes": int(x.nbytes), "recall_at_30": 1.0,
                       **latencies(lambda b: flat.search(b, k))},
    }


def write_hnsw_with_ids(vectors: str, ids: np.ndarray, path: str) -> float:
    """The same HNSW over the rows at `vectors`, keyed by `ids`, written to `path`; -> build seconds."""
    import faiss

    faiss.omp_set_num_threads(1)
    x = np.load(vectors)
    started = time.perf_counter()
    hnsw = hnsw_index(x.shape[1])
    index = faiss.IndexIDMap(hnsw)
    index.add_with_ids(x, ids)
    seconds = time.perf_counter() - started
    faiss.write_index(index, str(Path(path)))
    return seconds
