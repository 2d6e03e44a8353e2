"""What the demo measured: the summary (live vs frozen per task, freshness, versions and
gate decisions) as a table on the console and a report (markdown + PNG charts + JSON)."""

from __future__ import annotations

import bisect
import statistics
import time
from pathlib import Path

from pydantic import BaseModel
from rich.table import Table

from gensar.artifacts import write_file
from gensar.layout import Layout

from demo.plots import prequential_charts
from demo.prequential import Record, differences, summarize


class VersionRow(BaseModel):
    version: str
    task: str
    status: str
    reason: str
    samples: int
    gate: dict[str, dict[str, float]]
    freshness_s: float | None = None  # newest event learned from -> started serving


class Summary(BaseModel):
    date: str
    wall_seconds: float
    tasks: dict[str, dict[str, float]]  # task -> events, live/frozen HR@10 and NDCG@10
    differences: dict[str, dict[str, float | list[float]]]  # task -> live - frozen, with paired 95% bootstrap CIs
    versions: list[VersionRow]
    promoted: int
    served_adapters: list[str]
    freshness_p50_s: float | None
    records: int

    @classmethod
    def collect(cls, root: Path, layout: Layout, records: list[Record], first_served: dict[str, dict], produced_at: list,
                wall_seconds: float) -> "Summary":
        from learner.registry import LocalArtifactStore, Registry

        registry = Registry(LocalArtifactStore(layout.registry))
        started = {v["version"]: v["loaded_at"] for v in first_served.values()}
        event_times = [p[0] for p in produced_at]
        rows = []
        for manifest, decision in registry.versions():
            lag = None
            last = manifest.window.last_event_time
            if manifest.version in started and last is not None and event_times:
                # the chunk that carried the newest learned event was acknowledged by then
                i = min(bisect.bisect_left(event_times, last), len(produced_at) - 1)
                lag = started[manifest.version] - produced_at[i][1]
            rows.append(VersionRow(version=manifest.version, task=manifest.task, status=decision.status,
                                   reason=decision.reason, samples=manifest.window.samples, gate=manifest.metrics,
                                   freshness_s=lag))
        lags = [r.freshness_s for r in rows if r.freshness_s is not None]
        promoted = sum(1 for d in registry.decisions() if d.status == "promoted")
        return cls(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), wall_seconds=wall_seconds,
                   tasks=summarize(records), differences=differences(records), versions=rows, promoted=promoted,
                   served_adapters=sorted({v["version"] for v in first_served.values()
                                           if not v["version"].startswith("base:")}),
                   freshness_p50_s=statistics.median(lags) if lags else None, records=len(records))


COLUMNS = ("task", "events", "live HR@10", "frozen HR@10", "live - frozen HR@10 [95% CI]", "live NDCG@10",
           "frozen NDCG@10")


def task_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for task, m in summary.tasks.items():
        d = summary.differences.get(task)
        diff = f"{d['HR@10']:+.4f} [{d['HR@10 ci95'][0]:+.4f}, {d['HR@10 ci95'][1]:+.4f}]" if d else "-"
        rows.append([task, str(int(m["events"])), f"{m['live_hr10']:.4f}", f"{m['frozen_hr10']:.4f}", diff,
                     f"{m['live_ndcg10']:.4f}", f"{m['frozen_ndcg10']:.4f}"])
    return rows


def summary_table(summary: Summary) -> Table:
    table = Table(*COLUMNS, title=f"Prequential evaluation ({summary.date}, {summary.wall_seconds / 60:.1f} min)")
    for row in task_rows(summary):
        table.add_row(*row)
    fresh = f"{summary.freshness_p50_s:.1f} s" if summary.freshness_p50_s is not None else "n/a"
    table.caption = (f"versions decided {len(summary.versions)}, promoted {summary.promoted}, adapters served "
                     f"{', '.join(summary.served_adapters) or 'none'}; freshness p50 {fresh}")
    return table


def markdown(summary: Summary) -> str:
    lines = [f"# GenSAR Stream demo report ({summary.date})", "",
             f"Wall time {summary.wall_seconds / 60:.1f} min; {summary.records} prequential predictions.", "",
             "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|",
             *("| " + " | ".join(row) + " |" for row in task_rows(summary))]
    fresh = f"{summary.freshness_p50_s:.1f} s" if summary.freshness_p50_s is not None else "n/a"
    lines += ["", f"Freshness p50 (newest learned event -> serving): {fresh}. Adapters served: "
              f"{', '.join(summary.served_adapters) or 'none'}.", "", "## Versions and gate decisions", "",
              "| version | task | status | samples | freshness s | reason |", "|---|---|---|---|---|---|"]
    for v in summary.versions:
        lag = f"{v.freshness_s:.1f}" if v.freshness_s is not None else "-"
        lines.append(f"| {v.version} | {v.task} | {v.status} | {v.samples} | {lag} | {v.reason} |")
    lines += ["", "## Prequential HR@10 over the replay", "", "![search](search.png)", "", "![rec](rec.png)", ""]
    return "\n".join(lines)


def write_report(directory: Path, summary: Summary, records: list[Record]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    files = {"summary.json": summary.model_dump_json(indent=1).encode(), "report.md": markdown(summary).encode(),
             **{f"{task}.png": png for task, png in prequential_charts(records).items()}}
    for name, content in files.items():
        write_file(directory / name, content)
    return directory / "report.md"
