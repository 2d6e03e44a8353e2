"""`gensar model ...`: train a GenSAR model. Other parts add their commands to this group
(`from model.cli import app` then `@app.command(...)`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, help="The GenSAR model: training and artifacts.")
console = Console()


@app.command("train")
def train_command(
    out: Path = typer.Option(..., "--out", help="Artifact directory to write (must not exist)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory; default: the bundled data."),
    idmap: Optional[Path] = typer.Option(None, "--idmap", help="An identifier-map version directory; default: build one from the training split."),
    split: str = typer.Option("leave-one-out", help="Training events: 'leave-one-out' or 'temporal' (train part)."),
    minutes: Optional[float] = typer.Option(None, help="Training time budget."),
    epochs: float = typer.Option(3.0, help="Epochs over the task mixture (the budget may stop earlier)."),
    backbone: str = typer.Option("llama", help="llama (from scratch) | pretrained"),
    pretrained_path: Optional[Path] = typer.Option(None, help="Local HF causal-LM checkpoint for --backbone pretrained."),
    device: str = typer.Option("auto", help="auto (cuda when available) | cpu | cuda"),
    seed: int = typer.Option(0),
    threads: int = typer.Option(0, help="torch CPU threads; 0: torch's default (1 is faster on a busy machine)."),
) -> None:
    """Train on a dataset's training split, fit the history prior on its validation events,
    and save the model with its identifier-map version. An interrupted run resumes from
    `<out>.ckpt`."""
    import torch

    from evaluation.generative import fit_model_prior
    from gensar import data as datasets
    from gensar.settings import Settings
    from identifiers.idmap import IdentifierMap
    from model.modeling import ModelSettings
    from model.recipe import train_gensar
    from model.tasks import TaskMix
    from model.train import TrainSettings

    if threads:
        torch.set_num_threads(threads)
    settings = Settings()
    ds = datasets.load(data or settings.data_dir)
    chosen = datasets.leave_one_out(ds) if split == "leave-one-out" else datasets.temporal_split(ds)
    if idmap is not None:
        ids = IdentifierMap.load(idmap)
    else:
        from identifiers.build import build_variant

        from gensar.layout import Layout

        ids = build_variant(ds, chosen.train, "joint", Layout.under(out.with_name(out.name + ".ids")), seed)  # beside the model
    train_settings = TrainSettings(epochs=epochs, max_minutes=minutes, device=device, seed=seed, checkpoint_every=200)
    gm, renderer, report = train_gensar(ds, chosen.train, ids, ModelSettings(backbone=backbone, pretrained_path=pretrained_path),
                                        TaskMix(), train_settings, checkpoint_dir=out.with_name(out.name + ".ckpt"), seed=seed)
    gm.prior, reports = fit_model_prior(gm, renderer, ds, chosen, seed=seed)  # on the split's validation events
    for task, prior in reports.items():
        if "not fitted" in prior:
            console.print(f"history prior for {task} not fitted, the model serves without it: {prior['not fitted']}")
    gm.save(out)
    console.print(f"saved {out} (identifier map {ids.version}); {gm.info['parameters']:,} parameters; "
                  f"{report.identifiers:,} identifier targets in {report.seconds:.0f}s on {report.device} "
                  f"({report.identifiers_per_second:.0f}/s), loss {report.losses[0]:.3f} -> {report.losses[-1]:.3f}")
