"""The bootstrap: a dataset and its TRAINING events -> a versioned identifier map.

    texts        item_texts(dataset, train_events)       title, genres, training-split tags
    semantic     MiniLM(texts)                          (n, 384), cached on disk by content hash
    item2vec     Item2Vec.fit(users' training sequences) (n, 64); cold items borrow the
                                                        vectors of their semantic neighbours
    rqvae        train_rqvae(semantic, collaborative)
    codes        Sinkhorn-balanced last level, then collisions.resolve per task
    saved        Layout.identifier_maps/<version>/    the IdentifierMap
                 Layout.collaborative_state(version)  the item2vec it was built from (the
                                                      stream goes on from it)

Only the events passed in are read: pass the training split, never held-out events.

Ablations are one config flag, `BuildConfig.rqvae.mode`:
    "dual"                GenSAR: shared levels + task-specific levels (default)
    "no_shared"           no shared codebooks: each id is its task's specific codes only
    "semantic_only"       ids from the text embedding alone (search id == rec id)
    "collaborative_only"  ids from the interaction embedding alone (search id == rec id)
e.g. `BuildConfig(rqvae=RQVAEConfig(mode="semantic_only"))`, or in a YAML/JSON config file
`{"rqvae": {"mode": "semantic_only"}}` for `gensar ids build --config FILE`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from gensar.data import Dataset, target_item
from gensar.layout import Layout
from identifiers.collaborative import CollaborativeConfig, Item2Vec, fill_cold, user_sequences
from identifiers.collisions import resolve
from identifiers.idmap import IdentifierMap, MapStore
from identifiers.rqvae import RQVAE, RQVAEConfig, train_rqvae
from identifiers.semantic import SemanticConfig, SemanticEncoder, item_texts
from identifiers.settings import IdentifierSettings


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    semantic: SemanticConfig = SemanticConfig()
    collaborative: CollaborativeConfig = CollaborativeConfig()
    rqvae: RQVAEConfig = RQVAEConfig()
    cold_start_neighbours: int = Field(10, ge=1)  # semantic neighbours a cold item borrows its collaborative vector from

    @classmethod
    def from_file(cls, path: Path) -> "BuildConfig":
        text = Path(path).read_text()
        return cls.model_validate(json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text) or {})


@dataclass
class BuildResult:
    idmap: IdentifierMap
    texts: dict[str, str]  # item -> the text that was embedded
    semantic: np.ndarray  # (n, 384) rows in idmap.item_ids order
    collaborative: np.ndarray  # (n, d) what the RQ-VAE saw (cold rows filled from semantic neighbours)
    warm: np.ndarray  # (n,) bool: the collaborative vector comes from the item's own interactions
    item2vec: Item2Vec
    rqvae: RQVAE
    history: list[dict]  # RQ-VAE training curve
    metrics: dict  # also stored in the map's manifest
    path: Path | None  # the saved map version, if saved

    @property
    def item_ids(self) -> tuple[str, ...]:
        return self.idmap.item_ids


def build_identifiers(dataset: Dataset, train_events: Sequence, config: BuildConfig = BuildConfig(),
                      layout: Layout | None = None, *, version: str | None = None,
                      settings: IdentifierSettings | None = None, progress: bool = True, save: bool = True) -> BuildResult:
    """Bootstrap identifiers for every item of `dataset` from `train_events` only."""
    settings = settings or IdentifierSettings()
    with torch_threads(settings.torch_threads):
        return _build(dataset, train_events, config, layout or Layout.of(), version, settings, progress, save)


# The variants the quality benchmark compares, by name: the RQ-VAE mode of each.
VARIANTS = {"joint": "dual", "semantic-only": "semantic_only", "collaborative-only": "collaborative_only",
            "no-shared": "no_shared"}


def build_variant(dataset: Dataset, train_events: Sequence, variant: str, layout: Layout, seed: int = 0,
                  rqvae_epochs: int | None = None):
    """The identifier map of a named variant (VARIANTS), built from the training events only."""
    epochs = {"epochs": rqvae_epochs} if rqvae_epochs else {}
    config = BuildConfig(rqvae=RQVAEConfig(mode=VARIANTS[variant], seed=seed, **epochs))
    return build_identifiers(dataset, train_events, config, layout, progress=False).idmap


@contextmanager
def torch_threads(n: int):
    """Run with n torch CPU threads (0: unchanged), restoring the previous count after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _build(dataset: Dataset, train_events: Sequence, config: BuildConfig, layout: Layout, version: str | None,
           settings: IdentifierSettings, progress: bool, save: bool) -> BuildResult:
    store = MapStore(layout.identifier_maps)
    version = version or store.next_version()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    item_ids = list(dataset.items)
    texts = item_texts(dataset, train_events, config.semantic)
    encoder = SemanticEncoder(layout.embeddings, settings.device, settings.encode_batch_size, progress)
    try:
        semantic = encoder.encode([texts[i] for i in item_ids])  # (n, 384)
    finally:
        encoder.close()
    lap("semantic")

    item2vec = Item2Vec.fit(user_sequences(train_events), config.collaborative, items=item_ids)
    warm = item2vec.warm(item_ids)
    collaborative = fill_cold(semantic, item2vec.vectors(item_ids), warm, config.cold_start_neighbours)  # (n, d)
    lap("collaborative")

    model, history = train_rqvae(config.rqvae, semantic, collaborative, settings.device, progress)
    lap("rqvae")

    levels = model.assign(semantic, collaborative, balanced=True)  # Sinkhorn over the whole catalogue
    resolved, collisions = {}, {}
    for task in ("search", "rec") if len(config.rqvae.tasks) == 2 else ("search",):
        r = resolve(levels.codes[task].cpu().numpy(), levels.last_distances[task].cpu().numpy(), config.rqvae.codebook_size)
        resolved[task] = r.codes
        collisions[task] = {"rate_before": r.collision_rate, "moved": r.moved, "disambiguation_level": r.disambiguation}
    resolved.setdefault("rec", resolved["search"])
    collisions.setdefault("rec", collisions["search"])
    lap("assign")

    metrics = {
        "bootstrap": True,
        "mode": config.rqvae.mode,
        "items": len(item_ids),
        "warm_items": int(warm.sum()),
        "train_events": len(train_events),
        "semantic_encoded": encoder.encoded,  # cache misses
        "collisions": collisions,
        "reconstruction": model.reconstruction_error(semantic, collaborative, resolved),
        "final_loss": history[-1]["loss"] if history else None,
        "seconds": seconds,
        "build_config": config.model_dump(mode="json"),
    }
    model_config, model_state = model.export()
    n_shared = config.rqvae.n_shared if len(config.rqvae.tasks) == 2 else resolved["search"].shape[1]
    idmap = IdentifierMap(version=version, item_ids=tuple(item_ids), search_codes=resolved["search"],
                          rec_codes=resolved["rec"], n_shared=n_shared, codebook_size=config.rqvae.codebook_size,
                          coded_collaborative=collaborative, model_config=model_config, model_state=model_state,
                          metrics=metrics)
    path = None
    if save:
        path = store.save(idmap)
        item2vec.save(layout.collaborative_state(version))
    return BuildResult(idmap, texts, semantic, collaborative, warm, item2vec, model, history, metrics, path)


def top_items_slice(dataset: Dataset, n_items: int) -> Dataset:
    """The `n_items` items with the most events and only the events on them: a small,
    dense catalogue for quick builds and tests."""
    counts = Counter(target_item(e) for e in dataset.user_events())
    keep = {item for item, _ in counts.most_common(n_items)}
    return Dataset(dataset.root, {i: v for i, v in dataset.items.items() if i in keep},
                   [e for e in dataset.interactions if e.item_id in keep],
                   [e for e in dataset.searches if e.clicked_items[0] in keep], dataset.has_ratings)
