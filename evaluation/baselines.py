"""Baselines, scored in the same harness as our model.

Every system answers `score(cases, candidates)`: a (N, C) score matrix over each case's
candidates (the paper protocol's 100 item rows), or over the whole catalogue when
candidates is None (N, n_items). Higher is better; equal scores are ties (the metrics take
the expectation over tie orders).

search: BM25 over item text (title, genres, training-split tags); dense retrieval with the
        MiniLM encoder through Qdrant; their reciprocal-rank fusion; the user's own earlier
        search targets first (re-tagging is common), BM25 for the rest.
rec:    popularity (training interactions); item-kNN (cosine over training users);
        SASRec (evaluation.sasrec).
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import bm25s
import numpy as np
import scipy.sparse as sp

from gensar.data import UserEvent, target_item
from gensar.events import InteractionEvent, SearchEvent
from evaluation.protocols import Case

RRF_K = 60  # the usual reciprocal-rank-fusion constant
DENSE_DEPTH = 200  # dense hits fetched per query over the full catalogue; the rest tie below


def gather(full: np.ndarray, candidates: np.ndarray | None) -> np.ndarray:
    return full if candidates is None else np.take_along_axis(full, candidates, axis=1)


class FullScorer:
    """A system that scores the whole catalogue; candidates are a column selection of that."""

    name = "system"
    task = "rec"

    def full_scores(self, case: Case) -> np.ndarray:
        raise NotImplementedError

    def score(self, cases: Sequence[Case], candidates: np.ndarray | None = None) -> np.ndarray:
        return gather(np.stack([self.full_scores(c) for c in cases]), candidates)


# --- search ------------------------------------------------------------------------------------


class BM25Search(FullScorer):
    name, task = "bm25", "search"

    def __init__(self, texts: Sequence[str]):
        """texts: item text by item row."""
        self.index = bm25s.BM25()
        self.index.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)
        self.vocab = self.index.vocab_dict

    def scores(self, query: str) -> np.ndarray:
        tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        known = [t for t in tokens if t in self.vocab]
        n = self.index.scores["num_docs"]
        return np.asarray(self.index.get_scores(known), np.float64) if known else np.zeros(n)

    def full_scores(self, case: Case) -> np.ndarray:
        return self.scores(case.query)


class DenseSearch:
    """MiniLM sentence vectors of item text in a Qdrant collection (embedded, in memory
    unless a client is given); a query is encoded the same way and searched by cosine."""

    name, task = "dense", "search"

    def __init__(self, texts: Sequence[str], encoder, client=None, collection: str = "gensar-eval-items"):
        from qdrant_client import QdrantClient, models

        self.encoder, self.models = encoder, models
        self.client = client or QdrantClient(location=":memory:")
        self.collection = collection
        vectors = encoder.encode(list(texts))  # (n_items, 384), unit length
        self.n_items = len(vectors)
        if self.client.collection_exists(collection):
            self.client.delete_collection(collection)
        self.client.create_collection(collection, vectors_config=models.VectorParams(
            size=vectors.shape[1], distance=models.Distance.COSINE))
        self.client.upload_collection(collection, vectors=vectors, ids=range(self.n_items), wait=True)
        self.vectors = vectors
        self._memo: dict[tuple, np.ndarray] = {}  # fusion asks again for the same cases

    def score(self, cases: Sequence[Case], candidates: np.ndarray | None = None) -> np.ndarray:
        key = (tuple(c.case_id for c in cases), None if candidates is None else candidates.tobytes())
        if key not in self._memo:
            self._memo[key] = self._search(cases, candidates)
        return self._memo[key]

    def _search(self, cases: Sequence[Case], candidates: np.ndarray | None) -> np.ndarray:
        """Full catalogue: Qdrant's top DENSE_DEPTH per query. Candidate lists: the cosine
        of the query with each candidate's stored vector (what Qdrant would return with an
        id filter, which its embedded mode evaluates point by point in Python: ~100x slower)."""
        m = self.models
        queries = self.encoder.encode([c.query for c in cases])  # (N, 384), unit length
        if candidates is not None:
            return np.einsum("nd,ncd->nc", queries, self.vectors[candidates]).astype(np.float64)
        out = np.full((len(cases), self.n_items), -np.inf)
        requests = [m.QueryRequest(query=q.tolist(), limit=min(DENSE_DEPTH, self.n_items)) for q in queries]
        for start in range(0, len(requests), 64):
            responses = self.client.query_batch_points(self.collection, requests[start:start + 64])
            for i, response in enumerate(responses, start=start):
                ids = np.array([p.id for p in response.points], np.int64)
                out[i, ids] = [p.score for p in response.points]
        return out


def reciprocal_ranks(scores: np.ndarray) -> np.ndarray:
    """(N, C) scores -> (N, C) 1 / (RRF_K + rank); -inf scores contribute nothing."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :].repeat(len(scores), 0), axis=1)
    return np.where(np.isfinite(scores), 1.0 / (RRF_K + ranks), 0.0)


