"""SASRec (Kang & McAuley, 2018): a causal self-attention next-item model, the standard
strong sequential recommendation baseline.

Trained on the training split's per-user sequences with a softmax cross-entropy at every
position (the true next item against 1024 uniform items per batch, or the whole catalogue
when it is that small): it trains far better than the original one-negative BCE, which
reached 0.58 paper HR@10 on MovieLens-small where this reaches ~0.75. Long histories are
cut into windows of `max_len`, so every training transition is used.

`tune_sasrec` picks the settings on the validation split within a time budget: every
config of a small grid trains for an equal share of a first part of the budget, the one
with the best validation paper-protocol HR@10 goes on for the rest; each run keeps its
best-on-validation state (early stopping)."""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import torch
from torch import nn

from gensar.data import UserEvent, event_order, target_item
from evaluation.baselines import FullScorer
from evaluation.metrics import expected_metrics, rank_counts
from evaluation.protocols import Case


@dataclass(frozen=True)
class SASRecConfig:
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 200
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 16  # small batches: more Adam steps per second, which is what a short budget lacks
    # sampled softmax over this many uniform items per batch; 0 (or the catalogue size or more):
    # the full softmax. On MovieLens-small in 100 s, 1024 beat both 256 and the full softmax
    # (9.7k items), whose epochs are ~4x slower
    negatives: int = 1024


class SASRecNet(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)  # row 0: padding; item row r is r + 1
        self.positions = nn.Embedding(cfg.max_len, cfg.dim)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.dim, cfg.dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.heads = cfg.heads
        # small embeddings: the output layer is tied to them, and near-zero first logits let the
        # softmax learn (unit-variance rows give logits of std ~8 that it barely recovers from)
        for emb in (self.items, self.positions):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) item ids (0 = padding, left-padded) -> (B, T, dim) states. T may be below
        max_len (left padding trimmed): positions count back from the end."""
        t = seq.shape[1]
        n_pos = self.positions.num_embeddings
        x = self.items(seq) + self.positions(torch.arange(n_pos - t, n_pos, device=seq.device))
        # causal, and no attending to padding; every query may still see itself, so no row of
        # the mask is all-blocked (that would give NaN states at padded positions)
        eye = torch.eye(t, dtype=torch.bool, device=seq.device)
        blocked = torch.triu(torch.ones(t, t, dtype=torch.bool, device=seq.device), 1) | ((seq == 0)[:, None, :] & ~eye)
        x = self.blocks(self.drop(x), mask=blocked.repeat_interleave(self.heads, 0))  # mask (B * heads, T, T)
        return self.norm(x)


def item_sequence(events: Sequence[UserEvent], item_index: dict[str, int]) -> list[int]:
    """The items (row + 1) of one user's events in order, a run of the same item once: a
    tagging act leaves an interaction and 1-6 tags on one item, and "the same item again"
    is no next item to learn (nor one the protocols ask for)."""
    rows = [item_index[target_item(e)] + 1 for e in events]
    return [r for i, r in enumerate(rows) if i == 0 or r != rows[i - 1]]


def user_sequences(train: Sequence[UserEvent], item_index: dict[str, int]) -> list[list[int]]:
    """Each user's training item sequence, oldest first; users with 2+ items."""
    by_user: dict[str, list[UserEvent]] = defaultdict(list)
    for e in sorted(train, key=event_order):
        by_user[e.user_id].append(e)
    return [s for s in (item_sequence(events, item_index) for events in by_user.values()) if len(s) >= 2]


