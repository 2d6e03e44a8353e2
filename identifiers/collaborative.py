"""Collaborative item embeddings: item2vec (skip-gram with negative sampling over each
user's time-ordered items), with a full fit for the bootstrap and `partial_fit` for the
stream.

`partial_fit` takes (history before the event, new item) samples, the form the stream's
training samples already have, and runs SGNS steps on just those pairs: the new item's
vector and those of its context items move; nothing is retrained. Unseen items get a new
row. Items with fewer than `min_count` interactions are "cold": their collaborative
vector is borrowed from their semantic neighbours (`neighbour_mean`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.numpy import load as load_tensors, save as save_tensors

from gensar.events import InteractionEvent
from gensar.artifacts import read_artifact, write_artifact


class CollaborativeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(64, ge=2)
    window: int = Field(5, ge=1)  # context items on each side within a user's sequence
    negatives: int = Field(5, ge=1)
    epochs: int = Field(5, ge=1)
    lr: float = Field(0.025, gt=0)  # word2vec's default, decayed linearly to 1% over the full fit
    update_lr: float = Field(0.025, gt=0)  # the stream's constant step: new evidence weighs like bootstrap evidence
    batch_size: int = Field(4096, ge=1)
    min_count: int = Field(2, ge=1)  # fewer training interactions than this: a cold item
    seed: int = 0


def user_sequences(events: Iterable) -> dict[str, list[str]]:
    """Each user's interacted items in event order (the events are in time order)."""
    sequences: dict[str, list[str]] = defaultdict(list)
    for event in events:
        if isinstance(event, InteractionEvent):
            sequences[event.user_id].append(event.item_id)
    return dict(sequences)


