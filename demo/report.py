"""What the demo measured: the summary (live vs frozen and every streaming baseline per task,
freshness, versions and gate decisions) as a table on the console and a report (markdown +
PNG charts + JSON)."""

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
from demo.prequential import Record, by_system, differences, new_items, summarize, versus_live


class VersionRow(BaseModel):
    version: str
    task: str
    status: str
    reason: str
    samples: int
    gate: dict[str, dict[str, float]]  # the manifest's metrics: "candidate:<task>" / "serving:<task>" -> n, means
    gate_outcome: str | None = None  # which case of learner.refresh.gate decided (None: never gated)
    gate_tasks: dict[str, dict] = {}  # task -> n, verdict, candidate - serving and its paired 95% interval
    freshness_s: float | None = None  # newest event learned from -> started serving
    prior: dict | None = None  # the history prior it serves with (learner.registry.PriorRecord); None: the base's
    decided_at: float | None = None  # wall time of the registry's decision


class Summary(BaseModel):
    date: str
    wall_seconds: float
    tasks: dict[str, dict[str, float]]  # task -> events, live/frozen HR@10 and NDCG@10
    differences: dict[str, dict[str, float | list[float]]]  # task -> live - frozen, with paired 95% bootstrap CIs
    systems: dict[str, dict[str, dict[str, int | float]]] = {}  # task -> system -> n, HR@10, NDCG@10
    versus_live: dict[str, dict[str, dict[str, int | float | list[float]]]] = {}  # task -> system -> n, live - it, CIs
    baselines: dict = {}  # how the streaming baselines were set (the popularity window and how it was chosen)
    new_items: dict[str, dict] = {}  # task -> cases whose target was first seen in the stream (prequential.new_items)
    versions: list[VersionRow]
    promoted: int
    served_adapters: list[str]
    freshness_p50_s: float | None
    records: int

    @classmethod
    def collect(cls, root: Path, layout: Layout, records: list[Record], first_served: dict[str, dict], produced_at: list,
                wall_seconds: float, baselines: dict | None = None) -> "Summary":
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
            gated = manifest.gate
            rows.append(VersionRow(version=manifest.version, task=manifest.task, status=decision.status,
                                   reason=decision.reason, samples=manifest.window.samples, gate=manifest.metrics,
                                   gate_outcome=gated.outcome if gated else None,
                                   gate_tasks={t: c.model_dump() for t, c in gated.tasks.items()} if gated else {},
                                   freshness_s=lag, prior=manifest.prior.model_dump() if manifest.prior else None,
                                   decided_at=decision.timestamp))
        lags = [r.freshness_s for r in rows if r.freshness_s is not None]
        promoted = sum(1 for d in registry.decisions() if d.status == "promoted")
        return cls(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), wall_seconds=wall_seconds,
                   tasks=summarize(records), differences=differences(records), systems=by_system(records),
                   versus_live=versus_live(records), baselines=baselines or {}, new_items=new_items(records),
                   versions=rows, promoted=promoted,
                   served_adapters=sorted({v["version"] for v in first_served.values()
                                           if not v["version"].startswith("base:")}),
                   freshness_p50_s=statistics.median(lags) if lags else None, records=len(records))


COLUMNS = ("task", "events", "live HR@10", "frozen HR@10", "live - frozen HR@10 [95% CI]", "live NDCG@10",
           "frozen NDCG@10")


def interval(d: dict, metric: str) -> str:
    return f"{d[metric]:+.4f} [{d[metric + ' ci95'][0]:+.4f}, {d[metric + ' ci95'][1]:+.4f}]"


def task_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for task, m in summary.tasks.items():
        d = summary.differences.get(task)
        diff = interval(d, "HR@10") if d else "-"
        rows.append([task, str(int(m["events"])), f"{m['live_hr10']:.4f}", f"{m['frozen_hr10']:.4f}", diff,
                     f"{m['live_ndcg10']:.4f}", f"{m['frozen_ndcg10']:.4f}"])
    return rows


SYSTEM_COLUMNS = ("task", "system", "n", "HR@10", "NDCG@10", "live - system HR@10 [95% CI]",
                  "live - system NDCG@10 [95% CI]")


def system_rows(summary: Summary) -> list[list[str]]:
    """Every system per task, with live minus it (paired over the events both answered)."""
    rows = []
    for task, systems in summary.systems.items():
        for system, m in systems.items():
            d = summary.versus_live.get(task, {}).get(system)
            rows.append([task, system, str(int(m["n"])), f"{m['HR@10']:.4f}", f"{m['NDCG@10']:.4f}",
                         interval(d, "HR@10") if d else "-", interval(d, "NDCG@10") if d else "-"])
    return rows


