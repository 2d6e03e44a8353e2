"""The demo's world before the stream starts: its dataset (optionally a dense slice), the
identifier map and the base model, both from the first part of the data by time only.

Each step is skipped when its artifact is already in the state directory (resume)."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from gensar import data as datasets
from gensar.data import Dataset, UserEvent
from gensar.layout import Layout
from identifiers.build import top_items_slice
from identifiers.idmap import IdentifierMap

from demo.settings import DemoSettings

BASE_NAME = "demo"


@dataclass
class World:
    data_dir: Path  # what the learner and the serving catalogue read
    ds: Dataset
    bootstrap: list[UserEvent]  # first part by time: trains identifiers and the base model
    stream: list[UserEvent]  # the rest, replayed live


def write_movielens(ds: Dataset, target: Path) -> Path:
    """`ds` in the ml-latest-small CSV layout (so every part can load it by path); atomic."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("movieId", "title", "genres"))
        for item in ds.items.values():
            w.writerow((item.item_id, item.title, item.fields.get("genres", "").replace(", ", "|")))
    if ds.has_ratings:
        with open(tmp / "ratings.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("userId", "movieId", "rating", "timestamp"))
            for e in ds.interactions:
                w.writerow((e.user_id, e.item_id, e.value, int(e.timestamp)))
    with open(tmp / "tags.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("userId", "movieId", "tag", "timestamp"))
        for e in ds.searches:
            w.writerow((e.user_id, e.clicked_items[0], e.query, int(e.timestamp)))
    for name in os.listdir(tmp):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def prepare_world(source: Path, root: Path, settings: DemoSettings) -> World:
    """The demo's dataset (the source itself, or its `items` most active items written under
    the state directory) and its time cut."""
    if settings.items:
        data_dir = root / "demo" / "data"
        if not (data_dir / "movies.csv").exists():
            write_movielens(top_items_slice(datasets.load(source), settings.items), data_dir)
    else:
        data_dir = source
    ds = datasets.load(data_dir)
    events = ds.user_events()
    cut = datasets._second_boundary(events, int(len(events) * settings.bootstrap_fraction))
    stream = events[cut:]
    if settings.replay_events:
        stream = stream[: settings.replay_events]
    return World(data_dir, ds, events[:cut], stream)


def ensure_identifiers(world: World, layout: Layout, settings: DemoSettings, log) -> IdentifierMap:
    from identifiers.build import BuildConfig
    from identifiers.rqvae import RQVAEConfig
    from learner.bootstrap import ensure_identifiers as ensure

    config = BuildConfig(rqvae=RQVAEConfig(epochs=settings.rqvae_epochs, seed=settings.seed,
                                           warmup_epochs=min(10, settings.rqvae_epochs // 2)))
    return ensure(world.ds, world.bootstrap, layout, config, settings.qdrant, log)


def ensure_base_model(world: World, idmap: IdentifierMap, layout: Layout, settings: DemoSettings, log) -> Path:
    from learner.bootstrap import ensure_base_model as ensure
    from model.train import TrainSettings

    train = TrainSettings(epochs=settings.train_epochs, max_minutes=settings.train_minutes, checkpoint_every=200,
                          seed=settings.seed)
    return ensure(world.ds, world.bootstrap, idmap, layout, BASE_NAME, train, settings.prior_fraction,
                  settings.prior_cases, log)