class Item2Vec:
    def __init__(self, config: CollaborativeConfig, item_ids: Sequence[str], inputs: torch.Tensor,
                 outputs: torch.Tensor, counts: np.ndarray):
        self.config = config
        self.item_ids = list(item_ids)
        self.rows = {item: i for i, item in enumerate(self.item_ids)}
        self.inputs, self.outputs = inputs, outputs  # (V, dim) each: the item vectors and the context vectors
        self.counts = counts.astype(np.int64)  # (V,) training interactions per item
        self._generator = torch.Generator().manual_seed(config.seed)

    # --- fitting ----------------------------------------------------------------------

    @classmethod
    def fit(cls, sequences: Mapping[str, Sequence[str]], config: CollaborativeConfig = CollaborativeConfig(),
            items: Sequence[str] = ()) -> "Item2Vec":
        """The offline bootstrap. `items` (the catalogue) get rows even without interactions."""
        counts = Counter(item for seq in sequences.values() for item in seq)
        item_ids = list(dict.fromkeys([*items, *sorted(counts)]))
        model = cls(config, [], torch.empty(0, config.dim), torch.empty(0, config.dim), np.zeros(0))
        model._grow(item_ids)
        model.counts = np.array([counts[i] for i in item_ids], np.int64)
        centres, contexts = model._pairs([[model.rows[i] for i in seq] for seq in sequences.values()])
        steps = config.epochs * max(1, -(-len(centres) // config.batch_size))
        step = 0
        for _ in range(config.epochs):
            order = torch.randperm(len(centres), generator=model._generator)
            for start in range(0, len(order), config.batch_size):
                batch = order[start:start + config.batch_size]
                lr = config.lr * max(0.01, 1 - step / steps)
                model._sgns_step(centres[batch], contexts[batch], lr)
                step += 1
        return model

    def partial_fit(self, samples: Iterable[tuple[Sequence[str], str]], epochs: int = 1) -> list[str]:
        """SGNS steps on new interactions: each sample is (the user's items before, the
        new item). Returns the items whose vectors moved."""
        sequences = []
        for history, item in samples:
            recent = list(history)[-self.config.window:]
            self._grow([*recent, item])
            self.counts[self.rows[item]] += 1
            sequences.append([self.rows[i] for i in (*recent, item)])
        if not sequences:
            return []
        centres, contexts = self._pairs(sequences, anchor_last=True)
        for _ in range(epochs):
            order = torch.randperm(len(centres), generator=self._generator)
            for start in range(0, len(order), self.config.batch_size):
                batch = order[start:start + self.config.batch_size]
                self._sgns_step(centres[batch], contexts[batch], self.config.update_lr)
        return [self.item_ids[i] for i in torch.unique(centres).tolist()]

    def _grow(self, item_ids: Iterable[str]) -> None:
        new = [i for i in dict.fromkeys(item_ids) if i not in self.rows]
        if not new:
            return
        d = self.config.dim
        init = (torch.rand(len(new), d, generator=self._generator) - 0.5) / d  # word2vec's initialisation
        self.inputs = torch.cat([self.inputs, init])
        self.outputs = torch.cat([self.outputs, torch.zeros(len(new), d)])
        self.counts = np.concatenate([self.counts, np.zeros(len(new), np.int64)])
        for item in new:
            self.rows[item] = len(self.item_ids)
            self.item_ids.append(item)

    def _pairs(self, sequences: list[list[int]], anchor_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre, context) row pairs within `window`, both directions. With anchor_last
        only pairs that involve each sequence's last item (the new interaction)."""
        centres, contexts = [], []
        w = self.config.window
        for seq in sequences:
            s = np.asarray(seq, np.int64)
            if anchor_last:
                others = s[-w - 1:-1]
                last = np.full(len(others), s[-1])
                centres += [last, others]
                contexts += [others, last]
                continue
            for offset in range(1, min(w, len(s) - 1) + 1):
                centres += [s[:-offset], s[offset:]]
                contexts += [s[offset:], s[:-offset]]
        if not centres:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.from_numpy(np.concatenate(centres)), torch.from_numpy(np.concatenate(contexts))

    def _sgns_step(self, centre: torch.Tensor, context: torch.Tensor, lr: float) -> None:
        """One SGD step of log s(u.v) + sum_k log s(-u.n_k), gradients in closed form."""
        noise = torch.from_numpy(np.maximum(self.counts, 1) ** 0.75).float()  # unigram^0.75
        negative = torch.multinomial(noise, len(centre) * self.config.negatives, replacement=True,
                                     generator=self._generator).view(len(centre), -1)  # (B, K)
        u = self.inputs[centre]  # (B, d)
        v = self.outputs[context]  # (B, d)
        n = self.outputs[negative]  # (B, K, d)
        g_pos = torch.sigmoid((u * v).sum(-1)) - 1  # (B,)
        g_neg = torch.sigmoid(torch.einsum("bd,bkd->bk", u, n))  # (B, K)
        grad_u = g_pos[:, None] * v + torch.einsum("bk,bkd->bd", g_neg, n)
        self.outputs.index_add_(0, context, -lr * g_pos[:, None] * u)
        self.outputs.index_add_(0, negative.reshape(-1), -lr * (g_neg[..., None] * u[:, None]).reshape(-1, u.shape[1]))
        self.inputs.index_add_(0, centre, -lr * grad_u)

    # --- reading ----------------------------------------------------------------------

    def vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 collaborative embeddings: the item vectors scaled to unit length
        (SGNS norms mostly track frequency; directions carry the co-occurrence signal).
        Rows of unknown items are zero."""
        out = np.zeros((len(item_ids), self.config.dim), np.float32)
        known = [(j, self.rows[i]) for j, i in enumerate(item_ids) if i in self.rows]
        if known:
            js, rows = map(list, zip(*known))
            out[js] = unit_rows(self.inputs[rows].numpy())
        return out

    def warm(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n,) bool: items with at least min_count interactions."""
        return np.array([i in self.rows and self.counts[self.rows[i]] >= self.config.min_count for i in item_ids])

    # --- persistence ------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        files = {"item2vec.safetensors": save_tensors({"inputs": self.inputs.numpy(), "outputs": self.outputs.numpy(),
                                                       "counts": self.counts})}
        return write_artifact(Path(path), files, {"format": "gensar-item2vec", "config": self.config.model_dump(),
                                                  "item_ids": self.item_ids})

    @classmethod
    def load(cls, path: Path) -> "Item2Vec":
        manifest, files = read_artifact(Path(path))
        arrays = load_tensors(files["item2vec.safetensors"])
        return cls(CollaborativeConfig(**manifest["config"]), manifest["item_ids"], torch.from_numpy(arrays["inputs"]),
                   torch.from_numpy(arrays["outputs"]), arrays["counts"])