NEW_ITEM_COLUMNS = ("task", "cases", "new-item cases", "share", "system", "HR@10 on them", "found")


def new_item_rows(summary: Summary) -> list[list[str]]:
    rows = []
    for task, t in summary.new_items.items():
        for system, m in t["systems"].items():
            rows.append([task, str(t["cases"]), str(t["new"]), f"{t['share']:.1%}", system, f"{m['HR@10']:.4f}",
                         f"{m['found']:.1f}"])
        if not t["systems"]:
            rows.append([task, str(t["cases"]), "0", "0.0%", "-", "-", "-"])
    return rows


def summary_table(summary: Summary) -> Table:
    """The console's table: every system per task, live minus each with its paired interval."""
    table = Table(*SYSTEM_COLUMNS, title=f"Prequential evaluation ({summary.date}, {summary.wall_seconds / 60:.1f} min)")
    for row in system_rows(summary):
        table.add_row(*row)
    fresh = f"{summary.freshness_p50_s:.1f} s" if summary.freshness_p50_s is not None else "n/a"
    table.caption = (f"versions decided {len(summary.versions)}, promoted {summary.promoted}, adapters served "
                     f"{', '.join(summary.served_adapters) or 'none'}; freshness p50 {fresh}")
    return table


def md_table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(summary: Summary) -> str:
    lines = [f"# GenSAR Stream demo report ({summary.date})", "",
             f"Wall time {summary.wall_seconds / 60:.1f} min; {summary.records} prequential predictions.", "",
             *md_table(COLUMNS, task_rows(summary)), "", "## Every system", "",
             "The same events in the same order, each answered from the same history over the whole catalogue "
             "before any system learned from it; live minus each system with a paired 95% bootstrap interval "
             "over the events both answered.", "", *md_table(SYSTEM_COLUMNS, system_rows(summary))]
    if summary.new_items:
        lines += ["", "## Items first seen in the stream", "",
                  "Cases whose target no bootstrap event has: the frozen model never trained on it; the live "
                  "system can find it only after a refresh that saw it (its identifier comes from the "
                  "collaborative updater). found: expected hits in the top 10.", "",
                  *md_table(NEW_ITEM_COLUMNS, new_item_rows(summary))]
    if window := summary.baselines.get("popularity_window"):
        lines += ["", f"popularity-window: the last {window} interactions ({summary.baselines['chosen_by']})."]
    fresh = f"{summary.freshness_p50_s:.1f} s" if summary.freshness_p50_s is not None else "n/a"
    lines += ["", f"Freshness p50 (newest learned event -> serving): {fresh}. Adapters served: "
              f"{', '.join(summary.served_adapters) or 'none'}.", "", "## Versions and gate decisions", "",
              "gate: the case of the gate that decided (learner.refresh.gate); the reason gives candidate - "
              "serving HR@10 with its paired 95% interval per task. prior: the history prior's weights per "
              "task (per searched, per interacted, recency), refitted on that many stream cases (kept: too "
              "few, the serving version's).", "",
              *md_table(("version", "task", "status", "samples", "freshness s", "gate", "prior", "reason"),
                        [[v.version, v.task, v.status, str(v.samples),
                          f"{v.freshness_s:.1f}" if v.freshness_s is not None else "-", v.gate_outcome or "-",
                          prior_cell(v.prior), v.reason] for v in summary.versions]),
              "", "## Prequential HR@10 over the replay", "", "![search](search.png)", "", "![rec](rec.png)", ""]
    return "\n".join(lines)


def prior_cell(prior: dict | None) -> str:
    """"search (4, 2, 256) on 600; rec ..." for a version's PriorRecord."""
    if prior is None:
        return "base"
    return "; ".join(f"{task} ({', '.join(f'{w:g}' for w in weights)}) "
                     + (f"on {prior['cases'][task]}" if prior["cases"].get(task) else "kept")
                     for task, weights in sorted(prior["weights"].items()))


def write_report(directory: Path, summary: Summary, records: list[Record]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    files = {"summary.json": summary.model_dump_json(indent=1).encode(), "report.md": markdown(summary).encode(),
             **{f"{task}.png": png for task, png in prequential_charts(
                 records, decided=[(v.decided_at, v.status) for v in summary.versions if v.decided_at]).items()}}
    for name, content in files.items():
        write_file(directory / name, content)
    return directory / "report.md"
