"""Prequential HR@10 over the replay as PNG line charts, one line per system (live, frozen,
each streaming baseline), with every refresh the learner decided as a vertical line
(promoted: green, solid; rejected or not decided: grey, dotted); matplotlib, headless Agg
backend. The status page serves them at /charts/{task}.png and the report writes them next
to report.md."""

from __future__ import annotations

import io

from matplotlib.figure import Figure  # not pyplot: no global state, no display, safe in server threads

from demo.prequential import systems_of

# live solid and frozen dashed (both visible where they agree); the baselines thinner, dotted
STYLES = {"live": {"color": "#1f77b4", "linewidth": 1.6},
          "frozen": {"color": "#ff7f0e", "linestyle": "--", "linewidth": 1.6}}
BASELINE_COLORS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b")


def rolling(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def mark_decisions(ax, decided: list[tuple[float, str]], t0: float) -> None:
    """One vertical line per decided refresh at its wall time (the learner's task adapters
    share one timeline), labelled once per kind for the legend."""
    labelled = set()
    for at, status in sorted(decided):
        kind = "promoted" if status == "promoted" else "rejected"
        style = {"color": "#2ca02c", "linewidth": 0.8, "alpha": 0.7} if kind == "promoted" else \
            {"color": "#7f7f7f", "linestyle": ":", "linewidth": 0.8}
        ax.axvline(at - t0, label=f"refresh {kind}" if kind not in labelled else None, **style)
        labelled.add(kind)


def prequential_charts(records, window: int = 50, decided: list[tuple[float, str]] = ()) -> dict[str, bytes]:
    """task -> PNG of rolling HR@10 against wall time since the first prediction, per system
    (a baseline over the predictions it answered); `decided`: (wall time, registry status)
    of each refresh decision, drawn where it falls inside the replay."""
    charts = {}
    t0 = records[0].at if records else 0.0
    for task in ("search", "rec"):
        rows = [r for r in records if r.task == task]
        times = [r.at - t0 for r in rows]
        fig = Figure(figsize=(5.6, 2.4), dpi=100)
        ax = fig.subplots()
        for i, name in enumerate(systems_of(rows)):
            answered = [(t, m[0]) for t, r in zip(times, rows) if (m := r.metrics(name)) is not None]
            style = STYLES.get(name) or {"color": BASELINE_COLORS[(i - 2) % len(BASELINE_COLORS)], "linestyle": ":",
                                         "linewidth": 1.1}
            ax.plot([t for t, _ in answered], rolling([h for _, h in answered], window), label=name, **style)
        mark_decisions(ax, [(at, status) for at, status in decided if times and t0 <= at <= rows[-1].at], t0)
        ax.set_title(f"{task}: prequential HR@10 (rolling {window}, {len(rows)} predictions)", fontsize=10)
        ax.set_xlabel("wall time (s)", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=6, loc="upper right", ncol=3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        charts[task] = buffer.getvalue()
    return charts
