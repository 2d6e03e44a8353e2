"""Beam search over identifiers, constrained to valid ones, for a batch of requests.

Our own loop rather than `model.generate(prefix_allowed_tokens_fn=...)`: identifiers have a
fixed depth L, so decoding is exactly L steps, each a masked top-k over (beam x codebook)
scores. The constraint (identifiers.constraints) gives every beam's valid next codes as
one tensor operation, where the HF callback is a Python call per beam per step. Scores
are sums over levels of log-softmax over that level's code tokens, so they are comparable
across items and beams. The decoder's key/value cache is reordered with the beams, so a
step runs the decoder on one new token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from identifiers.constraints import PrefixConstraint
from model.vocab import Vocabulary


@dataclass
class Ranked:
    rows: np.ndarray  # (B, W) item rows, best first; -1 past the last valid identifier
    scores: np.ndarray  # (B, W) log-probabilities; -inf where rows is -1
    codes: np.ndarray  # (B, W, L) the decoded codes


def pad_sources(sources: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    s = max(len(x) for x in sources)
    ids = torch.full((len(sources), s), pad_id, dtype=torch.long)
    for i, x in enumerate(sources):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    ids = ids.to(device)
    return ids, (ids != pad_id).long()


@torch.no_grad()
def beam_search(model: PreTrainedModel, vocab: Vocabulary, task: str, sources: Sequence[Sequence[int]],
                constraint: PrefixConstraint | None, groups: np.ndarray | None = None, beam_size: int = 30,
                batch_size: int = 32) -> Ranked:
    """Top `beam_size` identifiers of `task` ("search" | "rec") for each source.

    constraint None decodes unconstrained (any code at every level; rows stay -1).
    groups (B,) picks each request's candidate group of the constraint (default: 0)."""
    model.eval()
    device = next(model.parameters()).device
    depth = vocab.layout.search_levels if task == "search" else vocab.layout.rec_levels
    level_tokens = torch.tensor(np.stack([vocab.level_tokens(task, l) for l in range(depth)]), device=device)  # (L, K)
    if constraint is not None:
        constraint = constraint.to(device)
    groups = np.zeros(len(sources), np.int64) if groups is None else np.asarray(groups, np.int64)
    parts = [_search_chunk(model, vocab, level_tokens, sources[i: i + batch_size], constraint,
                           torch.as_tensor(groups[i: i + batch_size], device=device), beam_size)
             for i in range(0, len(sources), batch_size)]
    return Ranked(*(np.concatenate([p[j] for p in parts]) for j in range(3)))


def _search_chunk(model, vocab, level_tokens, sources, constraint, groups, w):
    device = level_tokens.device
    depth, k = level_tokens.shape
    b = len(sources)
    input_ids, attention_mask = pad_sources(sources, vocab.pad_id, device)
    hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (b, S, d)
    encoder_outputs = BaseModelOutput(last_hidden_state=hidden.repeat_interleave(w, 0))  # (b*w, S, d)
    attention_mask = attention_mask.repeat_interleave(w, 0)
    decoder_input = torch.full((b * w, 1), vocab.start_id, dtype=torch.long, device=device)
    scores = torch.full((b, w), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam per request to start
    nodes = constraint.roots(groups).repeat_interleave(w) if constraint is not None else None  # (b*w,)
    codes = torch.zeros((b * w, 0), dtype=torch.long, device=device)
    past = None
    for level in range(depth):
        out = model(encoder_outputs=encoder_outputs, attention_mask=attention_mask, decoder_input_ids=decoder_input,
                    past_key_values=past, use_cache=True)
        logp = torch.log_softmax(out.logits[:, -1, level_tokens[level]].float(), dim=-1)  # (b*w, K)
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
        past = out.past_key_values
        past.reorder_cache(parent)
        decoder_input = level_tokens[level][code][:, None]
    rows = constraint.items(nodes) if constraint is not None else torch.full((b * w,), -1, device=device)
    rows = torch.where(torch.isfinite(scores.reshape(-1)), rows, torch.full_like(rows, -1))
    return rows.reshape(b, w).cpu().numpy(), scores.cpu().numpy(), codes.reshape(b, w, depth).cpu().numpy()
