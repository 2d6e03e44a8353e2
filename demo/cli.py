"""`gensar demo`: the command's options, the summary on the console."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

console = Console()


def main(data: Path | None, quick: bool, reset: bool, state_dir: Path | None) -> int:
    from gensar.settings import Settings
    from demo.report import summary_table
    from demo.run import reset_state, run_demo
    from demo.settings import FULL, QUICK

    settings = Settings()
    root = (state_dir or settings.state_dir / ("demo-quick" if quick else "demo")).resolve()
    if reset:
        reset_state(root)
        console.print(f"state reset: {root}")
    summary = run_demo((data or settings.data_dir).resolve(), root, QUICK if quick else FULL, log=console.print)
    console.print(summary_table(summary))
    console.print(f"report: {root / 'demo' / 'report' / 'report.md'}")
    return 0 if summary.served_adapters else 1
