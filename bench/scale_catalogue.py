"""Synthetic catalogues for the scale bench (bench.scale), and a peak-memory meter.

The items are drawn from ONE fixed hierarchy whatever the size, so 10k and 1M items are
samples of the same world and a larger catalogue is the same topics, more densely filled:

    20 topics  x 20 sub-topics  x 16 micro-clusters   (6,400 leaves; Zipf-like sizes at
                                                      every level, as genres and niches are)
    semantic (384)        unit( 1.0 topic + 0.7 sub + 0.5 micro + 0.8 noise )
    collaborative (64)    unit( 0.9 topic' + 0.9 audience + 0.6 noise ), the audience
                          (one of 64) drawn near the topic: interaction clusters that
                          follow the text topics only in part

Within a micro-cluster cosine ~0.73, within a sub-topic ~0.6, within a topic ~0.4, across
topics ~0. These vectors STAND IN for the MiniLM text embeddings and the item2vec vectors:
running MiniLM over a million generated titles would take hours on 2 cores and measure
the encoder, not the identifiers. Titles and genres are generated from the topic too.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import psutil

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
TOPICS, SUBS, MICROS, AUDIENCES = 20, 20, 16, 64
SEMANTIC_DIM, COLLABORATIVE_DIM = 384, 64
SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vor", "sil", "dan", "mer", "ol", "zu", "phe", "qui", "bar", "nel", "tor",
             "ash", "em", "rin", "go")
CHUNK = 100_000  # rows generated at a time: float32 throughout, no (n, 384) float64 temporary


@dataclass
class Catalogue:
    item_ids: list[str]
    titles: list[str]
    genres: list[tuple[str, ...]]  # per item (its topic's genres: one shared tuple per topic)
    topic: np.ndarray  # (n,) top-level cluster
    leaf: np.ndarray  # (n,) micro-cluster, 0 .. TOPICS*SUBS*MICROS - 1
    semantic: np.ndarray  # (n, 384) float32 unit rows
    collaborative: np.ndarray  # (n, 64) float32 unit rows

    def __len__(self) -> int:
        return len(self.item_ids)

    def genre_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, genre index) of every (item, genre) pair: serving's per-genre groups."""
        rows, groups = [], []
        topic_genres = {}
        for t in range(TOPICS):
            members = np.flatnonzero(self.topic == t)
            if len(members):
                topic_genres[t] = self.genres[members[0]]
                for g in topic_genres[t]:
                    rows.append(members)
                    groups.append(np.full(len(members), GENRES.index(g)))
        return (np.concatenate(rows), np.concatenate(groups)) if rows else (np.zeros(0, np.int64),) * 2


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _zipf_choice(rng: np.random.Generator, parents: np.ndarray, fan_out: int, exponent: float = 0.8) -> np.ndarray:
    """A child 0..fan_out-1 for each parent, Zipf-like sizes, a different order per parent."""
    weights = 1.0 / np.arange(1, fan_out + 1) ** exponent
    weights /= weights.sum()
    child = rng.choice(fan_out, size=len(parents), p=weights)
    order = np.argsort(rng.random((int(parents.max()) + 1 if len(parents) else 1, fan_out)), axis=1)  # per-parent permutation
    return order[parents, child]


def synthetic_catalogue(n: int, seed: int = 0) -> Catalogue:
    """n items of the fixed hierarchy; the same seed and n give the same catalogue, and the
    hierarchy (the centres) is the same for every n."""
    world = np.random.default_rng(seed)  # centres, genres, words: independent of n
    topic_c = _unit(world.standard_normal((TOPICS, SEMANTIC_DIM), dtype=np.float32))
    sub_c = _unit(world.standard_normal((TOPICS * SUBS, SEMANTIC_DIM), dtype=np.float32))
    micro_c = _unit(world.standard_normal((TOPICS * SUBS * MICROS, SEMANTIC_DIM), dtype=np.float32))
    topic_cc = _unit(world.standard_normal((TOPICS, COLLABORATIVE_DIM), dtype=np.float32))
    audience_c = _unit(world.standard_normal((AUDIENCES, COLLABORATIVE_DIM), dtype=np.float32))
    topic_genres = [tuple(GENRES[g] for g in sorted(world.choice(len(GENRES), world.integers(1, 4), replace=False)))
                    for _ in range(TOPICS)]
    words = [["".join(world.choice(SYLLABLES, world.integers(2, 4))).capitalize() for _ in range(12)]
             for _ in range(TOPICS)]

    rng = np.random.default_rng([seed, n])
    topic = _zipf_choice(rng, np.zeros(n, np.int64), TOPICS)
    sub = topic * SUBS + _zipf_choice(rng, topic, SUBS)
    leaf = sub * MICROS + _zipf_choice(rng, sub, MICROS)
    audience = (topic * 3 + rng.integers(0, 8, n)) % AUDIENCES  # near the topic, not fixed by it
    semantic = np.empty((n, SEMANTIC_DIM), np.float32)
    collaborative = np.empty((n, COLLABORATIVE_DIM), np.float32)
    for start in range(0, n, CHUNK):
        part = slice(start, min(n, start + CHUNK))
        m = part.stop - part.start
        noise = rng.standard_normal((m, SEMANTIC_DIM), dtype=np.float32) / np.sqrt(SEMANTIC_DIM)
        semantic[part] = _unit(topic_c[topic[part]] + 0.7 * sub_c[sub[part]] + 0.5 * micro_c[leaf[part]] + 0.8 * noise)
        noise = rng.standard_normal((m, COLLABORATIVE_DIM), dtype=np.float32) / np.sqrt(COLLABORATIVE_DIM)
        collaborative[part] = _unit(0.9 * topic_cc[topic[part]] + 0.9 * audience_c[audience[part]] + 0.6 * noise)

    first, second = rng.integers(0, 12, n), rng.integers(0, 12, n)
    years = rng.integers(1950, 2026, n)
    titles = [f"{words[t][a]} {words[t][b]} ({y})" for t, a, b, y in zip(topic.tolist(), first.tolist(),
                                                                           second.tolist(), years.tolist())]
    return Catalogue([f"s{i}" for i in range(n)], titles, [topic_genres[t] for t in topic.tolist()], topic, leaf,
                     semantic, collaborative)


def rss_bytes() -> int:
    """Resident memory of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far."""
    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms by a thread.
    RSS, not tracemalloc: torch's allocations are invisible to tracemalloc. Memory freed
    before the block and reused inside it is not counted, so this is a lower bound."""

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def mib(self) -> float:
        return round((self.peak - self.start) / 2**20, 1)


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "calls": len(ms)}


def timed_calls(calls: list, fn, warmup: int = 3) -> dict:
    """Latency of fn(call) for each call (the first `warmup` also run untimed first)."""
    for call in calls[:warmup]:
        fn(call)
    seconds = []
    for call in calls:
        started = time.perf_counter()
        fn(call)
        seconds.append(time.perf_counter() - started)
    return percentiles(seconds)
