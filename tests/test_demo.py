"""`gensar demo --quick` end to end: the real broker, Ray, the stream worker, the learner
and the Serve app, on a fresh state directory. The summary has its structure, at least one
adapter was promoted and served, the report is written; while the system still serves, the
status page is checked in headless Chromium (it loads, the charts render, a search and a
recommendation return results)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

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


@pytest.mark.timeout(1200)
def test_quick_demo_end_to_end(bundled_data, tmp_path):
    root = tmp_path / "state"
    seen: dict[str, str] = {}

    def look_at_status_page(url: str) -> None:
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

    dom = seen["dom"]
    assert dom.count('data-width="560"') == 2  # both charts' PNGs loaded and decoded by the browser
    assert dom.count('class="result"') >= 2 * 10  # the search and the recommendation answered
    assert "answered by" in dom and (tmp_path / "status.png").stat().st_size > 10_000
