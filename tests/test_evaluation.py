"""Metrics against hand-computed cases; the two protocols select the same test cases;
baselines behave as their definitions say."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.baselines import BM25Search, FusionSearch, ItemKNN, OwnTargetsSearch, Popularity, reciprocal_ranks
from evaluation.generative import PriorEvidence, fit_weights
from evaluation.metrics import expected_metrics, rank_counts, summarize
from evaluation.protocols import cases, paper_candidates
from evaluation.report import markdown_table, result_rows
from evaluation.sasrec import SASRec
from gensar.data import event_order, leave_one_out, tag_interaction_id, temporal_split
from identifiers.semantic import item_texts
from test_model import tiny_world


def test_metrics_match_hand_computed_values():
    # rank 1, rank 3, rank 12 (no ties)
    m = expected_metrics(np.array([0, 2, 11]), np.array([0, 0, 0]))
    assert m["HR@1"].tolist() == [1, 0, 0] and m["HR@5"].tolist() == [1, 1, 0] and m["HR@10"].tolist() == [1, 1, 0]
    assert m["NDCG@5"] == pytest.approx([1, 1 / math.log2(4), 0])
    assert m["MRR"] == pytest.approx([1, 1 / 3, 1 / 12])
    # tied with 3 others after 1 better: rank uniform on 2..5
    m = expected_metrics(np.array([1]), np.array([3]))
    assert m["HR@1"][0] == 0 and m["HR@5"][0] == 1 and m["HR@10"][0] == 1
    assert m["NDCG@5"][0] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(2, 6)) / 4)
    assert m["MRR"][0] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4)
    # all 100 tied (a constant scorer): HR@10 = 10/100 in expectation, whatever the sort does
    scores = np.zeros((1, 100))
    better, tied = rank_counts(scores, np.array([37]))
    assert (better[0], tied[0]) == (0, 99)
    assert expected_metrics(better, tied)["HR@10"][0] == pytest.approx(0.1)
    assert expected_metrics(better, tied)["NDCG@10"][0] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / 100)


def test_summary_gives_means_and_intervals_that_contain_them():
    values = {k: np.array([0.0, 1.0] * 50) for k in ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")}
    means, ci = summarize(values, seed=0)
    assert means["HR@10"] == 0.5 and ci["HR@10"][0] < 0.5 < ci["HR@10"][1]
    assert ci["HR@10"][1] - ci["HR@10"][0] == pytest.approx(2 * 1.96 * 0.05, rel=0.25)  # ~ normal approximation
    assert summarize(values, seed=0) == (means, ci)  # seeded


@pytest.fixture(scope="module")
def world():
    ds, idmap = tiny_world(n_items=160, n_users=30)
    split = leave_one_out(ds)
    texts = item_texts(ds, split.train)
    index = {item: i for i, item in enumerate(ds.items)}
    return ds, split, [texts[i] for i in ds.items], index


def test_the_two_protocols_score_the_same_cases(world):
    ds, split, texts, index = world
    case_list = cases(ds, split)
    assert {c.split for c in case_list} == {"loo", "loo/real", "loo/synthetic"}
    bm25 = BM25Search(texts)
    paper = paper_candidates(ds, index, case_list, bm25, seed=0)
    assert paper.rows.shape == (len(case_list), 100)
    assert (paper.rows[:, 0] == [index[c.target] for c in case_list]).all()
    assert all(len(set(r)) == 100 for r in paper.rows)
    # a system is scored on the same cases, one row of scores per case, in both protocols
    search = np.array([c.task == "search" for c in case_list])
    search_cases = [c for c in case_list if c.task == "search"]
    full = bm25.score(search_cases)
    restricted = bm25.score(search_cases, paper.rows[search])
    paper_rows = result_rows("bm25", "search", search_cases, paper.rows[search], restricted, index, "paper",
                             filled=paper.filled[search])
    full_rows = result_rows("bm25", "search", search_cases, None, full, index, "full")
    assert [(r["split"], r["n"]) for r in paper_rows] == [(r["split"], r["n"]) for r in full_rows]
    # the same seed gives the same negatives; another seed other random ones
    again = paper_candidates(ds, index, case_list, bm25, seed=0)
    assert (again.rows == paper.rows).all()
    touched = {(e.user_id, index[e.item_id]) for e in ds.interactions}
    for c, row in zip(case_list, paper.rows):
        if c.task == "rec":
            assert not any((c.user_id, r) in touched for r in row[1:])  # never-touched negatives
    assert "| search | loo/real | paper | bm25 |" in markdown_table(paper_rows)


def test_history_is_strictly_earlier_and_temporal_cases_are_the_late_tags(world):
    ds, split, *_ = world
    for c in cases(ds, split):
        assert all(e.timestamp <= next(x for x in ds.user_events() if x.event_id == c.case_id.split("/")[0]).timestamp
                   for e in c.history)
        assert c.case_id.split("/")[0] not in {e.event_id for e in c.history}
    temporal = temporal_split(ds)
    late = cases(ds, temporal)
    assert {c.split for c in late} == {"temporal/real", "temporal"}  # late tags; late interactions (rec)
    assert sum(c.task == "search" for c in late) == sum(1 for e in temporal.test if e.type == "search")
    assert sum(c.task == "rec" for c in late) == sum(1 for e in temporal.test if e.type == "interaction")
    assert all(c.split == "temporal/real" for c in late if c.task == "search")


def test_baselines_score_what_they_promise(world):
    ds, split, texts, index = world
    case_list = [c for c in cases(ds, split)]
    search = [c for c in case_list if c.task == "search"]
    bm25 = BM25Search(texts)
    # own targets: an item the user searched before outranks everything else
    own = OwnTargetsSearch(bm25, index).score(search)
    for c, s in zip(search, own):
        earlier = {index[e.clicked_items[0]] for e in c.history if e.type == "search"}
        if earlier:
            assert s[list(earlier)].min() > np.delete(s, list(earlier)).max()
    rec = [c for c in case_list if c.task == "rec"]
    pop = Popularity(split.train, index).score(rec)
    assert (pop[0] == pop[1]).all()  # not personalised
    knn = ItemKNN(split.train, index).score(rec)
    # users walk the catalogue in steps of one: the item after the last one is a strong neighbour
    def hr10(scores):
        return np.mean(expected_metrics(*rank_counts(scores, np.array([index[c.target] for c in rec])))["HR@10"])
    assert hr10(knn) > 0.3 and hr10(knn) > 2 * hr10(pop)
    sas = SASRec(split.train, index, dim=16, epochs=3, max_seconds=20).score(rec[:4], np.array([[0, 1, 2]] * 4))
    assert sas.shape == (4, 3) and np.isfinite(sas).all()
    rr = reciprocal_ranks(np.array([[3.0, -np.inf, 1.0]]))
    assert rr[0].tolist() == [1 / 61, 0.0, 1 / 62]
    assert FusionSearch.name == "bm25+dense"


def test_a_tags_only_search_case_does_not_see_the_interaction_of_its_own_tag(tmp_path):
    from gensar.data import load
    from gensar.synthetic import write_synthetic

    write_synthetic(tmp_path / "synth", items=80, users=20, events=400, seed=1)
    ds = load(tmp_path / "synth")
    split = leave_one_out(ds)
    search = [c for c in cases(ds, split) if c.task == "search"]
    derived = {e.event_id: e for e in ds.interactions}  # tags only: one per first tag of a (user, item)
    own = [c for c in search if tag_interaction_id(c.case_id) in derived]
    assert own, "some held-out searches are a first tag"
    searches = {e.event_id: e for e in ds.searches}
    for c in own:
        act = derived[tag_interaction_id(c.case_id)]
        assert event_order(act) < event_order(searches[c.case_id])  # it sorts before the search...
        assert act.event_id not in {e.event_id for e in c.history}  # ...yet is not history: it is this very act


def synthetic_evidence(n: int, seed: int) -> PriorEvidence:
    """Cases whose true item the model ranks below one other, but which the user searched
    (feature 0) and the other not: a positive search weight ranks it first."""
    rng = np.random.default_rng(seed)
    paper = rng.normal(-5, 0.1, (n, 4))
    paper[:, 0], paper[:, 1] = -3.0, -2.0  # true item second by likelihood
    paper_features = np.zeros((n, 4, 3))
    paper_features[:, 0, 0] = math.log1p(1)
    width = int(rng.integers(3, 6))
    full = np.full((n, width), -np.inf)
    full[:, :2] = [-2.0, -3.0]  # the beam's best, then the true item
    full_features = np.zeros((n, width, 3))
    full_features[:, 1, 0] = math.log1p(1)
    column = np.ones(n, np.int64)
    column[: n // 5] = width  # the beam missed the true item here
    return PriorEvidence(paper, paper_features, full, full_features, column)


def test_prior_weights_are_fitted_on_evidence_pooled_over_parts():
    first, second = synthetic_evidence(30, 0), synthetic_evidence(20, 1)
    weights, report = fit_weights(first)
    assert weights[0] > 0 and report["cases"] == 30  # the searched item first, with the smallest weight that does
    assert report["chosen"]["paper_NDCG@10"] == 1.0 and report["without"]["paper_NDCG@10"] < 1.0
    assert report["chosen"]["full_NDCG@10"] == pytest.approx(0.8)  # the beam's misses stay misses
    pooled = PriorEvidence.join([first, second])
    width = max(first.full.shape[1], second.full.shape[1])
    assert len(pooled) == 50 and pooled.full.shape == (50, width) and pooled.full_features.shape == (50, width, 3)
    missed = np.r_[np.arange(6), 30 + np.arange(4)]  # each part's not-reached cases point past the padded width
    assert (pooled.target_column[missed] == width).all()
    assert (np.delete(pooled.target_column, missed) == 1).all()
    pooled_weights, pooled_report = fit_weights(pooled)
    assert pooled_weights == weights and pooled_report["cases"] == 50
    assert pooled_report["without"]["full_NDCG@10"] == pytest.approx(report["without"]["full_NDCG@10"])
    newest = pooled.newest(20)
    assert len(newest) == 20 and (newest.paper == second.paper).all()
    assert (newest.target_column == np.where(second.target_column == second.full.shape[1], width, 1)).all()
