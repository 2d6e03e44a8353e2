"""Part 2 of the scale bench: the prefix constraint and decoding at a catalogue size, and
the dense peer side by side.

    constraint   identifiers.constraints.PrefixConstraint over the rec ids (group 0: the
                 whole catalogue), and serving's bundle shape (serving.bundle.genre_constraints:
                 both tasks, group 0 plus one group per genre): build time, tensor bytes
    generative   model.generate.beam_search, beam 30, with the default model shape
                 (model.modeling.ModelSettings(): what `gensar model train` and serving use)
                 and RANDOM weights: the cost of a step does not depend on the weights.
                 A request is a user's last 20 interactions rendered as model.tasks does
                 ([CLS], then <rec> + rec id per event, then <rec>).
    faiss-hnsw   faiss IndexHNSWFlat (M 32, efConstruction 40, efSearch 64), inner product
                 over the same items' semantic vectors (unit rows: cosine), top 30
    faiss-flat   exact top 30 (IndexFlatIP): the reference for the HNSW's recall
    qdrant       qdrant-client embedded (location=":memory:", as serving.dense builds it
                 without a server), cosine, top 30

Latency is the wall time of one call: a request alone (batch 1) or 16 requests together
(batch 16: every request of the batch waits for the whole batch). The dense peer's
figures do not include encoding the query (MiniLM, a few ms per query on this CPU);
ours include the prefill of the request's history, which is its query encoding.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import scale_faiss
from bench.scale_catalogue import GENRES, Catalogue, PeakRSS, percentiles, timed_calls
from identifiers.constraints import PrefixConstraint
from identifiers.idmap import IdentifierMap
from model.generate import beam_search
from model.modeling import ModelSettings, build_model
from model.vocab import IdLayout, Vocabulary

BEAM, K, HISTORY = 30, 30, 20


def constraint_bytes(c: PrefixConstraint) -> int:
    return int(sum(t.numel() * t.element_size() for t in [*c.keys, *c.offsets, c.leaf_row]))


def measure_constraints(idmap: IdentifierMap, cat: Catalogue) -> tuple[PrefixConstraint, dict]:
    with PeakRSS() as mem:
        started = time.perf_counter()
        rec = PrefixConstraint(idmap.rec_codes, idmap.codebook_size)
        seconds = time.perf_counter() - started
    out = {"catalogue": {"rows": len(idmap), "build_s": round(seconds, 3), "tensor_bytes": constraint_bytes(rec),
                         "peak_rss_mib": mem.mib,
                         "nodes_per_level": [len(k) for k in rec.keys]}}
    # Serving's bundle: both tasks, group 0 = all items, group g = the items of genre g.
    genre_rows, genre = cat.genre_rows()
    keep = genre_rows < len(idmap)
    rows = np.concatenate([np.arange(len(idmap)), genre_rows[keep]])
    groups = np.concatenate([np.zeros(len(idmap), np.int64), 1 + genre[keep]])
    with PeakRSS() as mem:
        started = time.perf_counter()
        both = [PrefixConstraint(codes[rows], idmap.codebook_size, groups=groups, rows=rows, n_groups=len(GENRES) + 1)
                for codes in (idmap.search_codes, idmap.rec_codes)]
        seconds = time.perf_counter() - started
    out["serving_bundle"] = {"rows_per_task": len(rows), "build_s": round(seconds, 3),
                             "tensor_bytes": sum(constraint_bytes(c) for c in both), "peak_rss_mib": mem.mib}
    del both
    return rec, out


def requests(idmap: IdentifierMap, cat: Catalogue, vocab: Vocabulary, count: int, seed: int = 0) -> list[list[int]]:
    """Token prefixes of `count` rec requests: each user's 20 past items from one topic."""
    rng = np.random.default_rng(seed)
    n = len(idmap)
    topic = cat.topic[:n]
    out = []
    for _ in range(count):
        members = np.flatnonzero(topic == topic[rng.integers(n)])
        tokens = [vocab.start_id]
        for row in rng.choice(members, HISTORY):
            tokens += [vocab.markers["rec"], *vocab.id_tokens("rec", idmap.rec_codes[row]).tolist()]
        out.append(tokens + [vocab.markers["rec"]])
    return out


class Generative:
    """Our decoder at one size: the model (default shape, random weights), its vocabulary,
    the constraint and the requests, kept so that sizes can be timed interleaved."""

    def __init__(self, idmap: IdentifierMap, cat: Catalogue, constraint: PrefixConstraint, count: int):
        self.vocab = Vocabulary.for_corpus(IdLayout.of(idmap), cat.titles[:2000])
        self.model = build_model(ModelSettings(), self.vocab).eval()
        self.constraint = constraint
        self.sources = requests(idmap, cat, self.vocab, count)
        self.id_levels = int(idmap.rec_codes.shape[1])

    def decode(self, chunk: list[list[int]]):
        return beam_search(self.model, self.vocab, "rec", chunk, self.constraint, beam_size=BEAM, batch_size=len(chunk))

    def info(self) -> dict:
        ranked = self.decode(self.sources[:4])
        return {"id_levels": self.id_levels, "prefix_tokens": int(np.mean([len(s) for s in self.sources])),
                "valid_beams": round(float((ranked.rows >= 0).mean()), 3)}  # every returned beam names an item


