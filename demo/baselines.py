"""Streaming baselines for the prequential evaluation: simple online systems that see the
same events in the same order as the live system and answer the same cases.

    popularity-window  rec: interactions per item over the last `window` interactions
    item-knn           rec: cosine between items over the users who interacted with both
                       (evaluation.baselines.ItemKNN's similarity), kept up to date per event
    bm25               search: BM25 over item text with the tags seen so far
    own-targets+bm25   search: the user's own earlier search targets first, then that BM25
    own-history+bm25   search: the items of the user's own history first, the most recent
                       first, then that BM25 (MovieLens users tag what they have just rated)

Each is asked with the items of the history the models get (`Histories.items_of`: the
item of an interaction, the clicked item of a search) and gives a score per catalogue
item; `Baselines.answer` turns them into the same tie-aware HR@10 / NDCG@10
(evaluation.metrics) that the live and frozen answers get. They learn only after they
answered: `learn` is called with a chunk once it was predicted, as the live system learns
from it once it is produced.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Sequence

import numpy as np

from evaluation.baselines import BM25Search, OwnTargetsSearch
from evaluation.metrics import expected_metrics, rank_counts
from evaluation.protocols import Case
from gensar.data import Dataset, UserEvent, target_item
from gensar.events import InteractionEvent, SearchEvent
from identifiers.semantic import item_texts

# Popularity windows tried on the bootstrap's tail (interactions, not seconds: the demo's
# clock is accelerated and MovieLens users rate in bursts, so event time says little).
WINDOWS = (100, 300, 1000, 3000, 10000, 30000, 100000)


class SlidingPopularity:
    name, task = "popularity-window", "rec"

    def __init__(self, item_index: dict[str, int], window: int):
        self.item_index, self.window = item_index, window
        self.counts = np.zeros(len(item_index))
        self.recent: deque[int] = deque()

    def learn(self, event: UserEvent) -> None:
        if isinstance(event, InteractionEvent):
            row = self.item_index[event.item_id]
            self.recent.append(row)
            self.counts[row] += 1
            if len(self.recent) > self.window:  # the oldest interaction leaves the window
                self.counts[self.recent.popleft()] -= 1

    def scores(self, event: UserEvent, history: list[str]) -> np.ndarray:
        return self.counts.copy()


class OnlineItemKNN:
    """Co-occurrence counts over users, dense (n_items^2 float32: 36 MB at 3,000 items)."""

    name, task = "item-knn", "rec"

    def __init__(self, item_index: dict[str, int], history: int = 50):
        n = len(item_index)
        self.item_index, self.history = item_index, history
        self.both = np.zeros((n, n), np.float32)  # users who interacted with both items (diagonal: with the item)
        self.items_of: dict[str, set[int]] = defaultdict(set)

    def learn(self, event: UserEvent) -> None:
        if not isinstance(event, InteractionEvent):
            return
        row, seen = self.item_index[event.item_id], self.items_of[event.user_id]
        if row in seen:  # a repeat adds no user to the pair counts
            return
        seen.add(row)
        others = np.fromiter(seen, np.int64, len(seen))  # includes row: the diagonal counts the item's users
        self.both[row, others] += 1
        self.both[others[others != row], row] += 1

    def scores(self, event: UserEvent, history: list[str]) -> np.ndarray:
        rows = [self.item_index[i] for i in history[-self.history:]]
        if not rows:
            return np.zeros(len(self.both))
        norms = np.sqrt(np.maximum(np.diag(self.both), 1.0))
        return (self.both[rows] / norms[rows, None]).sum(0) / norms


class StreamingBM25:
    """BM25 over item text (identifiers.semantic.item_texts) with the tags of the search
    events learned so far; rebuilt before the next answer when new tags arrived (bm25s
    indexes are not incremental, and a rebuild takes well under a second)."""

    name, task = "bm25", "search"

    def __init__(self, ds: Dataset):
        self.ds, self.searches, self._index = ds, [], None

    def learn(self, event: UserEvent) -> None:
        if isinstance(event, SearchEvent):
            self.searches.append(event)
            self._index = None

    def index(self) -> BM25Search:
        if self._index is None:
            texts = item_texts(self.ds, self.searches)
            self._index = BM25Search([texts[i] for i in self.ds.items])
        return self._index

    def scores(self, event: UserEvent, history: list[str]) -> np.ndarray:
        return self.index().scores(event.query)


class OwnTargets:
    """evaluation.baselines.OwnTargetsSearch over the streaming BM25 and the user's own
    search events learned so far."""

    name, task = "own-targets+bm25", "search"

    def __init__(self, bm25: StreamingBM25, item_index: dict[str, int]):
        self.bm25, self.item_index = bm25, item_index
        self.searches_of: dict[str, list[SearchEvent]] = defaultdict(list)

    def learn(self, event: UserEvent) -> None:
        if isinstance(event, SearchEvent):
            self.searches_of[event.user_id].append(event)

    def scores(self, event: UserEvent, history: list[str]) -> np.ndarray:
        case = Case(event.event_id, "search", "stream", event.user_id, target_item(event), event.query,
                    tuple(self.searches_of.get(event.user_id, ())))
        return OwnTargetsSearch(self.bm25.index(), self.item_index).full_scores(case)


class OwnHistory:
    """The items of the user's own history (interactions, and the items of searches), the
    most recent first, then the streaming BM25:
    on MovieLens a tag is mostly applied to a movie the user has just rated (in the default
    demo 93% of the searched items are among the user's last 10 events)."""

    name, task = "own-history+bm25", "search"

    def __init__(self, bm25: StreamingBM25, item_index: dict[str, int]):
        self.bm25, self.item_index = bm25, item_index

    def learn(self, event: UserEvent) -> None:
        pass  # its history is the request's: nothing of its own to keep

    def scores(self, event: UserEvent, history: list[str]) -> np.ndarray:
        scores = self.bm25.scores(event, history)
        bonus = 1e6 + scores.max(initial=0.0)  # above any BM25 score
        recent_first = list(dict.fromkeys(reversed(history)))
        for rank, item in enumerate(recent_first):
            scores[self.item_index[item]] += bonus * (len(recent_first) - rank)
        return scores


class Baselines:
    def __init__(self, ds: Dataset, window: int):
        self.item_index = {item: row for row, item in enumerate(ds.items)}
        bm25 = StreamingBM25(ds)
        self.systems = [SlidingPopularity(self.item_index, window), OnlineItemKNN(self.item_index), bm25,
                        OwnTargets(bm25, self.item_index), OwnHistory(bm25, self.item_index)]

    def learn(self, events: Sequence[UserEvent]) -> None:
        for event in events:
            for system in self.systems:
                system.learn(event)

    def answer(self, asked: Sequence[tuple[UserEvent, list[str]]]) -> list[dict[str, list[float]]]:
        """Per asked event (with the user's history before it): baseline -> [HR@10, NDCG@10]."""
        out: list[dict[str, list[float]]] = [{} for _ in asked]
        for system in self.systems:
            mine = [i for i, (e, _) in enumerate(asked) if ("search" if e.type == "search" else "rec") == system.task]
            if not mine:
                continue
            scores = np.stack([system.scores(*asked[i]) for i in mine])
            targets = np.array([self.item_index[target_item(asked[i][0])] for i in mine])
            metrics = expected_metrics(*rank_counts(scores, targets))
            for j, i in enumerate(mine):
                out[i][system.name] = [float(metrics["HR@10"][j]), float(metrics["NDCG@10"][j])]
        return out


def choose_window(ds: Dataset, events: Sequence[UserEvent], tail_from: int,
                  windows: Sequence[int] = WINDOWS) -> tuple[int, dict[str, float]]:
    """The popularity window with the best HR@10 (then NDCG@10, then the shorter) on the
    interactions of events[tail_from:], each predicted before it is learned, every window
    fed from the first event. Tuned on the bootstrap's tail, never on the replayed stream."""
    item_index = {item: row for row, item in enumerate(ds.items)}
    systems = [SlidingPopularity(item_index, w) for w in windows]
    better, tied = [], []  # per tail interaction: (len(windows),) each
    for i, event in enumerate(events):
        if i >= tail_from and isinstance(event, InteractionEvent):
            counts = np.stack([s.counts for s in systems])
            b, t = rank_counts(counts, np.full(len(systems), item_index[event.item_id]))
            better.append(b)
            tied.append(t)
        for s in systems:
            s.learn(event)
    if not better:
        raise ValueError("no interaction in the tuning tail to choose a popularity window on")
    metrics = expected_metrics(np.concatenate(better), np.concatenate(tied))  # case-major: window varies fastest
    hr, ndcg = (metrics[m].reshape(-1, len(windows)).mean(0) for m in ("HR@10", "NDCG@10"))
    best = max(range(len(windows)), key=lambda j: (hr[j], ndcg[j], -windows[j]))
    return windows[best], {str(w): float(v) for w, v in zip(windows, hr)}
