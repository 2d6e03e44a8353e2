"""`gensar bench quality`: the quality benchmark on any dataset in the supported layouts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="Benchmarks.")
console = Console()


@app.command("quality")
def quality(
    out: Path = typer.Option(..., "--out", help="Results JSON (a markdown table is written beside it, .md)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory; default: the bundled data."),
    budget_minutes: float = typer.Option(25.0, "--budget-minutes", help="Wall-clock budget for the whole run."),
    seed: int = typer.Option(0),
    threads: int = typer.Option(1, help="torch CPU threads (1 is fastest on a busy shared machine)."),
    beam_size: int = typer.Option(30, help="Beams of the constrained decoding (paper: 30)."),
    ablations: bool = typer.Option(True, "--ablations/--no-ablations", help="Train and score the identifier ablations."),
    temporal: bool = typer.Option(True, "--temporal/--no-temporal", help="Also the temporal split (real queries after a cut-off)."),
    max_cases: int = typer.Option(2000, "--max-cases", help="Cases per case group; larger groups are sampled (seeded, the same for every system)."),
) -> None:
    """Identifiers, training, our model, baselines and ablations, both protocols, within the budget."""
    from evaluation.quality import BudgetError, QualitySettings, run_quality, write_report
    from gensar.layout import Layout
    from gensar.settings import Settings

    settings = Settings()
    quality_settings = QualitySettings(budget_minutes=budget_minutes, seed=seed, beam_size=beam_size,
                                       id_ablations=ablations, temporal=temporal, torch_threads=threads,
                                       max_cases=max_cases)
    try:
        report = run_quality(data or settings.data_dir, quality_settings, Layout.of(settings),
                             log=lambda line: console.log(line))
    except BudgetError as exc:  # no report without the joint model
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    write_report(report, out)
    console.print(out.with_suffix(".md").read_text())
    console.print(f"wrote {out} and {out.with_suffix('.md')}")