def time_generative(decoders: list[Generative], queries: int, batches: int, rounds: int = 5) -> list[dict]:
    """Latency of every size's decoder, the sizes interleaved round by round, so that load
    from other work on a shared machine falls on all sizes alike. -> one dict per decoder."""
    seconds = [{1: [], 16: []} for _ in decoders]
    for d in decoders:  # warm-up
        d.decode(d.sources[:1])
        d.decode(d.sources[:16])
    for r in range(rounds):
        for d, out in zip(decoders, seconds):
            for batch, calls in ((1, queries), (16, batches)):
                share = range(r * calls // rounds, (r + 1) * calls // rounds)
                for i in share:
                    chunk = d.sources[(i * batch) % len(d.sources):][:batch]
                    started = time.perf_counter()
                    d.decode(chunk)
                    out[batch].append(time.perf_counter() - started)
    return [{"batch1": percentiles(s[1]), "batch16": percentiles(s[16])} for s in seconds]


def dense_queries(cat: Catalogue, n: int, count: int, seed: int = 1) -> np.ndarray:
    """(count, 384) unit query vectors near random items (a query about an item's topic)."""
    rng = np.random.default_rng(seed)
    base = cat.semantic[rng.integers(n, size=count)]
    noisy = base + 0.6 * rng.standard_normal(base.shape, dtype=np.float32) / np.sqrt(base.shape[1])
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def measure_faiss(cat: Catalogue, n: int, queries: int, batches: int, threads: int) -> dict:
    """bench.scale_faiss.measure in a process of its own (why: there), on the first n items."""
    q = dense_queries(cat, n, max(queries, 16 * batches))
    with tempfile.TemporaryDirectory() as tmp:
        vectors = str(Path(tmp) / "semantic.npy")
        np.save(vectors, np.ascontiguousarray(cat.semantic[:n]))
        return scale_faiss.isolated(scale_faiss.measure, vectors, q, K, queries, batches, threads)


def measure_qdrant(cat: Catalogue, n: int, queries: int, batches: int) -> dict:
    from qdrant_client import QdrantClient, models

    q = dense_queries(cat, n, max(queries, 16 * batches))
    with PeakRSS() as mem:
        started = time.perf_counter()
        client = QdrantClient(location=":memory:")
        client.create_collection("scale", vectors_config=models.VectorParams(size=cat.semantic.shape[1],
                                                                              distance=models.Distance.COSINE))
        client.upload_collection("scale", vectors=cat.semantic[:n], ids=list(range(n)),
                                 payload=[{"item_id": i} for i in cat.item_ids[:n]])
        build_s = time.perf_counter() - started

    def one(b):
        return client.query_points("scale", query=b[0].tolist(), limit=K)

    def batch(b):
        return client.query_batch_points("scale", [models.QueryRequest(query=v.tolist(), limit=K) for v in b])

    out = {"build_s": round(build_s, 2), "peak_rss_mib": mem.mib,
           "batch1": timed_calls([q[i:i + 1] for i in range(queries)], one),
           "batch16": timed_calls([q[i * 16:(i + 1) * 16] for i in range(batches)], batch)}
    client.close()
    return out


def plus_level(idmap: IdentifierMap) -> IdentifierMap:
    """The same ids with a disambiguation level appended (0 for every item, as
    collisions.resolve gives the items that kept their id): the layout a larger catalogue
    gets, at this size, to tell the cost of one more level from the cost of more items."""
    zero = np.zeros((len(idmap), 1), np.int64)
    return IdentifierMap(f"{idmap.version}-plus-level", idmap.item_ids, np.hstack([idmap.search_codes, zero]),
                         np.hstack([idmap.rec_codes, zero]), idmap.n_shared, idmap.codebook_size)


def run(idmap: IdentifierMap, cat: Catalogue, queries: int, batches: int, threads: int, qdrant: bool,
        control: bool = False) -> tuple[list[Generative], dict]:
    """Everything of part 2 at one size but our latency, which bench.scale times over all
    sizes at the end (time_generative); returns our decoders for that: the size's own and,
    with `control`, the same ids plus one level (out["generative_plus_level"])."""
    torch.set_num_threads(threads)
    n = len(idmap)
    constraint, constraints = measure_constraints(idmap, cat)
    count = max(queries, 16 * batches)
    decoders = [Generative(idmap, cat, constraint, count)]
    out = {"constraint": constraints, "generative": decoders[0].info()}
    if control:
        padded = plus_level(idmap)
        decoders.append(Generative(padded, cat, PrefixConstraint(padded.rec_codes, padded.codebook_size), count))
        out["generative_plus_level"] = decoders[1].info()
    out.update(measure_faiss(cat, n, queries, batches, threads))
    out["qdrant"] = measure_qdrant(cat, n, queries, batches) if qdrant else None
    return decoders, out
