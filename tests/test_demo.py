"""`gensar demo --quick` end to end: the real broker, Ray, the stream worker, the learner
and the Serve app, on a fresh state directory. The summary has its structure, at least one
adapter was promoted and served, the report is written; while the system still serves, the
status page is checked in headless Chromium (it loads, the charts render, a search and a
recommendation return results), and a person's check of search: each genre word, asked
with no user, is answered with items of that genre at least as often as dense MiniLM
retrieval over the same catalogue answers it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from demo.run import run_demo
from demo.settings import QUICK

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is missing: `apt-get install -y chromium` (the Makefile's test target installs it)")
    return found


def browse(url: str, profile: Path, *extra: str) -> str:
    result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
                             "--window-size=1200,1500", *extra, url], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def catalogue_genres(root: Path) -> list[str]:
    from gensar.data import load

    ds = load(root / "demo" / "data")
    return sorted({g for item in ds.items.values() for g in item.fields.get("genres", "").split(", ")} - {""})


def genre_shares(root: Path, answers: dict[str, list[str]], cache: Path) -> tuple[float, float]:
    """Mean share, over the genre queries, of the top 10 that carry the genre: the served
    answers, and dense MiniLM retrieval (title + genres) over the demo's catalogue."""
    from evaluation.baselines import DenseSearch
    from evaluation.protocols import Case
    from gensar.data import load
    from identifiers.semantic import SemanticEncoder, item_text

    ds = load(root / "demo" / "data")
    ids = list(ds.items)
    has = lambda item, g: g in ds.items[item].fields.get("genres", "").split(", ")  # noqa: E731
    dense = DenseSearch([item_text(ds.items[i]) for i in ids], SemanticEncoder(cache, progress=False))
    genres = list(answers)
    cases = [Case(g, "search", "genre", "", ids[0], g.lower(), ()) for g in genres]
    top = np.argsort(-dense.score(cases), axis=1, kind="stable")[:, :10]
    ours = np.mean([np.mean([has(i, g) for i in answers[g][:10]]) if answers[g] else 0.0 for g in genres])
    theirs = np.mean([np.mean([has(ids[j], g) for j in row]) for g, row in zip(genres, top)])
    return float(ours), float(theirs)


@pytest.mark.timeout(1200)
def test_quick_demo_end_to_end(bundled_data, tmp_path):
    root = tmp_path / "state"
    seen: dict[str, str] = {}

    def look_at_status_page(url: str) -> None:
        seen["genre_answers"] = {g: [i["id"] for i in httpx.get(f"{url}/api/search", params={"q": g.lower()},
                                                                 timeout=60).json()["items"]]
                                 for g in catalogue_genres(root)}
        page = f"{url}/?q=comedy&user=1"
        seen["dom"] = browse(page, tmp_path / "chromium", "--dump-dom")
        browse(page, tmp_path / "chromium-shot", f"--screenshot={tmp_path / 'status.png'}")

    summary = run_demo(bundled_data, root, QUICK, on_replayed=look_at_status_page)

    assert set(summary.tasks) == {"search", "rec"}
    for metrics in summary.tasks.values():
        assert metrics["events"] > 0
        assert set(metrics) == {"events", "live_hr10", "frozen_hr10", "live_ndcg10", "frozen_ndcg10"}
        assert all(0 <= metrics[k] <= 1 for k in metrics if k != "events")
    for task, d in summary.differences.items():  # live - frozen, paired over the same events
        m = summary.tasks[task]
        assert abs(d["HR@10"] - (m["live_hr10"] - m["frozen_hr10"])) < 1e-9
        assert d["HR@10 ci95"][0] <= d["HR@10"] <= d["HR@10 ci95"][1]
    assert summary.promoted >= 1 and summary.served_adapters, summary.model_dump()
    assert any(v.freshness_s is not None and v.freshness_s > 0 for v in summary.versions)
    report = root / "demo" / "report"
    assert json.loads((report / "summary.json").read_text())["promoted"] == summary.promoted
    assert "| search |" in (report / "report.md").read_text() and (report / "rec.png").read_bytes().startswith(b"\x89PNG")

    ours, dense = genre_shares(root, seen["genre_answers"], tmp_path / "cache")
    assert ours >= dense, f"genre share of the top 10: served search {ours:.3f}, dense MiniLM {dense:.3f}"

    dom = seen["dom"]
    assert dom.count('data-width="560"') == 2  # both charts' PNGs loaded and decoded by the browser
    assert dom.count('class="result"') >= 2 * 10  # the search and the recommendation answered
    assert "answered by" in dom and (tmp_path / "status.png").stat().st_size > 10_000
