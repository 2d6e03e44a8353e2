"""A served version: model, identifier map and constraint structure travel TOGETHER.

A bundle is immutable once built. The base model is loaded once per replica; an adapter
version is folded into its own copy of the base (`learner.lora.merged`), so every bundle
is an independent module. Swapping what serves is then one reference assignment, and a
batch that picked up a bundle finishes on it even if a newer one is installed meanwhile:
no request can see one version's model with another version's map. The price is one
base-sized copy per version in memory, which is small for a T5-small-sized model; PEFT's
multi-adapter batching would share the base weights at the cost of that isolation.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel

from gensar.artifacts import ArtifactError
from gensar.layout import Layout
from identifiers.constraints import PrefixConstraint
from identifiers.idmap import IdentifierMap, MapStore
from learner.lora import merged
from learner.registry import LocalArtifactStore, Registry, RegistryError
from model.artifact import GenSARModel
from model.history import HistoryPrior, decode_with_history
from model.tasks import Renderer
from model.vocab import IdLayout
from serving.catalogue import Catalogue
from serving.settings import ServingSettings

TASKS = ("search", "rec")


class BundleError(ValueError):
    """A version that must not serve, with why in one word (`reason`, a metric label):
    corrupt (a checksum or digest of its adapter or map does not match), unknown (not in the
    registry), wrong-base (trained against another base model), map-missing (its identifier
    map is not in the map store), layout (its map does not fit the model's identifier layout),
    load-failed (anything else while building it)."""

    def __init__(self, message: str, reason: str = "load-failed"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Bundle:
    version: str  # the registry version, or "base:<name>" before any adapter is promoted
    idmap: IdentifierMap
    model: PreTrainedModel
    renderer: Renderer
    constraints: dict[str, PrefixConstraint]  # task -> trie; group 0 all items, group g: genre g
    genre_group: dict[str, int]
    prior: HistoryPrior = field(default_factory=HistoryPrior)  # the version's (model.history)
    decode_chunk: int = 1  # requests per forward pass (ServingSettings.decode_chunk)
    load_seconds: float = 0.0  # fetch + merge + map + constraint + warm-up
    loaded_at: float = field(default_factory=time.time)

    @property
    def idmap_version(self) -> str:
        return self.idmap.version

    def decode(self, task: str, sources: list[tuple[int, ...]], groups: np.ndarray, beams: int,
               histories: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) best first, (B, W'): constrained beam search, then (with the
        requests' histories) the history prior, which may lift items of the history that the
        beam did not reach and that the request's genre filter allows. The lifted items are
        scored on the beam's own prefix: one prefill per request."""
        beams = min(beams, len(self.idmap))
        codes = self.idmap.search_codes if task == "search" else self.idmap.rec_codes
        members = self.constraints[task]
        prior = self.prior if histories is not None else HistoryPrior()  # no history: the beam alone

        def allowed(b: int, row: int) -> bool:
            return groups[b] == 0 or bool(members.contains(codes[row][None], np.array([groups[b]]))[0])

        return decode_with_history(self.model, self.renderer.vocab, task, sources, members, groups, beams,
                                   self.decode_chunk, histories or [()] * len(sources), codes, self.idmap.item_ids,
                                   self.row_of, prior, allowed)

    @cached_property
    def row_of(self) -> dict[str, int]:
        """Item id -> map row, built once per bundle (not per decoded batch)."""
        return {item: row for row, item in enumerate(self.idmap.item_ids)}


def genre_constraints(idmap: IdentifierMap, catalogue: Catalogue, device: str) -> tuple[dict[str, PrefixConstraint], dict[str, int]]:
    """One trie per task whose group 0 is every item of the map and group g the items of genre g,
    so requests with different filters decode in one batch."""
    genre_group = {g: i + 1 for i, g in enumerate(catalogue.all_genres())}
    rows, groups = [np.arange(len(idmap))], [np.zeros(len(idmap), np.int64)]
    members = [(row, genre_group[g]) for row, item in enumerate(idmap.item_ids)
               for g in catalogue.genres.get(item, ()) if g in genre_group]
    if members:
        rows.append(np.array([m[0] for m in members]))
        groups.append(np.array([m[1] for m in members]))
    rows_all, groups_all = np.concatenate(rows), np.concatenate(groups)
    constraints = {task: PrefixConstraint(codes[rows_all], idmap.codebook_size, groups=groups_all, rows=rows_all,
                                          n_groups=len(genre_group) + 1).to(device)
                   for task, codes in (("search", idmap.search_codes), ("rec", idmap.rec_codes))}
    return constraints, genre_group


class Loader:
    """Loads the base model once, then builds a bundle for any version on demand."""

    def __init__(self, settings: ServingSettings, layout: Layout, catalogue: Catalogue):
        self.device = settings.torch_device()
        base_dir = layout.base_model(settings.base_model)
        self.base_name = base_dir.name
        self.base = GenSARModel.load(base_dir, self.device)
        self.registry = Registry(LocalArtifactStore(layout.registry))
        self.maps = MapStore(layout.identifier_maps)
        self.catalogue = catalogue
        self.beams = settings.beam_size
        self.decode_chunk = settings.decode_chunk

    def load(self, version: str | None) -> Bundle:
        """`version` None: the base model itself, on the map it was trained against."""
        started = time.perf_counter()
        if version is None:
            idmap = self.maps.load(self.base.idmap_version)
            self.base.check_map(idmap)
            model, name, prior = self.base.model, f"base:{self.base_name}", self.base.prior
        else:
            with tempfile.TemporaryDirectory(prefix="gensar-adapter-") as tmp:
                try:
                    manifest, path = self.registry.fetch(version, Path(tmp))  # checksums verified
                except ArtifactError as exc:
                    raise BundleError(f"version {version} is damaged: {exc}", "corrupt") from None
                except RegistryError as exc:
                    raise BundleError(str(exc), "unknown") from None
                if manifest.base_model != self.base_name:
                    raise BundleError(f"version {version} sits on base model {manifest.base_model!r}, "
                                      f"this replica serves {self.base_name!r}", "wrong-base")
                idmap = self._map(version, manifest.idmap_version)  # before the merge: a refusal costs no merge
                model = merged(self.base.model, path).to(self.device)
            name = version
            prior = HistoryPrior(weights=manifest.prior.weights) if manifest.prior else self.base.prior
        if IdLayout.of(idmap) != self.base.vocab.layout:
            raise BundleError(f"map {idmap.version} has layout {IdLayout.of(idmap)}, the model {self.base.vocab.layout}",
                              "layout")
        constraints, genre_group = genre_constraints(idmap, self.catalogue, self.device)
        renderer = Renderer(self.base.vocab, idmap, None, {}, self.base.render)  # no dataset: requests only
        bundle = Bundle(name, idmap, model, renderer, constraints, genre_group, prior, self.decode_chunk)
        for task in TASKS:  # warm-up: first calls allocate caches and pick kernels
            bundle.decode(task, [renderer.source(task, [], "warm up")], np.zeros(1, np.int64), self.beams)
        return Bundle(name, idmap, model, renderer, constraints, genre_group, prior, self.decode_chunk,
                      time.perf_counter() - started)

    def _map(self, version: str, idmap_version: str) -> IdentifierMap:
        if idmap_version not in self.maps.versions():
            raise BundleError(f"version {version} needs identifier map {idmap_version}, which is not in {self.maps.root}",
                              "map-missing")
        try:
            return self.maps.load(idmap_version)
        except ArtifactError as exc:
            raise BundleError(f"identifier map {idmap_version} of version {version} is damaged: {exc}", "corrupt") from None
