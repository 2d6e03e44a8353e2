"""`gensar learner` (run the learner), `gensar bootstrap` (the artifact store's first map and
base model) and the registry commands added to `gensar model`: list, show, promote, rollback."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _registry(announce: bool = False):
    from gensar.layout import Layout
    from gensar.settings import Settings
    from learner.registry import LocalArtifactStore, Registry, kafka_announcer

    settings = Settings()
    return Registry(LocalArtifactStore(Layout.of(settings).registry), announce=kafka_announcer(settings.kafka) if announce else None)


def run(
    base: Optional[str] = typer.Option(None, help="Base model name in the artifact store (gensar bootstrap); default: the only one there."),
    data: Optional[Path] = typer.Option(None, "--data", help="The catalogue's dataset; default: GENSAR_DATA_DIR."),
    idmap: Optional[Path] = typer.Option(None, help="Identifier-map version directory; default: the base's, from the map store."),
    max_refreshes: Optional[int] = typer.Option(None, help="Stop after this many decided refreshes."),
    idle_exit: Optional[float] = typer.Option(None, help="Stop when no sample arrived for this many seconds."),
) -> None:
    """Run the learner: consume training samples, refresh LoRA adapters, gate, publish."""
    import logging
    import signal
    import threading

    from prometheus_client import start_http_server

    from gensar.data import load
    from gensar.layout import Layout
    from gensar.settings import Settings
    from infra.ray_local import ensure_ray
    from learner import service
    from learner.settings import LearnerSettings

    handler = logging.StreamHandler()  # Ray configures the root logger: ours gets its own handler
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    logging.getLogger("gensar").addHandler(handler)
    logging.getLogger("gensar").setLevel(logging.INFO)
    settings, learner = Settings(), LearnerSettings()
    layout = Layout.of(settings)
    try:
        base = base or layout.base_model(None).name
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc} (gensar bootstrap puts one there)")
        raise typer.Exit(2)
    if learner.metrics_port:
        start_http_server(learner.metrics_port, addr=learner.metrics_host)
    ensure_ray()
    stop = threading.Event()  # SIGINT / SIGTERM (Ctrl-C, a pod's stop): end the loop, abandon a running refresh
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    decided = service.run(layout=layout, kafka=settings.kafka, ds=load(data or settings.data_dir),
                          base_name=base, settings=learner, idmap_path=idmap, max_refreshes=max_refreshes, idle_exit_seconds=idle_exit, stop=stop)
    for d in decided:
        console.print(f"{d.version}: {d.status} — {d.reason}")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def list_versions() -> None:
    """Every adapter version with its latest decision; * marks what serves."""
    registry = _registry()
    serving = {registry.serving(t) for t in ("joint", "search", "rec")}
    table = Table("version", "task", "parent", "status", "decided (UTC)", "samples", "reason")
    for manifest, decision in registry.versions():
        mark = "*" if manifest.version in serving else ""
        table.add_row(mark + manifest.version, manifest.task, manifest.parent or "-", decision.status,
                      _when(decision.timestamp), str(manifest.window.samples), decision.reason[:80])
    console.print(table)


def show(version: str) -> None:
    """A version's manifest and its decision history."""
    from learner.registry import RegistryError

    registry = _registry()
    try:
        manifest = registry.manifest(version)
    except RegistryError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    console.print_json(json.dumps({"manifest": manifest.model_dump(mode="json"),
                                   "decisions": [d.model_dump() for d in registry.decisions() if d.version == version]}))


def promote(version: str, reason: str = typer.Option("operator promotion", help="Why, for the record.")) -> None:
    """Serve a version now (announced on the model-versions topic)."""
    announcement = _registry(announce=True).promote(version, reason)
    console.print(f"{announcement.version} promoted for task {announcement.task}")


