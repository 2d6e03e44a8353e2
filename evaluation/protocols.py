"""Test cases and the two protocols that rank them.

A case is one held-out event: the user, the task, the query (search), the true item and
the user's events before it. Both protocols score the SAME cases:

    paper   the true item among 99 negatives: for rec, random items the user never
            touched; for search, BM25 hard negatives for the query over item text
            (random fill when fewer than 99 items share a word with it: counted)
    full    the true item among every item of the catalogue

Case groups ("splits" in the reports): rec `loo` (and `temporal`: every interaction after
the cut-off); search `loo/real` (tag queries), `loo/synthetic` (queries from the item's
genres, the semi-synthetic Amazon protocol, one per rec test event) and `temporal/real`
(every tag event after the temporal cut-off).
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from gensar.data import Dataset, Split, UserEvent, event_order, tag_interaction_id, target_item
from gensar.events import SearchEvent
from model.tasks import synthetic_query

N_NEGATIVES = 99


@dataclass(frozen=True)
class Case:
    case_id: str
    task: str  # "search" | "rec"
    split: str  # "loo" | "loo/real" | "loo/synthetic" | "temporal/real" (and "valid:" variants)
    user_id: str
    target: str  # the true item
    query: str | None  # search cases
    history: tuple[UserEvent, ...] = field(repr=False)  # the user's events before this one, oldest first


def cases(ds: Dataset, split: Split, part: str = "test") -> list[Case]:
    """The held-out cases of `split` ("leave-one-out" or "temporal"), in event order.

    History is every earlier event of the user that the split keeps (any part: at serving
    time what happened before a request is known); events the split dropped (they would
    reveal a held-out target) never appear, nor, for a search, the interaction a tags-only
    dataset derives from that same tag."""
    held = split.test if part == "test" else split.valid
    prefix = ("loo" if split.name == "leave-one-out" else split.name) + ("" if part == "test" else ":valid")
    by_user: dict[str, list[UserEvent]] = defaultdict(list)
    for e in sorted([*split.train, *split.valid, *split.test], key=event_order):
        by_user[e.user_id].append(e)
    position = {e.event_id: i for events in by_user.values() for i, e in enumerate(events)}
    out = []
    for e in held:
        history = tuple(by_user[e.user_id][: position[e.event_id]])
        if isinstance(e, SearchEvent):
            # tags only: a user's first tag of an item is also their interaction with it,
            # sorted just before it in the same second; it is this very act, not history
            history = tuple(h for h in history if h.event_id != tag_interaction_id(e.event_id))
            out.append(Case(e.event_id, "search", f"{prefix}/real", e.user_id, e.clicked_items[0], e.query, history))
        else:
            out.append(Case(e.event_id, "rec", prefix, e.user_id, e.item_id, None, history))
            query = synthetic_query(ds, e.item_id) if split.name == "leave-one-out" else None
            if query:
                out.append(Case(f"{e.event_id}/synthetic", "search", f"{prefix}/synthetic", e.user_id, e.item_id,
                                query, history))
    return out


def _rng(seed: int, case: Case) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case.case_id.encode())])


@dataclass
class Candidates:
    """The paper protocol's lists: column 0 is the true item (scores decide, not position)."""

    rows: np.ndarray  # (N, 100) item rows
    filled: np.ndarray  # (N,) negatives that had to be random fill (search)


def paper_candidates(ds: Dataset | None, item_index: dict[str, int], case_list: Sequence[Case], bm25, seed: int = 0,
                     negatives: int = N_NEGATIVES, touched: dict[str, set[int]] | None = None) -> Candidates:
    """rec: 99 random items the user never touched (`touched`: user -> item rows; default:
    in any event of `ds`); search: the 99 best BM25 items for the query that are not the
    true item, random fill when fewer than 99 score above zero. Seeded per case: every
    system sees the same lists."""
    if touched is None:
        touched = defaultdict(set)
        for e in ds.user_events():
            touched[e.user_id].add(item_index[target_item(e)])
    n_items = len(item_index)
    rows = np.zeros((len(case_list), negatives + 1), np.int64)
    filled = np.zeros(len(case_list), np.int64)
    for i, case in enumerate(case_list):
        rng = _rng(seed, case)
        target = item_index[case.target]
        if case.task == "rec":
            forbid = touched.get(case.user_id, set()) | {target}
            chosen = _random_excluding(rng, n_items, forbid, negatives)
        else:
            scores = bm25.scores(case.query)
            scores[target] = -np.inf
            ranked = np.argsort(-scores, kind="stable")[:negatives]
            hard = ranked[scores[ranked] > 0]
            filled[i] = negatives - len(hard)
            chosen = np.concatenate([hard, _random_excluding(rng, n_items, set(hard.tolist()) | {target}, filled[i])])
        rows[i] = np.concatenate([[target], chosen])
    return Candidates(rows, filled)


class TooFewNegatives(ValueError):
    """The catalogue is too small for a case's negatives: fewer items than `k` are left
    once the target and the user's own items are excluded."""


def _random_excluding(rng: np.random.Generator, n: int, exclude: set[int], k: int) -> np.ndarray:
    pool = np.setdiff1d(np.arange(n), np.fromiter(exclude, np.int64, len(exclude)))
    if len(pool) < k:
        raise TooFewNegatives(f"only {len(pool)} of the catalogue's {n} items are eligible negatives for a case, "
                              f"{k} needed")
    return rng.choice(pool, size=k, replace=False) if k else np.zeros(0, np.int64)
