"""Line charts as self-contained SVG (no plotting library, no CDN): the status page and the
report draw the same charts."""

from __future__ import annotations

from html import escape

COLOURS = {"live": "#1f77b4", "frozen": "#ff7f0e"}
DASHES = {"frozen": "5,3"}  # dashed: where live and frozen agree, both stay visible


def rolling(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], width: int = 520, height: int = 220,
               y_label: str = "") -> str:
    """series: name -> [(x, y)]; x is seconds since the start, y in [0, 1]."""
    pad_l, pad_r, pad_t, pad_b = 44, 10, 24, 30
    xs = [x for points in series.values() for x, _ in points] or [0.0, 1.0]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1e-9)
    ys = [y for points in series.values() for _, y in points] or [1.0]
    y1 = max(max(ys), 1e-3) * 1.1
    sx = lambda x: pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)  # noqa: E731
    sy = lambda y: height - pad_b - y / y1 * (height - pad_t - pad_b)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<text x="{pad_l}" y="14" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="#888"/>',
             f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="#888"/>',
             f'<text x="{pad_l - 4}" y="{sy(0) + 4:.0f}" text-anchor="end">0</text>',
             f'<text x="{pad_l - 4}" y="{sy(y1 / 1.1) + 4:.0f}" text-anchor="end">{y1 / 1.1:.2f}</text>',
             f'<text x="{width - pad_r}" y="{height - 8}" text-anchor="end">{x1 - x0:.0f} s</text>',
             f'<text x="{pad_l}" y="{height - 8}">{escape(y_label)}</text>']
    for i, (name, points) in enumerate(series.items()):
        colour = COLOURS.get(name, "#2ca02c")
        if points:
            path = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for j, (x, y) in enumerate(points))
            dash = f' stroke-dasharray="{DASHES[name]}"' if name in DASHES else ""
            parts.append(f'<path class="series" d="{path}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
        parts.append(f'<text x="{width - pad_r - 150 + 70 * i}" y="14" fill="{colour}">■ {escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def prequential_charts(records, window: int = 50) -> dict[str, str]:
    """Rolling HR@10 over the replay, live vs frozen, one chart per task."""
    charts = {}
    t0 = records[0].at if records else 0.0
    for task in ("search", "rec"):
        rows = [r for r in records if r.task == task]
        times = [r.at - t0 for r in rows]
        series = {"live": list(zip(times, rolling([r.live_hit for r in rows], window))),
                  "frozen": list(zip(times, rolling([r.frozen_hit for r in rows], window)))}
        charts[task] = line_chart(f"{task}: prequential HR@10 (rolling {window})", series, y_label="wall time")
    return charts
