"""SASRec learns a learnable next item, and tune_sasrec picks its settings on validation
and reports every config it tried."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evaluation.baselines import Popularity
from evaluation.metrics import expected_metrics, rank_counts
from evaluation.protocols import cases, paper_candidates
from evaluation.sasrec import SASRecConfig, tune_sasrec, windows
from gensar.data import Dataset, leave_one_out
from gensar.events import InteractionEvent, ItemUpsert


def walk_world(n_items: int = 150, n_users: int = 80, length: int = 12, seed: int = 0) -> Dataset:
    """Users walk the catalogue in steps of one from a random start: the next item is the
    last one plus one, which popularity cannot know."""
    rng = np.random.default_rng(seed)
    items = {str(i): ItemUpsert(event_id=f"i-{i}", timestamp=0, item_id=str(i), title=f"item {i}")
             for i in range(n_items)}
    events, t = [], 1000
    for u in range(n_users):
        start = int(rng.integers(n_items))
        for j in range(length):
            events.append(InteractionEvent(event_id=f"r-{u}-{j}", timestamp=t, user_id=str(u),
                                           item_id=str((start + j) % n_items), kind="rate", value=4.0))
            t += 1
    return Dataset(Path("walk"), items, events, [], has_ratings=True)


def test_windows_cover_every_transition_once():
    inputs, targets = windows([[1, 2, 3, 4, 5, 6, 7], [8, 9]], max_len=3)
    # 6 + 1 transitions, left-padded windows of 3; the latest window of each sequence first
    assert sorted((a, b) for i, t in zip(inputs, targets) for a, b in zip(i, t) if b) == \
        [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (8, 9)]
    assert inputs[0].tolist() == [4, 5, 6] and targets[0].tolist() == [5, 6, 7]
    assert inputs[-1].tolist() == [0, 0, 8] and targets[-1].tolist() == [0, 0, 9]


def test_tuned_sasrec_learns_the_next_item_and_reports_the_grid():
    torch.set_num_threads(1)
    ds = walk_world()
    split = leave_one_out(ds)
    index = {item: row for row, item in enumerate(ds.items)}
    valid = [c for c in cases(ds, split, part="valid") if c.task == "rec"]
    test = [c for c in cases(ds, split) if c.task == "rec"]
    valid_rows = paper_candidates(ds, index, valid, None, seed=0, negatives=49).rows
    grid = (SASRecConfig(dim=16, max_len=16, dropout=0.1, lr=1e-2, batch_size=16, negatives=0),
            SASRecConfig(dim=16, max_len=16, dropout=0.1, lr=1e-4, batch_size=16, negatives=0))
    model, report = tune_sasrec(split.train, index, valid, valid_rows, max_seconds=12, seed=0, grid=grid)

    assert [t["settings"] for t in report["trials"]] == [{**vars(g)} for g in grid]
    assert all(0 <= t["valid"]["HR@10"] <= 1 and t["epochs"] >= 1 for t in report["trials"])
    chosen = report["chosen"]
    assert chosen == int(np.argmax([t["valid"]["HR@10"] for t in report["trials"]]))
    assert report["settings"] == report["trials"][chosen]["settings"] == vars(model.config)
    assert report["valid"]["HR@10"] >= report["trials"][chosen]["valid"]["HR@10"]
    assert report["seconds"] <= 12 + 5  # the budget, plus at most one epoch and one validation pass

    target = np.array([index[c.target] for c in test])

    def hr10(scores):
        return expected_metrics(*rank_counts(scores, target))["HR@10"].mean()

    sas, pop = hr10(model.score(test)), hr10(Popularity(split.train, index).score(test))
    assert sas > 0.5 and sas > pop + 0.3, (sas, pop)
    rows = paper_candidates(ds, index, test, None, seed=0, negatives=49).rows
    assert model.score(test, rows).shape == (len(test), 50)
    # scored in a batch (histories of other lengths, padding trimmed to the longest) or alone: the same
    some = [test[0], valid[1], test[2]]
    alone = np.concatenate([model.score([c]) for c in some])
    assert np.allclose(model.score(some), alone, atol=1e-5)