# --- cold start and evaluation ---------------------------------------------------------------


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def neighbour_mean(vectors: np.ndarray, similarities: np.ndarray) -> np.ndarray:
    """A cold item's collaborative embedding: the similarity-weighted mean of its semantic
    neighbours' collaborative embeddings, at unit length. vectors (..., k, d), similarities (..., k)."""
    weights = np.clip(similarities, 1e-6, None)
    return unit_rows((weights[..., None] * vectors).sum(-2))


def fill_cold(semantic: np.ndarray, collaborative: np.ndarray, warm: np.ndarray, k: int = 10) -> np.ndarray:
    """Replace the collaborative rows of cold items (warm False) by neighbour_mean over
    their k semantically nearest warm items. semantic (n, ds) unit rows, collaborative (n, dc)."""
    out = collaborative.copy()
    cold, warm_rows = np.flatnonzero(~warm), np.flatnonzero(warm)
    if len(cold) == 0 or len(warm_rows) == 0:
        return out
    k = min(k, len(warm_rows))
    for start in range(0, len(cold), 1024):
        rows = cold[start:start + 1024]
        sims = semantic[rows] @ semantic[warm_rows].T  # (b, n_warm)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (b, k)
        out[rows] = neighbour_mean(collaborative[warm_rows[top]], np.take_along_axis(sims, top, 1))
    return out


def expected_hit(scores: np.ndarray, target: int, k: int) -> float:
    """P(target in top k) under random tie-breaking (popularity-like scores tie a lot)."""
    s = scores[target]
    above, tied = int((scores > s).sum()), int((scores == s).sum())
    return float(min(max(k - above, 0), tied) / tied)


def next_item_hit_rate(model: Item2Vec, sequences: Mapping[str, Sequence[str]], targets: Sequence[tuple[str, str]],
                       k: int = 10, last_n: int = 1) -> dict[str, float]:
    """Full-catalogue next-item HR@k from the user's last `last_n` training items, seen
    items excluded, ties broken at random (expected value). Three scorers side by side:
    `neighbours` (cosine nearest neighbours of the item vectors: what the identifiers
    use), `sgns` (the model's own item.context score) and `popularity`."""
    inputs, outputs = model.inputs.numpy(), model.outputs.numpy()
    unit = unit_rows(inputs)
    scorers = {
        "neighbours": lambda rows: unit @ unit[rows].mean(0),
        "sgns": lambda rows: outputs @ inputs[rows].mean(0),
        "popularity": lambda rows: model.counts.astype(np.float64),
    }
    hits = {name: [] for name in scorers}
    for user, target in targets:
        history = [model.rows[i] for i in sequences.get(user, ()) if i in model.rows]
        if not history or target not in model.rows:
            continue
        seen = np.array(sorted(set(history)))
        for name, score in scorers.items():
            scores = score(history[-last_n:]).astype(np.float64)
            scores[seen] = -np.inf
            hits[name].append(expected_hit(scores, model.rows[target], k))
    n = len(hits["popularity"])
    return {"n": n, **{f"hr@{k}_{name}": float(np.mean(h)) if n else 0.0 for name, h in hits.items()},
            **{f"hr@{k}_{name}_minus_popularity_ci95": _paired_ci(hits[name], hits["popularity"])
               for name in ("neighbours", "sgns")}}


def _paired_ci(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(a - b) over the same cases."""
    diff = np.asarray(a) - np.asarray(b)
    if len(diff) == 0:
        return (0.0, 0.0)
    means = np.random.default_rng(seed).choice(diff, (resamples, len(diff))).mean(1)
    return (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))
