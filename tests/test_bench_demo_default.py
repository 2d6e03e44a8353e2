"""bench.demo_default: the committed per-seed results come from a default-profile report
of that seed, with every system and live minus each; any other state directory is refused."""

from __future__ import annotations

import numpy as np
import pytest

from bench.demo_default import markdown, results
from demo.prequential import Record, by_system, differences, new_items, summarize, versus_live
from demo.report import Summary, VersionRow
from demo.settings import FULL
from gensar.artifacts import write_file


def state_dir(tmp_path, settings) -> object:
    rng = np.random.default_rng(0)
    rows = [Record(at=float(i), event_time=float(i), task=("search", "rec")[i % 2], live_version="r0001",
                   live_hit=float(rng.random() < 0.5), live_ndcg=0.3, frozen_hit=float(rng.random() < 0.3),
                   frozen_ndcg=0.2, baselines={("own-history+bm25", "item-knn")[i % 2]: [float(i % 5 == 0), 0.1]},
                   new_item=i % 7 == 0) for i in range(200)]
    summary = Summary(date="today", wall_seconds=600, tasks=summarize(rows), differences=differences(rows),
                      systems=by_system(rows), versus_live=versus_live(rows), new_items=new_items(rows),
                      baselines={"popularity_window": 300, "chosen_by": "setting"},
                      versions=[VersionRow(version="r0001", task="joint", status="promoted", reason="better: ...",
                                           samples=10, gate={}, gate_outcome="better")],
                      promoted=1, served_adapters=["r0001"], freshness_p50_s=12.5, records=len(rows))
    write_file(tmp_path / "demo" / "settings.json", settings.model_dump_json(indent=1))
    write_file(tmp_path / "demo" / "report" / "summary.json", summary.model_dump_json())
    return tmp_path


def test_results_hold_every_system_and_live_minus_each_with_intervals(tmp_path):
    r = results(state_dir(tmp_path, FULL.model_copy(update={"seed": 1})), seed=1)
    assert set(r["systems"]["search"]) == {"live", "frozen", "own-history+bm25"}
    assert r["systems"]["rec"]["live"]["n"] == 100
    low, high = r["versus_live"]["rec"]["frozen"]["HR@10 ci95"]
    assert low <= r["versus_live"]["rec"]["frozen"]["HR@10"] <= high and low < high
    assert r["versions_promoted"] == 1 and r["gate_outcomes"] == ["better"] and r["new_items"]["rec"]["new"] > 0
    text = "\n".join(markdown(r))
    assert "| search | own-history+bm25 | 100 |" in text and "| rec | live | 100 |" in text


def test_a_state_directory_of_another_seed_or_profile_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="seed"):
        results(state_dir(tmp_path / "a", FULL), seed=1)
    with pytest.raises(SystemExit, match="eval_every"):
        results(state_dir(tmp_path / "b", FULL.model_copy(update={"eval_every": 5})), seed=0)
