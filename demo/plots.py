"""Prequential HR@10 over the replay as PNG line charts (matplotlib, headless Agg backend):
the status page serves them at /charts/{task}.png and the report writes them next to
report.md."""

from __future__ import annotations

import io

from matplotlib.figure import Figure  # not pyplot: no global state, no display, safe in server threads

STYLES = {"live": {"color": "#1f77b4"}, "frozen": {"color": "#ff7f0e", "linestyle": "--"}}  # dashed: both visible where they agree


def rolling(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def prequential_charts(records, window: int = 50) -> dict[str, bytes]:
    """task -> PNG of rolling HR@10 against wall time since the first prediction, live vs frozen."""
    charts = {}
    t0 = records[0].at if records else 0.0
    for task in ("search", "rec"):
        rows = [r for r in records if r.task == task]
        times = [r.at - t0 for r in rows]
        fig = Figure(figsize=(5.6, 2.4), dpi=100)
        ax = fig.subplots()
        for name, hits in (("live", [r.live_hit for r in rows]), ("frozen", [r.frozen_hit for r in rows])):
            ax.plot(times, rolling(hits, window), label=name, linewidth=1.6, **STYLES[name])
        ax.set_title(f"{task}: prequential HR@10 (rolling {window}, {len(rows)} predictions)", fontsize=10)
        ax.set_xlabel("wall time (s)", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        charts[task] = buffer.getvalue()
    return charts
