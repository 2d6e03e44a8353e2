"""Decoding identifiers from the causal model, for a batch of requests.

Both ways start the same: the request prefixes (history, then the task's head, see
model.tasks.Renderer.source) are left-padded and run once, keeping the key/value cache;
an identifier is then L tokens, each scored against its level's K codes
(model.modeling.code_logits), so a score is a sum over levels of log-softmax over codes
and scores compare across items and beams.

    score_ids    exact: the log-likelihood of GIVEN identifiers (the paper protocol's 100
                 candidates), all L codes teacher-forced in one pass over the cache
                 repeated per candidate. No beam can drop the true item.
    beam_search  top `beam_size` valid identifiers (the full catalogue, serving): L masked
                 top-k steps over (beam x K), the constraint (identifiers.constraints)
                 giving every beam's valid next codes as one tensor operation; the cache is
                 reordered with the beams, so a step runs the decoder on one new token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from identifiers.constraints import PrefixConstraint
from model.modeling import code_logits, parts, positions
from model.vocab import Vocabulary


@dataclass
class Ranked:
    rows: np.ndarray  # (B, W) item rows, best first; -1 past the last valid identifier
    scores: np.ndarray  # (B, W) log-probabilities; -inf where rows is -1
    codes: np.ndarray  # (B, W, L) the decoded codes


@dataclass
class Prefix:
    """A batch of prefixes after one pass: what decoding continues from."""

    hidden: torch.Tensor  # (B, d) the last state, which predicts the first code
    cache: object  # the decoder's key/value cache (B rows)
    attention_mask: torch.Tensor  # (B, S) left padding is 0
    next_position: torch.Tensor  # (B,) position of the next token

    def repeat(self, n: int) -> "Prefix":
        """Each row n times in a row (the cache in place)."""
        self.cache.batch_repeat_interleave(n)
        return Prefix(self.hidden.repeat_interleave(n, 0), self.cache, self.attention_mask.repeat_interleave(n, 0),
                      self.next_position.repeat_interleave(n, 0))


def prefill(model: PreTrainedModel, sources: Sequence[Sequence[int]], pad_id: int) -> Prefix:
    decoder, _ = parts(model)
    device = next(model.parameters()).device
    s = max(len(x) for x in sources)
    input_ids = torch.full((len(sources), s), pad_id, dtype=torch.long)
    for i, x in enumerate(sources):  # left padding: every prefix ends at the last column
        input_ids[i, s - len(x):] = torch.tensor(x, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, x in enumerate(sources):
        mask[i, s - len(x):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    out = decoder(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
    return Prefix(out.last_hidden_state[:, -1], out.past_key_values, mask, mask.sum(1))


def extend(model: PreTrainedModel, prefix: Prefix, tokens: torch.Tensor) -> torch.Tensor:
    """Run `tokens` (B, T) after the prefix (its cache grows by T) -> (B, T, d) states."""
    decoder, _ = parts(model)
    t = tokens.shape[1]
    mask = torch.cat([prefix.attention_mask, torch.ones_like(tokens)], dim=1)
    position_ids = prefix.next_position[:, None] + torch.arange(t, device=tokens.device)[None, :]
    out = decoder(input_ids=tokens, attention_mask=mask, position_ids=position_ids, past_key_values=prefix.cache,
                  use_cache=True)
    prefix.attention_mask, prefix.next_position = mask, prefix.next_position + t
    return out.last_hidden_state


def level_tokens(vocab: Vocabulary, task: str, device) -> torch.Tensor:
    depth = vocab.layout.search_levels if task == "search" else vocab.layout.rec_levels
    return torch.tensor(np.stack([vocab.level_tokens(task, l) for l in range(depth)]), device=device)  # (L, K)


@torch.no_grad()
def score_ids(model: PreTrainedModel, vocab: Vocabulary, task: str, sources: Sequence[Sequence[int]],
              codes: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Exact log-likelihood of candidate identifiers: sources (B,), codes (B, C, L) with
    rows of -1 for candidates without an identifier -> (B, C) scores (-inf for those)."""
    model.eval()
    device = next(model.parameters()).device
    tokens_by_level = level_tokens(vocab, task, device)  # (L, K)
    _, out_weight = parts(model)
    codes = np.asarray(codes, np.int64)
    out = np.full(codes.shape[:2], -np.inf)
    for start in range(0, len(sources), batch_size):
        chunk = torch.tensor(codes[start: start + batch_size], device=device)  # (b, C, L)
        b, c, depth = chunk.shape
        known = (chunk >= 0).all(-1)  # (b, C)
        flat = chunk.clamp(min=0).reshape(b * c, depth)  # (b*C, L)
        prefix = prefill(model, sources[start: start + batch_size], vocab.pad_id)
        first = torch.log_softmax(code_logits(prefix.hidden, out_weight, tokens_by_level[0]).float(), -1)  # (b, K)
        total = first.gather(1, chunk[:, :, 0].clamp(min=0))  # (b, C)
        if depth > 1:
            prefix = prefix.repeat(c)
            inputs = torch.stack([tokens_by_level[l][flat[:, l]] for l in range(depth - 1)], 1)  # (b*C, L-1)
            hidden = extend(model, prefix, inputs)  # (b*C, L-1, d)
            for l in range(1, depth):
                logp = torch.log_softmax(code_logits(hidden[:, l - 1], out_weight, tokens_by_level[l]).float(), -1)
                total = total + logp.gather(1, flat[:, l: l + 1]).reshape(b, c)
        out[start: start + b] = torch.where(known, total, torch.full_like(total, float("-inf"))).cpu().numpy()
    return out


