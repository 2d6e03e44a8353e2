"""The demo's streaming baselines: each learns online (its answer changes after the event),
the popularity window forgets, item-kNN recommends what co-occurred (and is the offline
ItemKNN on the same events), own targets come first, BM25 learns tags; the window is
chosen on the bootstrap's tail; every system is summarised with paired intervals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from demo.baselines import (Baselines, OnlineItemKNN, OwnHistory, OwnTargets, SlidingPopularity, StreamingBM25,
                            choose_window)
from demo.plots import prequential_charts
from demo.prequential import Record, by_system, differences, summarize, versus_live
from demo.report import Summary, VersionRow, markdown
from evaluation.baselines import ItemKNN
from evaluation.protocols import Case
from gensar.data import Dataset
from gensar.events import InteractionEvent, ItemUpsert, SearchEvent

def world(n_items: int = 6) -> Dataset:
    items = {str(i): ItemUpsert(event_id=f"item-{i}", timestamp=0, item_id=str(i), title=f"Film {i}",
                                fields={"genres": "Drama"}) for i in range(1, n_items + 1)}
    return Dataset(Path("."), items, [], [], has_ratings=True)


def rate(user: str, item: str, t: float = 0.0) -> InteractionEvent:
    return InteractionEvent(event_id=f"r-{user}-{item}-{t}", timestamp=t, user_id=user, item_id=item, kind="rate")


def tag(user: str, item: str, query: str, t: float = 0.0) -> SearchEvent:
    return SearchEvent(event_id=f"s-{user}-{item}-{t}", timestamp=t, user_id=user, query=query, clicked_items=[item])


def top(scores: np.ndarray, ds: Dataset) -> str:
    return list(ds.items)[int(np.argmax(scores))]


def test_popularity_counts_online_and_its_window_forgets():
    ds = world()
    index = {item: row for row, item in enumerate(ds.items)}
    popularity = SlidingPopularity(index, window=3)
    for e in (rate("a", "1"), rate("b", "1"), rate("c", "2")):
        popularity.learn(e)
    asked = rate("d", "3")
    assert top(popularity.scores(asked, []), ds) == "1"
    for user in "efg":  # three interactions with item 2 fill the window: item 1 falls out
        popularity.learn(rate(user, "2"))
    scores = popularity.scores(asked, [])
    assert top(scores, ds) == "2" and scores[index["1"]] == 0 and scores[index["2"]] == 3


def test_item_knn_recommends_what_co_occurred_and_matches_the_offline_knn():
    ds = world()
    index = {item: row for row, item in enumerate(ds.items)}
    knn = OnlineItemKNN(index)
    asked = rate("z", "4")
    before = knn.scores(asked, ["1"])
    events = [rate("a", "1"), rate("a", "5"), rate("b", "1"), rate("b", "5"), rate("b", "2"), rate("c", "2"),
              rate("c", "3"), rate("a", "1")]  # a repeat: no new co-occurrence
    for e in events:
        knn.learn(e)
    after = knn.scores(asked, ["1"])
    assert not np.array_equal(before, after)
    others = {item: after[row] for item, row in index.items() if item != "1"}
    assert max(others, key=others.get) == "5"  # both users of item 1 also had item 5
    assert after[index["3"]] == 0  # never with item 1
    offline = ItemKNN(events, index)  # the same similarity, built in one go
    case = Case("q", "rec", "t", "z", "4", None, (rate("z", "1"),))
    assert np.allclose(after, offline.score([case])[0])


def test_bm25_learns_tags_and_own_targets_come_first():
    ds = world()
    index = {item: row for row, item in enumerate(ds.items)}
    bm25 = StreamingBM25(ds)
    own = OwnTargets(bm25, index)
    asked = tag("u", "6", "heist")
    assert not bm25.scores(asked, []).any()  # no item text has the word yet
    for e in (tag("a", "6", "heist"), tag("b", "2", "heist"), tag("c", "2", "heist movie")):
        bm25.learn(e)
        own.learn(e)
    assert top(bm25.scores(asked, []), ds) == "2"  # tagged twice with it
    own.learn(tag("u", "6", "heist"))  # the user's own earlier target
    assert top(own.scores(asked, []), ds) == "6"
    assert top(own.scores(tag("v", "6", "heist"), []), ds) == "2"  # another user: BM25 only


def test_own_history_puts_the_users_latest_interactions_first_then_bm25():
    ds = world()
    index = {item: row for row, item in enumerate(ds.items)}
    bm25 = StreamingBM25(ds)
    own = OwnHistory(bm25, index)
    for e in (tag("a", "2", "heist"), tag("b", "2", "heist")):
        bm25.learn(e)
    scores = own.scores(tag("u", "6", "heist"), ["1", "3", "1", "5"])
    order = [list(ds.items)[r] for r in np.argsort(-scores, kind="stable")]
    assert order[:4] == ["5", "1", "3", "2"]  # most recent distinct first, then BM25's best
    assert top(own.scores(tag("v", "6", "heist"), []), ds) == "2"  # no history: BM25 only


def test_baselines_answer_every_asked_event_of_their_task():
    ds = world()
    baselines = Baselines(ds, window=10)
    baselines.learn([rate("a", "1"), rate("a", "2"), rate("b", "1"), tag("a", "3", "crime")])
    asked = [(rate("c", "1"), ["2"]), (tag("c", "3", "crime"), [])]
    rec, search = baselines.answer(asked)
    assert set(rec) == {"popularity-window", "item-knn"}
    assert set(search) == {"bm25", "own-targets+bm25", "own-history+bm25"}
    assert rec["popularity-window"] == [1.0, 1.0]  # item 1 is the most popular
    assert search["bm25"][0] == 1.0 and all(0 <= v <= 1 for m in (*rec.values(), *search.values()) for v in m)


def test_the_popularity_window_is_chosen_on_the_tail_where_recent_items_lead():
    ds = world(20)
    # twelve items share the early traffic, then every user switches to items 13 and 14:
    # a short window sees the switch at once, a long one only once they outnumber the old ones
    early = [rate(f"e{i}", str(1 + i % 12), i) for i in range(1200)]
    late = [rate(f"l{i}", "13" if i % 3 else "14", 1200 + i) for i in range(150)]
    window, tried = choose_window(ds, early + late, tail_from=1220, windows=(30, 300))
    assert window == 30 and tried["30"] > tried["300"]


def test_every_system_is_summarised_with_paired_intervals_against_live():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        live = float(rng.random() < 0.4)
        rows.append(Record(at=float(i), event_time=float(i), task="rec", live_version="r1", live_hit=live,
                           live_ndcg=live / 2, frozen_hit=float(rng.random() < 0.3), frozen_ndcg=0.1,
                           baselines={"popularity-window": [0.0, 0.0], "item-knn": [live, live / 2]}))
    systems = by_system(rows)["rec"]
    assert list(systems) == ["live", "frozen", "item-knn", "popularity-window"]
    assert systems["popularity-window"]["HR@10"] == 0 and systems["item-knn"] == {**systems["live"]}
    versus = versus_live(rows)["rec"]
    lo, hi = versus["popularity-window"]["HR@10 ci95"]
    assert 0 < lo <= versus["popularity-window"]["HR@10"] <= hi and versus["popularity-window"]["n"] == 300
    assert versus["item-knn"]["HR@10 ci95"] == [0.0, 0.0]  # identical answers: no spread
    assert differences(rows)["rec"] == {k: v for k, v in versus["frozen"].items() if k != "n"}


def test_the_report_and_the_charts_show_every_system():
    rows = [Record(at=float(i), event_time=float(i), task=("search", "rec")[i % 2], live_version="r1",
                   live_hit=float(i % 3 == 0), live_ndcg=0.3, frozen_hit=float(i % 4 == 0), frozen_ndcg=0.2,
                   baselines={("bm25", "item-knn")[i % 2]: [float(i % 5 == 0), 0.1]}) for i in range(120)]
    summary = Summary(date="today", wall_seconds=60, tasks=summarize(rows), differences=differences(rows),
                      systems=by_system(rows), versus_live=versus_live(rows),
                      baselines={"popularity_window": 300, "chosen_by": "setting"},
                      versions=[VersionRow(version="r0001", task="joint", status="rejected", reason="not decided: ...",
                                           samples=10, gate={}, gate_outcome="not decided"),
                                VersionRow(version="r0002", task="joint", status="promoted", reason="better: ...",
                                           samples=20, gate={}, gate_outcome="better",
                                           prior={"weights": {"search": (4.0, 2.0, 256.0), "rec": (0.0, -0.5, 1.0)},
                                                  "cases": {"search": 600, "rec": 0}})],
                      promoted=0, served_adapters=[], freshness_p50_s=None, records=len(rows))
    text = markdown(summary)
    for task, system in (("rec", "live"), ("rec", "frozen"), ("rec", "item-knn"), ("search", "bm25")):
        assert f"| {task} | {system} | 60 |" in text
    assert "| r0001 | joint | rejected | 10 | - | not decided | base | not decided: ... |" in text
    assert "| better | rec (0, -0.5, 1) kept; search (4, 2, 256) on 600 | better: ... |" in text
    assert "the last 300 interactions (setting)" in text
    live_only = [Record(**{**r.__dict__, "baselines": {}}) for r in rows]
    for task in ("search", "rec"):  # a baseline adds a line of its own colour
        colours = [len(set(Image.open(io.BytesIO(prequential_charts(rs)[task])).convert("RGB").getdata()))
                   for rs in (live_only, rows)]
        assert colours[1] > colours[0]
