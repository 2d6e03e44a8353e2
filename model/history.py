"""The history prior: what a user's own events say about the identifier they want next.

People search again for what they searched before (MovieLens users re-tag a movie many
times; shoppers re-find a product) and rarely consume the same item twice. The decoder
sees the history but, on a few thousand searches and minutes of CPU training, learns to
copy an earlier identifier only partly. MovieLens users also tag what they have just
rated (in the default demo's stream 93% of the searched items are among the user's last
10 events), which a count cannot tell from a rating of years ago: hence recency. So an
item is scored as

    log p(id | history, query) + w_search(task) * log1p(times the user searched it)
                               + w_interaction(task) * log1p(times the user interacted with it)
                               + w_recent(task) / (1 + events since the user's latest event with it)

with three weights per task fitted on validation cases (evaluation.generative.fit_prior),
saved with the model, refitted by each refresh on the stream's cases (learner.refresh.
PriorPool, saved in the version's manifest) and applied wherever it ranks items
(evaluation, the learner's gate, serving). Zero weights (the default) leave the model's
likelihood alone. The items it lifts are scored by the model like any other
(model.generate.score_ids), so a searched item the beam did not reach can still be found.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from gensar.data import UserEvent
from gensar.events import HistoryEntry
from model.generate import prefill, score, search
from model.tasks import item_and_query

# Items a positive weight may lift into a ranking, per kind: the most searched, the most
# recently interacted. Bounded: a heavy tagger has searched hundreds of items, and each
# lifted item is one more identifier to score exactly.
LIFTED_SEARCHED = 30
LIFTED_INTERACTED = 30
LIFTED_RECENT = 10  # recency 1/(1 + d) is under 0.1 past the tenth latest event


class HistoryPrior(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[str, tuple[float, float, float]] = {}  # task -> (per searched, per interacted, recency)

    @field_validator("weights", mode="before")
    @classmethod
    def _no_recency_before(cls, weights: dict) -> dict:
        """A model saved before the recency feature has two weights a task: recency 0."""
        return {task: (*w, 0.0) if len(w) == 2 else w for task, w in weights.items()}

    def of(self, task: str) -> tuple[float, float, float]:
        return self.weights.get(task, (0.0, 0.0, 0.0))


def counts(history: Sequence[UserEvent | HistoryEntry]) -> tuple[Counter, Counter]:
    """(times searched, times interacted) by item id."""
    searched, interacted = Counter(), Counter()
    for e in history:
        item, query = item_and_query(e)
        (searched if query is not None else interacted)[item] += 1
    return searched, interacted


def features(history: Sequence[UserEvent | HistoryEntry], item_ids: Sequence[str]) -> np.ndarray:
    """(len(item_ids), 3): log1p of the search and interaction counts of each item, and its
    recency 1 / (1 + events after the user's latest event with it), 0 when it has none."""
    searched, interacted = counts(history)
    latest = {item_and_query(e)[0]: k for k, e in enumerate(history)}  # item -> its last position
    return np.array([[np.log1p(searched.get(i, 0)), np.log1p(interacted.get(i, 0)),
                      1.0 / (len(history) - latest[i]) if i in latest else 0.0] for i in item_ids],
                    np.float64).reshape(-1, 3)


def row_features(history: Sequence[UserEvent | HistoryEntry], rows: Sequence[int], item_ids: Sequence[str]
                 ) -> np.ndarray:
    """features() of map rows (-1: no item, zero features)."""
    return features(history, [item_ids[r] if r >= 0 else "" for r in rows])


def lifted(prior: HistoryPrior, task: str, history: Sequence[UserEvent | HistoryEntry]) -> list[str]:
    """The history items a positive weight can lift (a beam may not have reached them):
    the most searched, then the most recently interacted, then the most recent of any kind."""
    w_search, w_interaction, w_recent = prior.of(task)
    searched, interacted = counts(history)
    items = [i for i, _ in searched.most_common(LIFTED_SEARCHED)] if w_search > 0 else []
    recent = list(dict.fromkeys(item_and_query(e)[0] for e in reversed(history)))
    if w_interaction > 0:
        items += [i for i in recent if i in interacted][:LIFTED_INTERACTED]
    if w_recent > 0:
        items += recent[:LIFTED_RECENT]
    return list(dict.fromkeys(items))


def rank_with_history(score: Callable[[np.ndarray], np.ndarray], task: str,
                      histories: Sequence[Sequence[UserEvent | HistoryEntry]], beam_rows: np.ndarray,
                      beam_scores: np.ndarray, codes: np.ndarray, item_ids: Sequence[str], row_of: dict[str, int],
                      prior: HistoryPrior, allowed=None) -> tuple[np.ndarray, np.ndarray]:
    """A beam's rows (B, W) and log-likelihoods, plus the history items the prior lifts
    (scored exactly), each shifted by the prior and sorted best first -> (rows, scores),
    (B, W + H), -1 / -inf past the last. score(codes (B, H, L)) -> (B, H) log-likelihoods of
    the lifted items' identifiers (decode_with_history scores them on the beam's own
    prefix); codes (n_rows, L): the task's identifier of each map row; row_of: item id ->
    map row; allowed(b, row) -> bool filters lifted rows."""
    weights = np.array(prior.of(task))
    extra = []
    for b, history in enumerate(histories):
        in_beam = set(beam_rows[b][beam_rows[b] >= 0].tolist())
        rows = [row_of[i] for i in lifted(prior, task, history) if i in row_of]
        extra.append([r for r in rows if r not in in_beam and (allowed is None or allowed(b, r))])
    width = max((len(x) for x in extra), default=0)
    rows = np.full((len(histories), beam_rows.shape[1] + width), -1, np.int64)
    scores = np.full(rows.shape, -np.inf)
    rows[:, : beam_rows.shape[1]], scores[:, : beam_rows.shape[1]] = beam_rows, beam_scores
    if width:
        padded = np.array([x + [-1] * (width - len(x)) for x in extra], np.int64)  # (B, H)
        extra_codes = np.where(padded[..., None] >= 0, codes[padded.clip(min=0)], -1)  # (B, H, L)
        rows[:, beam_rows.shape[1]:] = padded
        scores[:, beam_rows.shape[1]:] = score(extra_codes)
    if weights.any():
        for b, history in enumerate(histories):
            known = rows[b] >= 0
            scores[b, known] += row_features(history, rows[b, known], item_ids) @ weights
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


def decode_with_history(model, vocab, task: str, sources: Sequence[Sequence[int]], constraint, groups: np.ndarray,
                        beam_size: int, batch_size: int, histories: Sequence[Sequence[UserEvent | HistoryEntry]],
                        codes: np.ndarray, item_ids: Sequence[str], row_of: dict[str, int], prior: HistoryPrior,
                        allowed=None) -> tuple[np.ndarray, np.ndarray]:
    """Constrained beam search, then rank_with_history, `batch_size` requests at a time; the
    lifted items are scored on the beam's own prefix (one prefill per request) -> (rows,
    scores) (B, W'), best first, -1 / -inf past the last. allowed(b, row): b over all sources."""
    parts = []
    for start in range(0, len(sources), batch_size):
        chunk = slice(start, start + batch_size)
        prefix = prefill(model, sources[chunk], vocab.pad_id)
        ranked = search(model, vocab, task, prefix, constraint, groups[chunk], beam_size)
        parts.append(rank_with_history(
            lambda c: score(model, vocab, task, prefix, c), task, histories[chunk], ranked.rows, ranked.scores, codes,
            item_ids, row_of, prior, None if allowed is None else lambda b, row, start=start: allowed(start + b, row)))
    width = max(r.shape[1] for r, _ in parts)
    rows = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=-1) for r, _ in parts])
    scores = np.concatenate([np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=-np.inf) for _, x in parts])
    return rows, scores
