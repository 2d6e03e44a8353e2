"""`run_quality` end to end on a tiny dataset directory: every system, task, protocol and
split gets a tidy row with n and CIs, the budget is respected, the markdown is written."""

from __future__ import annotations

import csv
import json

import pytest

from evaluation.quality import QualitySettings, run_quality, write_report
from model.modeling import ModelSettings
from model.tasks import RenderSettings
from test_model import tiny_world


def write_movielens(ds, root):
    root.mkdir()
    with open(root / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for item in ds.items.values():
            w.writerow([item.item_id, item.title, item.fields["genres"].capitalize()])
    with open(root / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for e in ds.interactions:
            w.writerow([e.user_id, e.item_id, e.value, int(e.timestamp)])
    with open(root / "tags.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "tag", "timestamp"])
        for e in ds.searches:
            w.writerow([e.user_id, e.clicked_items[0], e.query, int(e.timestamp)])


@pytest.mark.timeout(600)
def test_quality_run_writes_tidy_rows_for_every_system(tmp_path):
    ds, idmap = tiny_world(n_items=160, n_users=30)
    write_movielens(ds, tmp_path / "data")
    # the identifier map is given (the identifiers part tests its own builder)
    def build_ids(dataset, train_events, variant, directory, seed):
        return idmap

    settings = QualitySettings(budget_minutes=3, sasrec_seconds=3, id_ablations=False, beam_size=10, min_train_seconds=5,
                               guess_build_seconds=1, guess_temporal_prepare_seconds=10,
                               model=ModelSettings(d_model=32, layers=1, heads=2, d_ff=64),
                               render=RenderSettings(history_events=4, max_source_tokens=40))
    report = run_quality(tmp_path / "data", settings, tmp_path / "state", tmp_path / "cache", log=lambda _: None,
                         build_ids=build_ids)
    assert report["timings"]["total"] < 3 * 60 + 30
    rows = {(r["system"], r["task"], r["protocol"], r["split"]) for r in report["results"]}
    for protocol in ("paper", "full"):
        for system in ("gensar", "bm25", "dense", "bm25+dense", "own-targets+bm25"):
            assert (system, "search", protocol, "loo/real") in rows
            assert (system, "search", protocol, "loo/synthetic") in rows
        for system in ("gensar", "popularity", "item-knn", "sasrec", "gensar-rec-only"):
            assert (system, "rec", protocol, "loo") in rows
        assert ("gensar-search-only", "search", protocol, "loo/real") in rows
        assert ("gensar", "search", protocol, "temporal/real") in rows
    for r in report["results"]:
        assert r["n"] > 0 and set(r["metrics"]) == {"HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"}
        assert all(lo <= r["metrics"][m] <= hi for m, (lo, hi) in r["ci95"].items())
        if r["protocol"] == "paper" and r["task"] == "search":
            assert 0 <= r["random_filled_cases"] <= r["n"]
    # the same cases in both protocols
    n = {(r["system"], r["task"], r["split"], r["protocol"]): r["n"] for r in report["results"]}
    assert all(n[(s, t, sp, "paper")] == n[(s, t, sp, "full")] for (s, t, sp, p) in n)
    assert report["training"]["leave-one-out/gensar"]["train"]["samples"] > 0
    out = write_report(report, tmp_path / "quality.json")
    assert json.loads(out.read_text())["dataset"]["items"] == 160
    assert "| rec | loo | paper |" in out.with_suffix(".md").read_text()