class FusionSearch:
    name, task = "bm25+dense", "search"

    def __init__(self, bm25: BM25Search, dense: DenseSearch):
        self.bm25, self.dense = bm25, dense

    def score(self, cases: Sequence[Case], candidates: np.ndarray | None = None) -> np.ndarray:
        lexical = self.bm25.score(cases, candidates)
        lexical = np.where(lexical > 0, lexical, -np.inf)  # no shared word: no lexical rank
        return reciprocal_ranks(lexical) + reciprocal_ranks(self.dense.score(cases, candidates))


class OwnTargetsSearch(FullScorer):
    """The user's earlier search targets first (most searched first), then BM25."""

    name, task = "own-targets+bm25", "search"

    def __init__(self, bm25: BM25Search, item_index: dict[str, int]):
        self.bm25, self.item_index = bm25, item_index

    def full_scores(self, case: Case) -> np.ndarray:
        scores = self.bm25.scores(case.query)
        bonus = 1e6 + scores.max(initial=0.0)  # above any BM25 score
        for item, count in Counter(e.clicked_items[0] for e in case.history if isinstance(e, SearchEvent)).items():
            scores[self.item_index[item]] += bonus * count
        return scores


# --- recommendation ----------------------------------------------------------------------------


class Popularity(FullScorer):
    name, task = "popularity", "rec"

    def __init__(self, train: Sequence[UserEvent], item_index: dict[str, int]):
        self.counts = np.zeros(len(item_index))
        for e in train:
            if isinstance(e, InteractionEvent):
                self.counts[item_index[e.item_id]] += 1

    def full_scores(self, case: Case) -> np.ndarray:
        return self.counts.copy()


class ItemKNN(FullScorer):
    """Sum over the last `history` items of cosine similarity between item columns of the
    training user x item matrix."""

    name, task = "item-knn", "rec"

    def __init__(self, train: Sequence[UserEvent], item_index: dict[str, int], history: int = 50):
        users = {u: i for i, u in enumerate(sorted({e.user_id for e in train}))}
        pairs = {(users[e.user_id], item_index[e.item_id]) for e in train if isinstance(e, InteractionEvent)}
        r, c = np.array(list(pairs)).T if pairs else (np.zeros(0, int), np.zeros(0, int))
        matrix = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(users), len(item_index)))
        norms = np.sqrt(np.asarray(matrix.sum(0))).ravel()
        self.normalised = sp.csr_matrix(matrix.multiply(1.0 / np.maximum(norms, 1e-12)))  # (U, I)
        self.by_item = self.normalised.T.tocsr()  # (I, U)
        self.item_index, self.history = item_index, history

    def full_scores(self, case: Case) -> np.ndarray:
        rows = [self.item_index[target_item(e)] for e in case.history[-self.history:]]
        if not rows:
            return np.zeros(self.normalised.shape[1])
        return np.asarray((self.by_item[rows] @ self.normalised).sum(0)).ravel()
