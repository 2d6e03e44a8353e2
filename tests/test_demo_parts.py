"""The demo's small parts: metrics of one prediction, rolling means, charts, the dataset
slice written back in the MovieLens layout, Prometheus sums for the status page."""

from __future__ import annotations

import math

from gensar import data as datasets
from identifiers.build import top_items_slice

from demo.bootstrap import write_movielens
from demo.plots import line_chart, rolling
from demo.prequential import Histories, rank_metrics
from demo.status import prometheus_sums


def test_rank_metrics():
    ranked = [str(i) for i in range(20)]
    assert rank_metrics(ranked, "0") == (1.0, 1.0)
    hit, ndcg = rank_metrics(ranked, "3")
    assert hit == 1.0 and math.isclose(ndcg, 1 / math.log2(5))
    assert rank_metrics(ranked, "10") == (0.0, 0.0)  # rank 11: outside the top 10


def test_rolling_mean():
    assert rolling([1, 0, 1, 1], 2) == [1.0, 0.5, 0.5, 1.0]


def test_line_chart_draws_each_series():
    svg = line_chart("t", {"live": [(0, 0.1), (5, 0.2)], "frozen": [(0, 0.1), (5, 0.05)]})
    assert svg.startswith("<svg") and svg.count('class="series"') == 2


def test_histories_keep_interactions_only(bundled_data):
    ds = datasets.load(bundled_data)
    events = ds.user_events()[:500]
    histories = Histories(events)
    user = events[0].user_id
    assert histories.of(user) == [e.item_id for e in events if e.user_id == user and e.type == "interaction"][-50:]


def test_slice_round_trips_through_the_movielens_layout(bundled_data, tmp_path):
    sliced = top_items_slice(datasets.load(bundled_data), 150)
    reloaded = datasets.load(write_movielens(sliced, tmp_path / "data"))
    assert set(reloaded.items) == set(sliced.items)
    assert [e.event_id for e in reloaded.user_events()] == [e.event_id for e in sliced.user_events()]
    item = next(iter(sliced.items))
    assert reloaded.items[item].fields == sliced.items[item].fields


def test_prometheus_sums():
    text = ('# HELP x\ngensar_stream_consumer_lag{topic="a",partition="0"} 3.0\n'
            'gensar_stream_consumer_lag{topic="b",partition="1"} 4.0\n'
            'gensar_stream_dead_letters_total{reason="bad"} 2.0\nother 9\n')
    assert prometheus_sums(text, ("gensar_stream_consumer_lag", "gensar_stream_dead_letters")) == {
        "gensar_stream_consumer_lag": 7.0, "gensar_stream_dead_letters": 2.0}
