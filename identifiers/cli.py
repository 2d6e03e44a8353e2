"""`gensar ids`: build identifier maps and inspect them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Dual-purpose item identifiers: build versioned maps, show their statistics.")
console = Console()


@app.command("build")
def build(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset directory (MovieLens CSV or .dat layout); default: the bundled data."),
    config: Optional[Path] = typer.Option(None, "--config", help="BuildConfig as YAML or JSON (unknown keys are an error)."),
    mode: Optional[str] = typer.Option(None, help="Ablation: dual | no_shared | semantic_only | collaborative_only (overrides the config)."),
    split: str = typer.Option("leave-one-out", help="Whose training events build the ids: leave-one-out | temporal."),
    items: Optional[int] = typer.Option(None, help="Only the N items with the most events (a quick build)."),
    epochs: Optional[int] = typer.Option(None, help="RQ-VAE epochs (overrides the config)."),
    version: Optional[str] = typer.Option(None, help="Version name; default: the next vN."),
    qdrant: bool = typer.Option(True, help="Write the item vectors and ids to Qdrant."),
    lenient: bool = typer.Option(False, help="Skip and count malformed rows."),
) -> None:
    """Bootstrap a new identifier map from a dataset's training split."""
    from gensar import data as datasets
    from gensar.layout import Layout
    from gensar.settings import Settings
    from identifiers.build import BuildConfig, build_identifiers, top_items_slice

    settings = Settings()
    try:
        ds = datasets.load(data or settings.data_dir, strict=not lenient)
    except datasets.DataError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    if items:
        ds = top_items_slice(ds, items)
    try:
        cfg = BuildConfig.from_file(config) if config else BuildConfig()
        overrides = {k: v for k, v in {"mode": mode, "epochs": epochs}.items() if v is not None}
        cfg = cfg.model_validate({**cfg.model_dump(), "rqvae": {**cfg.rqvae.model_dump(), **overrides}})
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/red] bad build config: {exc}")
        raise typer.Exit(2)
    splits = {"leave-one-out": datasets.leave_one_out, "temporal": datasets.temporal_split}
    if split not in splits:
        console.print(f"[red]error:[/red] --split must be one of {', '.join(splits)}")
        raise typer.Exit(2)
    train = splits[split](ds).train
    started = time.perf_counter()
    layout = Layout.of(settings)
    result = build_identifiers(ds, train, cfg, layout, version=version)
    console.print(f"map {result.idmap.version}: {len(result.idmap):,} items from {len(train):,} {split} training events "
                  f"in {time.perf_counter() - started:.1f}s -> {result.path}")
    if qdrant:
        from identifiers.vectors import ItemVectorStore

        with console.status("writing item vectors to Qdrant"), ItemVectorStore(layout.qdrant) as store:
            written = store.upsert_items(list(result.item_ids), [ds.items[i].title for i in result.item_ids],
                                         result.semantic, result.collaborative, result.warm, result.idmap)
            console.print(f"Qdrant {store.location} collection {store.collection!r}: {written:,} points written, "
                          f"{store.count():,} in total")
    _print_stats(result.idmap)


@app.command("stats")
def stats(
    version: Optional[str] = typer.Option(None, help="Map version; default: the latest."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Collisions, codebook utilisation and perplexity per level, reconstruction, prefix sharing."""
    from gensar.artifacts import ArtifactError
    from gensar.layout import Layout
    from identifiers.idmap import MapStore

    store = MapStore(Layout.of().identifier_maps)
    try:
        idmap = store.load(version)
    except (FileNotFoundError, ArtifactError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1)
    if as_json:
        from identifiers.stats import map_stats

        console.print_json(json.dumps(map_stats(idmap)))
        return
    _print_stats(idmap)


def _print_stats(idmap) -> None:
    from identifiers.stats import map_stats

    s = map_stats(idmap)
    console.print(f"map {s['version']} (parent {s['parent']}, mode {s['mode']}): {s['items']:,} items, "
                  f"codebook size {s['codebook_size']}, {s['n_shared']} shared level(s); "
                  f"diff vs parent: {s['diff']['added']} added, {s['diff']['recoded']} re-coded")
    tasks = Table("id", "length", "collisions before resolution", "moved", "disambiguation level", "collisions after")
    for task, t in s["tasks"].items():
        before = t["collision_rate_before_resolution"]
        tasks.add_row(task, str(t["id_length"]), "-" if before is None else f"{before:.4%}",
                      str(t["moved_by_resolution"]), str(t["disambiguation_level"]), f"{t['collision_rate']:.4%}")
    console.print(tasks)
    levels = Table("level", "used by", "utilisation", "perplexity")
    for row in s["levels"]:
        levels.add_row(row["level"], row["task"], f"{row['utilisation']:.1%}", f"{row['perplexity']:.1f}")
    console.print(levels)
    if s["reconstruction"]:
        recon = Table("embedding", "reconstruction MSE (standardised)", "cosine(x, x̂)")
        for name, r in s["reconstruction"].items():
            recon.add_row(name, f"{r['mse']:.4f}", f"{r['cosine']:.4f}")
        console.print(recon)
    sharing = Table("sharing", "value")
    for key, value in s["sharing"].items():
        sharing.add_row(key.replace("_", " "), f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(sharing)
