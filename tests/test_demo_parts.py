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
from learner.settings import LearnerSettings

from demo.bootstrap import write_movielens
from demo.plots import prequential_charts, rolling
from demo.prequential import Histories, Record, differences, new_items, rank_metrics
from demo.run import StateMismatch, check_resumable
from demo.settings import FULL, QUICK
from demo.stack import learner_environment
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


def test_charts_mark_each_decided_refresh_inside_the_replay():
    rows = records(40)
    plain = prequential_charts(rows)["rec"]
    marked = prequential_charts(rows, decided=[(110.0, "promoted"), (125.0, "rejected")])["rec"]
    outside = prequential_charts(rows, decided=[(10.0, "promoted"), (900.0, "rejected")])["rec"]
    assert marked != plain and outside == plain  # a decision before or after the replay draws nothing
    pixels = Image.open(io.BytesIO(marked)).convert("RGB").getdata()
    assert any(p == (0x2c, 0xa0, 0x2c) or (abs(p[0] - 0x2c) < 40 and p[1] > 150 and p[2] < 120) for p in pixels)


def test_new_item_cases_are_counted_per_task_with_each_systems_hits():
    rows = [Record(**{**r.__dict__, "new_item": i % 4 == 1}) for i, r in enumerate(records(40))]
    table = new_items(rows)
    rec = [r for r in rows if r.task == "rec"]
    new = [r for r in rec if r.new_item]
    assert table["rec"]["cases"] == len(rec) and table["rec"]["new"] == len(new) == 10
    assert table["rec"]["systems"]["live"]["found"] == sum(r.live_hit for r in new)
    assert table["rec"]["systems"]["frozen"]["HR@10"] == sum(r.frozen_hit for r in new) / len(new)
    assert table["search"]["new"] == 0 and table["search"]["systems"] == {}


def test_a_state_directory_resumes_only_with_the_settings_it_was_made_with(tmp_path):
    path = tmp_path / "demo" / "settings.json"
    path.parent.mkdir(parents=True)
    check_resumable(path, QUICK)
    check_resumable(path, QUICK)  # the same settings: resumes
    try:
        check_resumable(path, QUICK.model_copy(update={"seed": 1}))
    except StateMismatch as exc:
        assert "seed 0 -> 1" in str(exc) and "--reset" in str(exc)
    else:
        raise AssertionError("a different seed resumed the state directory")


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


def test_histories_keep_both_kinds_as_the_stream_workers_do(bundled_data):
    ds = datasets.load(bundled_data)
    events = ds.user_events()
    user = next(e.user_id for e in reversed(events) if e.type == "search")
    histories = Histories(events)
    mine = [e for e in events if e.user_id == user]
    expected = [e.item_id if e.type == "interaction" else {"item_id": e.clicked_items[0], "query": e.query}
                for e in mine]
    assert histories.entries[user] == expected and any(isinstance(e, dict) for e in expected)
    assert histories.of(user) == expected[-50:]
    assert histories.items_of(user) == [e.item_id if e.type == "interaction" else e.clicked_items[0]
                                        for e in mine][-50:]


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


def test_each_profile_reaches_the_learner_as_its_settings(monkeypatch):
    for profile, pool, cases in [(FULL, LearnerSettings().prior_pool, 150), (QUICK, LearnerSettings().prior_pool, 30),
                                 (QUICK.model_copy(update={"prior_refit_cases": 0}), 0, None)]:
        with monkeypatch.context() as env:
            for name, value in learner_environment(profile).items():
                env.setenv(name, value)
            learner = LearnerSettings()
        assert (learner.prior_pool, learner.gate_min_cases, learner.training.epochs) == \
            (pool, profile.gate_min_cases, profile.learner_epochs)
        if cases is not None:
            assert (learner.prior_cases, learner.prior_min_cases) == (cases, profile.prior_refit_min_cases)
