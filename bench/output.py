"""Where the benchmarks commit their results, and how: each file is written whole
(temporary name, fsync, rename), so a crash leaves the previous results, never half of new ones."""

from __future__ import annotations

import io
import json
from pathlib import Path

from gensar.artifacts import write_file

RESULTS = Path(__file__).parent / "results"


def write_png(fig, path: Path) -> None:
    """A matplotlib Figure as a PNG at `path`, written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    write_file(path, buffer.getvalue())


def write_results(name: str, result: dict, markdown: str | list[str], out_dir: Path = RESULTS) -> None:
    """Write `<out_dir>/<name>.json` (the result) and `<out_dir>/<name>.md` (the markdown, lines
    joined with newlines, ending in exactly one). out_dir: RESULTS, or a test's folder."""
    text = markdown if isinstance(markdown, str) else "\n".join(markdown)
    write_file(out_dir / f"{name}.json", json.dumps(result, indent=1) + "\n")
    write_file(out_dir / f"{name}.md", text.rstrip("\n") + "\n")
