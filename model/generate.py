"""Decoding identifiers from the causal model, for a batch of requests.

Both ways start the same: the request prefixes (history, then the task's head, see
model.tasks.Renderer.source) are left-padded and run once, keeping the key/value cache;
an identifier is then L tokens, each scored against its level's K codes
(model.modeling.code_logits), so a score is a sum over levels of log-softmax over codes
and scores compare across items and beams.

The W beams (or C candidates) of a request continue ONE prefix: their tokens are appended
to the request's own cache row as branches of a tree, each token attending to the prefix,
its ancestors and itself (a 4-D attention mask), as tree attention does in speculative
decoding. Nothing is copied per beam: repeating the prefix's cache W times and reordering
it after every step was 40% of a served request's time.

    score_ids    exact: the log-likelihood of GIVEN identifiers (the paper protocol's 100
                 candidates), the first L-1 codes of every candidate teacher-forced in one
                 pass after the prefix. No beam can drop the true item.
    beam_search  top `beam_size` valid identifiers (the full catalogue, serving): L masked
                 top-k steps over (beam x K), the constraint (identifiers.constraints)
                 giving every beam's valid next codes as one tensor operation; a step runs
                 the decoder on each live beam's newest token.
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
    tree: int = 0  # branch tokens appended to the cache after the prefix (see grow)


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


def grow(model: PreTrainedModel, prefix: Prefix, tokens: torch.Tensor, seen: torch.Tensor,
         depth: torch.Tensor) -> torch.Tensor:
    """Append n branch tokens per row after the prefix and the tree so far (T = prefix.tree).

    tokens (B, n); seen (B, n, T + n) which tree tokens each new one attends to (its
    ancestors and itself); depth (B, n) its distance from the prefix's end -> (B, n, d)."""
    decoder, _ = parts(model)
    b, n = tokens.shape
    visible = torch.cat([prefix.attention_mask.bool()[:, None, :].expand(b, n, -1), seen], dim=-1)  # (B, n, S + T + n)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(visible.shape, dtype=dtype, device=tokens.device).masked_fill(~visible, torch.finfo(dtype).min)
    out = decoder(input_ids=tokens, attention_mask=mask[:, None], position_ids=prefix.next_position[:, None] + depth,
                  past_key_values=prefix.cache, use_cache=True)
    prefix.tree += n
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
    codes = np.asarray(codes, np.int64)
    if not len(sources):
        return np.full(codes.shape[:2], -np.inf)
    return np.concatenate([score(model, vocab, task, prefill(model, sources[i: i + batch_size], vocab.pad_id),
                                 codes[i: i + batch_size]) for i in range(0, len(sources), batch_size)])


@torch.no_grad()
def score(model: PreTrainedModel, vocab: Vocabulary, task: str, prefix: Prefix, codes: np.ndarray) -> np.ndarray:
    """score_ids after a prefix (B rows) that may already carry other branches (a beam's)."""
    device = prefix.hidden.device
    tokens_by_level = level_tokens(vocab, task, device)  # (L, K)
    _, out_weight = parts(model)
    chunk = torch.tensor(np.asarray(codes, np.int64), device=device)  # (b, C, L)
    b, c, depth = chunk.shape
    known = (chunk >= 0).all(-1)  # (b, C)
    chunk = chunk.clamp(min=0)
    first = torch.log_softmax(code_logits(prefix.hidden, out_weight, tokens_by_level[0]).float(), -1)  # (b, K)
    total = first.gather(1, chunk[:, :, 0])  # (b, C)
    if depth > 1:
        # candidate-major branches: token (c, l) is code l of candidate c and sees codes 0..l of c
        branch = torch.arange(c * (depth - 1), device=device) // (depth - 1)  # (C*(L-1),)
        level = torch.arange(depth - 1, device=device).repeat(c)  # (C*(L-1),)
        own = (branch[:, None] == branch[None, :]) & (level[None, :] <= level[:, None])  # (C*(L-1), C*(L-1))
        seen = torch.cat([torch.zeros((len(own), prefix.tree), dtype=torch.bool, device=device), own], 1)
        inputs = torch.stack([tokens_by_level[l][chunk[:, :, l]] for l in range(depth - 1)], -1)  # (b, C, L-1)
        hidden = grow(model, prefix, inputs.reshape(b, -1), seen.expand(b, -1, -1), level.expand(b, -1))
        hidden = hidden.reshape(b, c, depth - 1, -1)  # (b, C, L-1, d)
        for l in range(1, depth):
            logp = torch.log_softmax(code_logits(hidden[:, :, l - 1], out_weight, tokens_by_level[l]).float(), -1)
            total = total + logp.gather(2, chunk[:, :, l: l + 1])[..., 0]  # (b, C)
    return torch.where(known, total, torch.full_like(total, float("-inf"))).cpu().numpy()