def windows(sequences: list[list[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (inputs, targets), each (W, max_len), left-padded with 0: every sequence cut from
    its end into windows of max_len + 1 items that overlap by one, so each transition is a
    training target exactly once."""
    chunks = [s[max(0, end - max_len - 1):end] for s in sequences for end in range(len(s), 1, -max_len)]
    inputs = np.zeros((len(chunks), max_len), np.int64)
    targets = np.zeros((len(chunks), max_len), np.int64)
    for i, c in enumerate(chunks):
        inputs[i, max_len - len(c) + 1:] = c[:-1]
        targets[i, max_len - len(c) + 1:] = c[1:]
    return inputs, targets


def paper_metrics(scores: np.ndarray) -> dict[str, float]:
    """Mean HR@10 / NDCG@10 of (N, C) candidate scores whose column 0 is the true item."""
    m = expected_metrics(*rank_counts(scores, np.zeros(len(scores), np.int64)))
    return {"HR@10": float(m["HR@10"].mean()), "NDCG@10": float(m["NDCG@10"].mean())}


class SASRec(FullScorer):
    name, task = "sasrec", "rec"

    def __init__(self, train: Sequence[UserEvent], item_index: dict[str, int], *, config: SASRecConfig | None = None,
                 dim: int | None = None, max_len: int | None = None, lr: float | None = None,
                 dropout: float | None = None, batch_size: int | None = None, epochs: int = 1000,
                 max_seconds: float = 120.0, seed: int = 0,
                 valid: tuple[Sequence[Case], np.ndarray] | None = None, patience: int = 10):
        """Trains for at most `epochs` / `max_seconds`. `valid`: (cases, paper candidate
        rows, column 0 true) to evaluate after every epoch: the best state is kept, and
        training stops after `patience` epochs without a better HR@10."""
        given = {"dim": dim, "max_len": max_len, "lr": lr, "dropout": dropout, "batch_size": batch_size}
        self.config = replace(config or SASRecConfig(), **{k: v for k, v in given.items() if v is not None})
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.item_index, self.max_len = item_index, self.config.max_len
        self.net = SASRecNet(len(item_index), self.config)
        self.inputs, self.targets = windows(user_sequences(train, item_index), self.max_len)
        self.lengths = (self.targets > 0).sum(1)  # (W,)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.config.lr, betas=(0.9, 0.98))
        self.train_seconds, self.epochs_run, self.stopped_early = 0.0, 0, False
        self.best: dict | None = None  # {"HR@10", "NDCG@10", "epoch", "state"} on validation
        self.history: list[dict] = []  # validation metrics after each epoch
        self.fit(max_seconds, epochs, valid, patience)

    def fit(self, max_seconds: float, epochs: int = 1000, valid: tuple[Sequence[Case], np.ndarray] | None = None,
            patience: int = 10) -> None:
        """Trains on (more epochs of) the windows; can be called again to go on training."""
        started, stale = time.perf_counter(), 0
        self.stopped_early = False
        for _ in range(epochs):
            out_of_time = False
            self.net.train()
            for batch in self._batches():
                if time.perf_counter() - started > max_seconds:
                    out_of_time = True
                    break
                width = self.lengths[batch].max()  # trim the all-padding columns
                seq = torch.from_numpy(self.inputs[batch, -width:])
                target = torch.from_numpy(self.targets[batch, -width:])
                mask = target > 0
                h = self.net(seq)[mask]  # (P, d): the positions that have a next item
                loss = self._loss(h, target[mask])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
            else:
                self.epochs_run += 1
            if valid is not None:
                metrics = paper_metrics(self.score(*valid))
                seconds = round(self.train_seconds + time.perf_counter() - started, 1)
                self.history.append({"epoch": self.epochs_run, "seconds": seconds, **metrics})
                if self.best is None or metrics["HR@10"] > self.best["HR@10"]:
                    self.best = {**metrics, "epoch": self.epochs_run, "state": copy.deepcopy(self.net.state_dict())}
                    stale = 0
                else:
                    stale += 1
            if stale >= patience:
                self.stopped_early = True
            if out_of_time or self.stopped_early:
                break
        self.train_seconds += time.perf_counter() - started
        if self.best is not None:
            self.net.load_state_dict(self.best["state"])
        self.net.eval()

    def _loss(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """h (P, d) states, target (P,) item ids -> cross-entropy of the next item."""
        table = self.net.items.weight  # (n_items + 1, d)
        if not 0 < self.config.negatives < len(table) - 1:
            return nn.functional.cross_entropy(h @ table[1:].T, target - 1)  # (P, n_items): the whole catalogue
        # sampled softmax: the true item against K uniform items shared by the batch (uniform, so
        # no log-q correction); a sampled item that is the true one is masked out
        neg = torch.from_numpy(self.rng.integers(1, len(table), self.config.negatives))  # (K,)
        pos_logit = (h * table[target]).sum(-1, keepdim=True)  # (P, 1)
        neg_logit = (h @ table[neg].T).masked_fill(neg[None, :] == target[:, None], -torch.inf)  # (P, K)
        return nn.functional.cross_entropy(torch.cat([pos_logit, neg_logit], 1), torch.zeros(len(h), dtype=torch.long))

    def _batches(self) -> list[np.ndarray]:
        """One epoch's batches, shuffled; windows of similar length share a batch (shuffled
        within blocks of 16 batches, then sorted by length), so little padding is computed."""
        size = self.config.batch_size
        order = self.rng.permutation(len(self.inputs))
        block = 16 * size
        blocks = np.split(order, range(block, len(order), block))
        order = np.concatenate([b[np.argsort(self.lengths[b], kind="stable")] for b in blocks])
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        return [batches[i] for i in self.rng.permutation(len(batches))]

    @torch.no_grad()
    def score(self, cases: Sequence[Case], candidates: np.ndarray | None = None) -> np.ndarray:
        self.net.eval()
        seq = np.zeros((len(cases), self.max_len), np.int64)  # left-padded histories
        for i, case in enumerate(cases):
            s = item_sequence(case.history, self.item_index)[-self.max_len:]
            if s:
                seq[i, self.max_len - len(s):] = s
        lengths = (seq > 0).sum(1)
        full = np.zeros((len(cases), len(self.item_index)))
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding computed
        for start in range(0, len(cases), 256):
            rows = order[start:start + 256]
            width = max(1, lengths[rows].max())
            h = self.net(torch.from_numpy(seq[rows, -width:]))[:, -1]  # (B, d)
            full[rows] = (h @ self.net.items.weight[1:].T).numpy()  # (B, n_items)
        full[~seq.any(1)] = 0.0  # no history: nothing to attend to, every item ties
        return full if candidates is None else np.take_along_axis(full, candidates, axis=1)


GRID = (  # what tune_sasrec tries: the plain default, heavier regularisation (sparse data), wider and faster
    SASRecConfig(),
    SASRecConfig(dropout=0.5),
    SASRecConfig(dim=128, lr=2e-3),
)


def _summary(model: SASRec) -> dict:
    best = model.best or {}
    return {"settings": asdict(model.config), "valid": {k: best[k] for k in ("HR@10", "NDCG@10")} if best else None,
            "best_epoch": best.get("epoch"), "epochs": model.epochs_run, "train_seconds": round(model.train_seconds, 1)}


def tune_sasrec(train: Sequence[UserEvent], item_index: dict[str, int], valid_cases: Sequence[Case],
                valid_candidates: np.ndarray, max_seconds: float, seed: int = 0,
                grid: Sequence[SASRecConfig] = GRID, trial_fraction: float = 0.4,
                patience: int = 10) -> tuple[SASRec, dict]:
    """Picks a config of `grid` on validation within `max_seconds` in all (training and
    validation scoring): each config trains for an equal share of `trial_fraction` of the
    budget, and the one with the best validation paper HR@10 goes on training for the rest
    (unless it already stopped early). Only the training split trains; valid_cases (rec)
    and their paper candidate rows (column 0 true) only choose settings and epochs.
    -> (the chosen model in its best validation state, a report for the quality JSON)."""
    started = time.perf_counter()
    valid = (list(valid_cases), np.asarray(valid_candidates))
    trials = []
    for i, cfg in enumerate(grid):  # each its equal share of what the trial part has left
        share = (max_seconds * trial_fraction - (time.perf_counter() - started)) / (len(grid) - i)
        trials.append(SASRec(train, item_index, config=cfg, max_seconds=max(share, 0.0), seed=seed, valid=valid,
                             patience=patience))
    report = {"budget_seconds": max_seconds, "trials": [_summary(t) for t in trials]}
    chosen = int(np.argmax([t.best["HR@10"] if t.best else -1.0 for t in trials]))
    model = trials[chosen]
    left = max_seconds - (time.perf_counter() - started)
    if left > 0 and not model.stopped_early:
        model.fit(left, valid=valid, patience=patience)
    report.update(chosen=chosen, **_summary(model), seconds=round(time.perf_counter() - started, 1))
    return model, report
