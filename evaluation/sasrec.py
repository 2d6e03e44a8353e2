"""SASRec (Kang & McAuley, 2018): a causal self-attention next-item model, the standard
strong sequential recommendation baseline. Trained on the training split's sequences
with the original objective (binary cross-entropy, one sampled negative per position)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from torch import nn

from gensar.data import UserEvent, event_order, target_item
from evaluation.baselines import FullScorer
from evaluation.protocols import Case


class SASRecNet(nn.Module):
    def __init__(self, n_items: int, dim: int = 64, blocks: int = 2, heads: int = 1, max_len: int = 50, dropout: float = 0.2):
        super().__init__()
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)  # row 0: padding; item row r is r + 1
        self.positions = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.max_len = max_len

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) item ids (0 = padding, left-padded) -> (B, T, dim) states."""
        t = seq.shape[1]
        x = self.items(seq) * self.items.embedding_dim ** 0.5 + self.positions(torch.arange(t, device=seq.device))
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=seq.device), 1)
        x = self.blocks(self.drop(x), mask=causal, src_key_padding_mask=seq == 0)
        return self.norm(x)


class SASRec(FullScorer):
    name, task = "sasrec", "rec"

    def __init__(self, train: Sequence[UserEvent], item_index: dict[str, int], *, dim: int = 64, max_len: int = 50,
                 epochs: int = 200, max_seconds: float = 120.0, batch_size: int = 128, lr: float = 1e-3, seed: int = 0):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.item_index, self.max_len = item_index, max_len
        n_items = len(item_index)
        self.net = SASRecNet(n_items, dim, max_len=max_len)
        by_user: dict[str, list[int]] = defaultdict(list)
        for e in sorted(train, key=event_order):
            by_user[e.user_id].append(item_index[target_item(e)] + 1)
        sequences = [s[-(max_len + 1):] for s in by_user.values() if len(s) >= 2]
        inputs = np.zeros((len(sequences), max_len), np.int64)
        targets = np.zeros((len(sequences), max_len), np.int64)
        for i, s in enumerate(sequences):  # left padding: the latest item sits at the end
            inputs[i, max_len - len(s) + 1:] = s[:-1]
            targets[i, max_len - len(s) + 1:] = s[1:]
        optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.9, 0.98))
        started = time.perf_counter()
        self.epochs_run = 0
        self.net.train()
        for _ in range(epochs):
            if time.perf_counter() - started > max_seconds:
                break
            for batch in np.array_split(rng.permutation(len(sequences)), max(1, len(sequences) // batch_size)):
                seq, pos = torch.from_numpy(inputs[batch]), torch.from_numpy(targets[batch])
                neg = torch.from_numpy(rng.integers(1, n_items + 1, size=pos.shape))
                h = self.net(seq)  # (B, T, d)
                pos_logit = (h * self.net.items(pos)).sum(-1)
                neg_logit = (h * self.net.items(neg)).sum(-1)
                mask = pos > 0
                loss = (nn.functional.binary_cross_entropy_with_logits(pos_logit[mask], torch.ones_like(pos_logit[mask]))
                        + nn.functional.binary_cross_entropy_with_logits(neg_logit[mask], torch.zeros_like(neg_logit[mask])))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            self.epochs_run += 1
        self.train_seconds = time.perf_counter() - started
        self.net.eval()

    @torch.no_grad()
    def score(self, cases: Sequence[Case], candidates: np.ndarray | None = None) -> np.ndarray:
        seq = np.zeros((len(cases), self.max_len), np.int64)
        for i, case in enumerate(cases):
            s = [self.item_index[target_item(e)] + 1 for e in case.history][-self.max_len:]
            if s:
                seq[i, self.max_len - len(s):] = s
        out = []
        for start in range(0, len(cases), 256):
            h = self.net(torch.from_numpy(seq[start:start + 256]))[:, -1]  # (B, d)
            out.append((h @ self.net.items.weight[1:].T).numpy().astype(np.float64))  # (B, n_items)
        full = np.concatenate(out) if out else np.zeros((0, len(self.item_index)))
        full[~seq.any(1)] = 0.0  # no history: nothing to attend to, every item ties
        return full if candidates is None else np.take_along_axis(full, candidates, axis=1)