def rollback(task: str = typer.Option("joint", help="joint | search | rec"),
             reason: str = typer.Option("operator rollback", help="Why, for the record.")) -> None:
    """Take the serving version out and re-announce the one before it."""
    from learner.registry import RegistryError

    try:
        announcement = _registry(announce=True).rollback(task, reason)
    except RegistryError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    if announcement.status == "rolled-back":  # it was the only promotion
        fallback = "the base model" if task == "joint" else "the joint versions (else the base model)"
        console.print(f"rolled back: {announcement.version} is out; {task} falls back to {fallback}")
    else:
        console.print(f"rolled back: {announcement.version} serves {task} again ({announcement.reason})")


def bootstrap(
    data: Optional[Path] = typer.Option(None, "--data", help="The dataset to start from (MovieLens layout); default: GENSAR_DATA_DIR."),
    name: str = typer.Option("base", help="The base model's name in the artifact store."),
    minutes: float = typer.Option(30.0, min=0.01, help="The base model's training budget."),
    epochs: float = typer.Option(3.0, min=0.01, help="Epochs over the task mixture (the budget may stop earlier)."),
    rqvae_epochs: Optional[int] = typer.Option(None, min=1, help="RQ-VAE epochs of the identifier map; default: BuildConfig's."),
    qdrant: bool = typer.Option(True, help="Write the item vectors to Qdrant (GENSAR_QDRANT__URL, else embedded)."),
    prior_fraction: float = typer.Option(0.1, min=0, max=0.99, help="The latest events held out to fit the history prior."),
    prior_cases: int = typer.Option(200, min=0, help="Held-out events per task the prior is fitted on."),
    wait: Optional[float] = typer.Option(None, min=0, help="Build nothing: wait up to this many seconds until the store holds "
                                                             "the base model and a map (a pod's init container), exit 1 if not."),
) -> None:
    """Put what serving and the learner start from into the artifact store, once: the first
    identifier map (and item vectors) and a base model. A step whose artifact is there is
    skipped, so running it again (a retried Job, an upgrade) changes nothing."""
    import time

    from gensar import data as datasets
    from gensar.layout import Layout
    from gensar.settings import Settings
    from identifiers.build import BuildConfig
    from identifiers.idmap import MapStore
    from learner.bootstrap import ensure_base_model, ensure_identifiers
    from model.train import TrainSettings

    settings = Settings()
    layout = Layout.of(settings)
    if wait is not None:
        deadline = time.monotonic() + wait
        while not (layout.base_model(name).is_dir() and MapStore(layout.identifier_maps).latest()):
            if time.monotonic() > deadline:
                console.print(f"[red]error:[/red] no base model {name!r} and identifier map in {layout.artifacts} "
                              f"after {wait:.0f}s (is the bootstrap Job running?)")
                raise typer.Exit(1)
            time.sleep(2)
        console.print(f"base model {name!r} and identifier map present in {layout.artifacts}")
        return
    try:
        ds = datasets.load(data or settings.data_dir)
    except datasets.DataError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    config = BuildConfig()
    if rqvae_epochs is not None:
        config = config.model_copy(update={"rqvae": config.rqvae.model_copy(
            update={"epochs": rqvae_epochs, "warmup_epochs": min(config.rqvae.warmup_epochs, rqvae_epochs // 2)})})
    events = ds.user_events()
    idmap = ensure_identifiers(ds, events, layout, config, qdrant, console.print)
    target = ensure_base_model(ds, events, idmap, layout, name,
                               TrainSettings(epochs=epochs, max_minutes=minutes, checkpoint_every=200),
                               prior_fraction, prior_cases, console.print)
    console.print(f"bootstrapped {layout.artifacts}: identifier map {idmap.version}, base model {target.name}")


def register(app: typer.Typer, model_app: typer.Typer) -> None:
    app.command("learner")(run)
    app.command("bootstrap")(bootstrap)
    model_app.command("list")(list_versions)
    model_app.command("show")(show)
    model_app.command("promote")(promote)
    model_app.command("rollback")(rollback)
