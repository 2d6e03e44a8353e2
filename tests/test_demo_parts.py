"""The demo's small parts: metrics of one prediction, rolling means, charts, the dataset
slice written back in the MovieLens layout, Prometheus sums for the status page."""

from __future__ import annotations

import io
import json
import math

from fastapi.testclient import TestClient
from PIL import Image

from gensar import data as datasets
from gensar.layout import Layout
from identifiers.build import top_items_slice

from demo.bootstrap import write_movielens
from demo.plots import prequential_charts, rolling
from demo.prequential import Histories, Record, differences, rank_metrics
from demo.status import create_app, prometheus_sums


def test_rank_metrics():
    ranked = [str(i) for i in range(20)]
    assert rank_metrics(ranked, "0") == (1.0, 1.0)
    hit, ndcg = rank_metrics(ranked, "3")
    assert hit == 1.0 and math.isclose(ndcg, 1 / math.log2(5))
    assert rank_metrics(ranked, "10") == (0.0, 0.0)  # rank 11: outside the top 10


def test_rolling_mean():
    assert rolling([1, 0, 1, 1], 2) == [1.0, 0.5, 0.5, 1.0]


def records(n: int) -> list[Record]:
    return [Record(at=100.0 + i, event_time=float(i), task=("search", "rec")[i % 2], live_version="r0001",
                   live_hit=float(i % 3 == 0), live_ndcg=0.5 * (i % 3 == 0), frozen_hit=float(i % 5 == 0),
                   frozen_ndcg=0.3 * (i % 5 == 0)) for i in range(n)]


def test_charts_are_pngs_of_each_task():
    charts = prequential_charts(records(40))
    assert set(charts) == {"search", "rec"}
    for png in charts.values():
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG" and image.size == (560, 240)
        assert len(set(image.convert("RGB").getdata())) > 10  # lines and text drawn, not a blank canvas


def test_live_minus_frozen_comes_with_a_paired_interval():
    rows = records(200)
    diff = differences(rows)
    for task in ("search", "rec"):
        mine = [r for r in rows if r.task == task]
        expected = sum(r.live_hit - r.frozen_hit for r in mine) / len(mine)
        assert abs(diff[task]["HR@10"] - expected) < 1e-12
        low, high = diff[task]["HR@10 ci95"]
        assert low < expected < high and high - low < 0.5
    same = [Record(**{**r.__dict__, "frozen_hit": r.live_hit, "frozen_ndcg": r.live_ndcg}) for r in rows]
    assert differences(same)["rec"]["HR@10 ci95"] == [0.0, 0.0]  # paired: identical answers, no spread


def test_status_page_serves_charts_and_refuses_unknown_tasks(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "prequential.jsonl").write_text("".join(json.dumps(r.__dict__) + "\n" for r in records(10)))
    client = TestClient(create_app(tmp_path, Layout.under(tmp_path), "http://127.0.0.1:9", "http://127.0.0.1:9/metrics"))
    answer = client.get("/charts/rec.png")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.content.startswith(b"\x89PNG")
    missing = client.get("/charts/clicks.png")
    assert missing.status_code == 404 and "search or rec" in missing.json()["detail"]


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