@torch.no_grad()
def beam_search(model: PreTrainedModel, vocab: Vocabulary, task: str, sources: Sequence[Sequence[int]],
                constraint: PrefixConstraint | None, groups: np.ndarray | None = None, beam_size: int = 30,
                batch_size: int = 32) -> Ranked:
    """Top `beam_size` identifiers of `task` ("search" | "rec") for each source.

    constraint None decodes unconstrained (any code at every level; rows stay -1).
    groups (B,) picks each request's candidate group of the constraint (default: 0)."""
    model.eval()
    device = next(model.parameters()).device
    tokens_by_level = level_tokens(vocab, task, device)
    if constraint is not None:
        constraint = constraint.to(device)
    groups = np.zeros(len(sources), np.int64) if groups is None else np.asarray(groups, np.int64)
    parts_ = [_search_chunk(model, vocab, tokens_by_level, sources[i: i + batch_size], constraint,
                            torch.as_tensor(groups[i: i + batch_size], device=device), beam_size)
              for i in range(0, len(sources), batch_size)]
    return Ranked(*(np.concatenate([p[j] for p in parts_]) for j in range(3)))


def _search_chunk(model, vocab, tokens_by_level, sources, constraint, groups, w):
    device = tokens_by_level.device
    depth, k = tokens_by_level.shape
    b = len(sources)
    _, out_weight = parts(model)
    prefix = prefill(model, sources, vocab.pad_id).repeat(w)  # (b*w) rows
    hidden = prefix.hidden  # (b*w, d)
    scores = torch.full((b, w), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam per request to start
    nodes = constraint.roots(groups).repeat_interleave(w) if constraint is not None else None  # (b*w,)
    codes = torch.zeros((b * w, 0), dtype=torch.long, device=device)
    for level in range(depth):
        logp = torch.log_softmax(code_logits(hidden, out_weight, tokens_by_level[level]).float(), dim=-1)  # (b*w, K)
        if constraint is not None:
            logp = logp.masked_fill(~constraint.allowed(level, nodes), float("-inf"))
        total = (scores.reshape(-1, 1) + logp).reshape(b, w * k)
        scores, index = total.topk(w, dim=1)  # (b, w)
        parent = (torch.arange(b, device=device)[:, None] * w + index // k).reshape(-1)  # (b*w,) flat beam index
        code = (index % k).reshape(-1)
        codes = torch.cat([codes[parent], code[:, None]], dim=1)
        if constraint is not None:
            nodes = constraint.advance(level, nodes[parent], code)
            nodes = torch.where(torch.isfinite(scores.reshape(-1)), nodes, torch.full_like(nodes, -1))
        if level + 1 < depth:
            prefix.cache.reorder_cache(parent)
            hidden = extend(model, prefix, tokens_by_level[level][code][:, None])[:, -1]
    rows = constraint.items(nodes) if constraint is not None else torch.full((b * w,), -1, device=device)
    rows = torch.where(torch.isfinite(scores.reshape(-1)), rows, torch.full_like(rows, -1))
    return rows.reshape(b, w).cpu().numpy(), scores.cpu().numpy(), codes.reshape(b, w, depth).cpu().numpy()