@torch.no_grad()
def beam_search(model: PreTrainedModel, vocab: Vocabulary, task: str, sources: Sequence[Sequence[int]],
                constraint: PrefixConstraint | None, groups: np.ndarray | None = None, beam_size: int = 30,
                batch_size: int = 32) -> Ranked:
    """Top `beam_size` identifiers of `task` ("search" | "rec") for each source.

    constraint None decodes unconstrained (any code at every level; rows stay -1).
    groups (B,) picks each request's candidate group of the constraint (default: 0)."""
    model.eval()
    groups = np.zeros(len(sources), np.int64) if groups is None else np.asarray(groups, np.int64)
    parts_ = [search(model, vocab, task, prefill(model, sources[i: i + batch_size], vocab.pad_id), constraint,
                     groups[i: i + batch_size], beam_size) for i in range(0, len(sources), batch_size)]
    return Ranked(*(np.concatenate([getattr(p, f) for p in parts_]) for f in ("rows", "scores", "codes")))


@torch.no_grad()
def search(model: PreTrainedModel, vocab: Vocabulary, task: str, prefix: Prefix, constraint: PrefixConstraint | None,
           groups: np.ndarray, w: int) -> Ranked:
    """beam_search after a prefix (B rows); the beams are branches of each row's tree."""
    device = prefix.hidden.device
    tokens_by_level = level_tokens(vocab, task, device)
    depth, k = tokens_by_level.shape
    b = len(groups)
    _, out_weight = parts(model)
    if constraint is not None:
        constraint = constraint.to(device)
    hidden = prefix.hidden[:, None].expand(b, w, -1)  # (b, w, d)
    scores = torch.full((b, w), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam per request to start
    nodes = (constraint.roots(torch.as_tensor(groups, device=device)).repeat_interleave(w)
             if constraint is not None else None)  # (b*w,)
    codes = torch.zeros((b * w, 0), dtype=torch.long, device=device)
    paths = torch.zeros((b, w, 0), dtype=torch.long, device=device)  # tree columns of each beam's tokens
    for level in range(depth):
        logp = torch.log_softmax(code_logits(hidden.reshape(b * w, -1), out_weight, tokens_by_level[level]).float(),
                                 dim=-1)  # (b*w, K)
        if constraint is not None:
            logp = logp.masked_fill(~constraint.allowed(level, nodes), float("-inf"))
        total = (scores.reshape(-1, 1) + logp).reshape(b, w * k)
        scores, index = total.topk(w, dim=1)  # (b, w)
        parent = index // k  # (b, w) the beam each new beam extends
        flat_parent = (torch.arange(b, device=device)[:, None] * w + parent).reshape(-1)  # (b*w,)
        code = (index % k).reshape(-1)
        codes = torch.cat([codes[flat_parent], code[:, None]], dim=1)
        if constraint is not None:
            nodes = constraint.advance(level, nodes[flat_parent], code)
            nodes = torch.where(torch.isfinite(scores.reshape(-1)), nodes, torch.full_like(nodes, -1))
        if level + 1 < depth:
            own = prefix.tree + torch.arange(w, device=device).expand(b, w)  # (b, w) the new tokens' columns
            paths = torch.cat([paths.gather(1, parent[..., None].expand(-1, -1, level)), own[..., None]], dim=-1)
            seen = torch.zeros((b, w, prefix.tree + w), dtype=torch.bool, device=device)
            seen.scatter_(2, paths, True)  # (b, w, tree so far): ancestors and self
            hidden = grow(model, prefix, tokens_by_level[level][code].reshape(b, w), seen,
                          torch.full((b, w), level, device=device))  # (b, w, d)
    rows = constraint.items(nodes) if constraint is not None else torch.full((b * w,), -1, device=device)
    rows = torch.where(torch.isfinite(scores.reshape(-1)), rows, torch.full_like(rows, -1))
    return Ranked(rows.reshape(b, w).cpu().numpy(), scores.cpu().numpy(), codes.reshape(b, w, depth).cpu().numpy())
