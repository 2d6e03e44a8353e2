"""`run_quality` end to end on tiny dataset directories: every system, task, protocol and
split gets a tidy row with n and CIs, the budget is respected, the markdown is written; a
tight budget still yields the joint model (what would not fit is skipped, only after it in
the order), on the bundled shape and on a tags-only synthetic shape; a budget that cannot
fit the joint model is refused before anything runs."""

from __future__ import annotations

import csv
import json

import pytest

from evaluation.quality import BudgetError, QualitySettings, run_quality, write_report
from gensar.data import load
from gensar.layout import Layout
from gensar.synthetic import write_synthetic
from model.modeling import ModelSettings
from model.train import TrainSettings
from model.tasks import RenderSettings
from test_model import tiny_world


TINY_MODEL = ModelSettings(d_model=32, layers=1, heads=2, d_ff=64)
TINY_RENDER = RenderSettings(context_tokens=48, overlap_tokens=16)


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
    def build_ids(dataset, train_events, variant, layout, seed):
        return idmap

    settings = QualitySettings(budget_minutes=3, id_ablations=False, beam_size=10, min_train_seconds=5,
                               guess_build_seconds=1, guess_prepare_seconds=10, model=TINY_MODEL, render=TINY_RENDER)
    report = run_quality(tmp_path / "data", settings, Layout.under(tmp_path / "state", tmp_path / "cache"), log=lambda _: None,
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
    paper_only = {s for (s, t, sp, p) in n if s.endswith("/no-prior")}  # the likelihood alone: paper protocol only
    assert paper_only == {"gensar/no-prior"}
    assert all(n[(s, t, sp, "paper")] == n[(s, t, sp, "full")] for (s, t, sp, p) in n if s not in paper_only)
    assert report["training"]["leave-one-out/gensar"]["train"]["identifiers"] > 0
    # SASRec was tuned on validation for as long as the joint model trained, and says so
    tuned = report["tuning"]["sasrec"]
    assert tuned["budget_seconds"] == report["training"]["leave-one-out/gensar"]["train_seconds_allotted"]
    assert tuned["trials"] and tuned["settings"] == tuned["trials"][tuned["chosen"]]["settings"]
    assert report["scoring"]["paper"].startswith("exact")
    # the history prior was fitted on validation for each task of each fitted model
    assert {"leave-one-out/gensar/search", "leave-one-out/gensar/rec", "temporal/gensar/search"} <= set(report["history_prior"])
    total = lambda t: t["paper_NDCG@10"] + t["full_NDCG@10"]  # noqa: E731
    assert all(total(p["chosen"]) >= total(p["without"]) for p in report["history_prior"].values())
    assert report["training"]["leave-one-out/gensar"]["prior"]["weights"].keys() == {"search", "rec"}
    out = write_report(report, tmp_path / "quality.json")
    assert json.loads(out.read_text())["dataset"]["items"] == 160
    assert "| rec | loo | paper |" in out.with_suffix(".md").read_text()


def skipped_only_after_the_headline(report) -> None:
    """The joint model's rows exist for both tasks and protocols, and every skipped job
    stands after it in the order."""
    rows = {(r["system"], r["task"], r["protocol"]) for r in report["results"]}
    for task in ("search", "rec"):
        for protocol in ("paper", "full"):
            assert ("gensar", task, protocol) in rows
    order = report["order"]
    names = [f"{s.split(' (')[1].rstrip(')')}/{s.split(' (')[0]}" for s in (x.split(":")[0] for x in report["skipped"])]
    assert all(order.index(n) > order.index("leave-one-out/gensar") for n in names), (order, report["skipped"])


@pytest.mark.timeout(600)
def test_a_tight_budget_still_yields_the_joint_model_on_a_tags_only_dataset(tmp_path):
    """A second shape: tags only, many more search cases than rec cases (each tag burst is
    several searches, one interaction), and a budget that fits the joint model, not all."""
    stats = write_synthetic(tmp_path / "synth", items=300, users=60, events=1500, seed=3)
    ds = load(tmp_path / "synth")
    assert not ds.has_ratings and stats["events"] == 1500

    def build_ids(dataset, train_events, variant, layout, seed):
        from test_model import tiny_world  # a map over this catalogue: K=8, 1 shared + 2 specific
        from identifiers.idmap import IdentifierMap

        _, tiny = tiny_world(n_items=len(dataset.items))
        return IdentifierMap(version=f"synth-{variant}", item_ids=tuple(dataset.items), search_codes=tiny.search_codes,
                             rec_codes=tiny.rec_codes, n_shared=1, codebook_size=8)

    # Every model trains until its time is up (epochs never end it), and six models at their
    # 12 s minimum need more than the whole 75 s: something must be skipped on any machine.
    settings = QualitySettings(budget_minutes=1.25, beam_size=10, min_train_seconds=12, guess_build_seconds=1,
                               guess_prepare_seconds=10, max_cases=150, model=TINY_MODEL, render=TINY_RENDER,
                               train=TrainSettings(epochs=1e6))
    report = run_quality(tmp_path / "synth", settings, Layout.under(tmp_path / "state", tmp_path / "cache"), log=lambda _: None,
                         build_ids=build_ids)
    skipped_only_after_the_headline(report)
    assert report["skipped"], "the budget was meant to be too small for every job"
    assert report["timings"]["total"] < settings.budget_minutes * 60 + 45
    cases = report["dataset"]["cases"]
    assert report["dataset"]["cases_before_cap"]["loo/real"] > report["dataset"]["cases_before_cap"]["loo"]
    assert all(n <= 150 for n in cases.values()) and report["dataset"]["max_cases"] == 150
    # the cap gives every system the same cases
    n = {(r["system"], r["split"], r["protocol"]): r["n"] for r in report["results"] if r["task"] == "search"}
    assert len({v for (system, split, protocol), v in n.items() if split == "loo/real"}) == 1


def test_a_budget_that_cannot_fit_the_joint_model_is_refused_up_front(tmp_path):
    settings = QualitySettings(budget_minutes=1, min_train_seconds=60)
    with pytest.raises(BudgetError, match="cannot fit the joint model"):
        run_quality(tmp_path / "nowhere", settings, Layout.under(tmp_path / "state", tmp_path / "cache"), log=lambda _: None)
    assert not (tmp_path / "state").exists()  # nothing ran, nothing was written
