"""Bootstrapping the artifact store: what serving and the learner start from, built once
from a dataset's events: the first identifier map (and its item vectors in Qdrant) and a
base model. Each step is skipped when its artifact is already there, so a re-run (a Job
retried, a release upgraded, a demo resumed) changes nothing; an interrupted training
resumes from its checkpoint (Layout.checkpoint), and the model is written atomically.

The base model trains on all but the last `prior_fraction` of the events (by time); up to
`prior_cases` of those held-out events per task fit its history prior (model.history)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from gensar import data as datasets
from gensar.data import Dataset, UserEvent
from gensar.layout import Layout
from identifiers.build import BuildConfig
from identifiers.idmap import IdentifierMap, MapStore
from model.train import TrainSettings

Log = Callable[[str], None]


def ensure_identifiers(ds: Dataset, events: Sequence[UserEvent], layout: Layout, config: BuildConfig,
                       vectors: bool, log: Log) -> IdentifierMap:
    """The first identifier map of the store; built from `events` when the store has none.
    vectors: also write the item vectors to Qdrant (embedded under the layout, or the server
    GENSAR_QDRANT__URL names)."""
    from identifiers.build import build_identifiers

    store = MapStore(layout.identifier_maps)
    if store.latest():  # bootstrapped before (the learner's updater derives the later versions)
        return store.load(store.versions()[0])
    result = build_identifiers(ds, events, config, layout, progress=True)
    log(f"identifier map {result.idmap.version}: {len(result.idmap):,} items from {len(events):,} events")
    if vectors:
        from identifiers.vectors import ItemVectorStore

        with ItemVectorStore(layout.qdrant) as qdrant:
            written = qdrant.upsert_items(list(result.item_ids), [ds.items[i].title for i in result.item_ids],
                                          result.semantic, result.collaborative, result.warm, result.idmap)
        log(f"Qdrant {qdrant.location}: {written:,} item vectors written")
    return result.idmap


def ensure_base_model(ds: Dataset, events: Sequence[UserEvent], idmap: IdentifierMap, layout: Layout, name: str,
                      train: TrainSettings, prior_fraction: float, prior_cases: int, log: Log) -> Path:
    """The base model `name` of the store, trained on `events` against `idmap` when absent."""
    from evaluation.generative import fit_model_prior
    from model.modeling import ModelSettings
    from model.recipe import train_gensar
    from model.tasks import TaskMix

    target = layout.base_model(name)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fit_prior = prior_fraction > 0 and prior_cases > 0
    cut = int(len(events) * (1 - prior_fraction)) if fit_prior else len(events)
    split = datasets.Split("bootstrap", list(events[:cut]), list(events[cut:]), [])
    gm, renderer, report = train_gensar(ds, split.train, idmap, ModelSettings(), TaskMix(), train,
                                        checkpoint_dir=layout.checkpoint(f"base-{name}"))
    log(f"base model {name}: {report.identifiers:,} identifier targets in {report.seconds:.0f}s, "
        f"loss {report.losses[0]:.3f} -> {report.losses[-1]:.3f}")
    if fit_prior:
        gm.prior, reports = fit_model_prior(gm, renderer, ds, split, prior_cases)
        log(f"history prior on {len(split.valid):,} held-out events: {gm.prior.weights}")
        for task, report in reports.items():
            if "not fitted" in report:
                log(f"history prior for {task} not fitted, the model serves without it: {report['not fitted']}")
    gm.save(target)
    return target
