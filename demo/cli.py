"""`gensar demo`: the command's options, the summary on the console."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

console = Console()


def main(data: Path | None, quick: bool, reset: bool, state_dir: Path | None, seed: int = 0) -> int:
    from gensar.settings import Settings
    from demo.report import summary_table
    from demo.run import StateMismatch, reset_state, run_demo
    from demo.settings import FULL, QUICK

    settings = Settings()
    root = (state_dir or settings.state_dir / ("demo-quick" if quick else "demo")).resolve()
    if reset:
        reset_state(root)
        console.print(f"state reset: {root}")
    profile = (QUICK if quick else FULL).model_copy(update={"seed": seed})
    try:
        summary = run_demo((data or settings.data_dir).resolve(), root, profile, log=console.print)
    except StateMismatch as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    console.print(summary_table(summary))
    console.print(f"report: {root / 'demo' / 'report' / 'report.md'}")
    return 0 if summary.served_adapters else 1
