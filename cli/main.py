"""The `gensar` command (`python -m cli.main`). It sits above the core and every part: it
imports them, nothing imports it (tests/test_architecture.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from gensar import data as datasets
from gensar.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="GenSAR Stream: one generative model for search and recommendation, fresh from Kafka.")
infra_app = typer.Typer(no_args_is_help=True, help="The local real parts: the Kafka broker and its topics.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets in the MovieLens layouts.")
app.add_typer(infra_app, name="infra")
app.add_typer(data_app, name="data")
# Sub-commands of the parts (each part keeps its commands in its own cli.py): one line each.
# --- part commands ---
from streams.cli import app as streams_app; app.add_typer(streams_app, name="streams")  # noqa: E402,E702
from model.cli import app as model_app; app.add_typer(model_app, name="model")  # noqa: E402,E702
from evaluation.cli import app as bench_app; app.add_typer(bench_app, name="bench")  # noqa: E402,E702
from learner.cli import register as register_learner; register_learner(app, model_app)  # noqa: E402,E702
from serving.cli import serve as serve_command; app.command("serve")(serve_command)  # noqa: E402,E702
from identifiers.cli import app as ids_app; app.add_typer(ids_app, name="ids")  # noqa: E402,E702
# --- end part commands ---
console = Console()

DataOption = typer.Option(None, "--data", help="Dataset directory (MovieLens CSV or .dat layout); default: the bundled data.")


def _broker(settings: Settings):
    from infra.broker import KafkaBroker

    return KafkaBroker(settings.state_dir / "kafka", port=settings.broker.port,
                       controller_port=settings.broker.controller_port, version=settings.broker.kafka_version,
                       cache_dir=settings.cache_dir, heap=settings.broker.heap)


def _load(path: Optional[Path], settings: Settings, lenient: bool) -> datasets.Dataset:
    try:
        return datasets.load(path or settings.data_dir, strict=not lenient)
    except datasets.DataError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)


@infra_app.command("fetch")
def infra_fetch() -> None:
    """Resolve the Kafka broker jars from Maven Central (cached in ~/.m2)."""
    from infra.broker import resolve_classpath

    settings = Settings()
    jars = resolve_classpath(settings.broker.kafka_version, settings.cache_dir).split(":")
    console.print(f"Kafka {settings.broker.kafka_version}: {len(jars)} jars ready")


@infra_app.command("up")
def infra_up() -> None:
    """Start the local broker (idempotent) and create our topics."""
    from infra.broker import ensure_topics

    settings = Settings()
    with console.status("starting the Kafka broker"):
        status = _broker(settings).start()
        created = ensure_topics(status.bootstrap, settings.kafka)
    console.print(f"Kafka broker up at {status.bootstrap} (pid {status.pid}, data in {status.home})")
    console.print(f"topics created: {', '.join(created) if created else 'none (all present)'}")


@infra_app.command("topics")
def infra_topics() -> None:
    """Create the missing topics on the configured cluster (GENSAR_KAFKA__BOOTSTRAP_SERVERS),
    e.g. an external one; existing topics are checked, not changed."""
    from infra.broker import ensure_topics

    settings = Settings()
    created = ensure_topics(settings.kafka.bootstrap_servers, settings.kafka)
    console.print(f"topics created on {settings.kafka.bootstrap_servers}: {', '.join(created) if created else 'none (all present)'}")


@infra_app.command("down")
def infra_down() -> None:
    """Stop the local broker cleanly."""
    stopped = _broker(Settings()).stop()
    console.print("Kafka broker stopped" if stopped else "Kafka broker was not running")


@infra_app.command("status")
def infra_status() -> None:
    """Is the local broker running and accepting clients?"""
    status = _broker(Settings()).status()
    state = "[green]running[/green]" if status.running else "[red]not running[/red]"
    console.print(f"Kafka broker {state} at {status.bootstrap} (pid {status.pid}, data in {status.home})")
    raise typer.Exit(0 if status.running else 1)


@data_app.command("stats")
def data_stats(data: Optional[Path] = DataOption, lenient: bool = typer.Option(False, help="Skip and count malformed rows.")) -> None:
    """Load a dataset and print its statistics and split sizes."""
    settings = Settings()
    ds = _load(data, settings, lenient)
    table = Table("statistic", "value")
    for key, value in ds.stats().items():
        table.add_row(key, str(value))
    for split in (datasets.leave_one_out(ds), datasets.temporal_split(ds)):
        table.add_row(f"split {split.name}", str(split.sizes()))
    console.print(table)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Directory to write (missing, empty, or an earlier synthetic dataset)."),
    items: int = typer.Option(10_000, "--items", min=1, help="Items (movies), exactly."),
    users: int = typer.Option(3_993, "--users", min=1, help="Users, exactly; each has at least one event."),
    events: int = typer.Option(93_972, "--events", min=1, help="Tag rows exactly (with --ratings: rating rows)."),
    ratings: bool = typer.Option(False, "--ratings", help="Also write ratings.csv (one rating per user and item; tags on ~1 in 12)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes the same files."),
) -> None:
    """Write a synthetic dataset in the MovieLens CSV layout (latent topics, Zipf-like
    popularity, heavy-tailed users, re-tagging bursts) to test on data of another shape."""
    import time

    from gensar.synthetic import write_synthetic

    started = time.perf_counter()
    try:
        stats = write_synthetic(out, items, users, events, seed=seed, ratings=ratings)
    except (ValueError, FileExistsError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    table = Table("statistic", "value")
    for key, value in stats.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool)
                      and not key.endswith("timestamp") and key != "seed" else str(value))
    console.print(table)
    console.print(f"wrote {out} in {time.perf_counter() - started:.1f}s")


@app.command()
def replay(
    data: Optional[Path] = DataOption,
    speed: Optional[float] = typer.Option(None, help="Event-time speed-up (real time x N); default: as fast as possible."),
    limit: Optional[int] = typer.Option(None, help="Replay only the first N user events (after the catalogue)."),
    lenient: bool = typer.Option(False, help="Skip and count malformed rows instead of stopping."),
) -> None:
    """Produce a dataset's events into Kafka in timestamp order."""
    from gensar.replay import replay as run_replay, replay_order

    settings = Settings()
    ds = _load(data, settings, lenient)
    report = run_replay(replay_order(ds, limit), settings.kafka, speed=speed)
    _print_report(report)


def _print_report(report) -> None:
    table = Table("topic", "events acknowledged")
    for topic, count in sorted(report.sent.items()):
        table.add_row(topic, f"{count:,}")
    console.print(table)
    console.print(f"{report.total:,} events in {report.seconds:.1f}s ({report.events_per_second:,.0f} events/s); "
                  f"event-id checksum {report.checksum[:16]}")


@app.command()
def demo(
    data: Optional[Path] = DataOption,
    quick: bool = typer.Option(False, "--quick", help="A small slice, short budgets: the whole loop in about 3 minutes."),
    reset: bool = typer.Option(False, "--reset", help="Start over: delete the demo's state directory first."),
    state_dir: Optional[Path] = typer.Option(None, help="Where the demo keeps everything; default <state_dir>/demo (or demo-quick)."),
    seed: int = typer.Option(0, help="The identifiers', the base model's and the learner's random draws."),
) -> None:
    """The main job: bootstrap on the first part of the data, then replay the rest as a live
    stream while the system learns online and serves; prequential live vs frozen evaluation,
    a report at the end. A second run resumes from the state directory."""
    from demo.cli import main

    raise typer.Exit(main(data, quick, reset, state_dir, seed))


if __name__ == "__main__":
    app()
