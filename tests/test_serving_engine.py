"""The serving engine without Ray, on a tiny world written to disk as a real deployment has
it (base model artifact, identifier maps, registry with LoRA adapters, catalogue): answers
are valid and labelled, per-task versions swap independently and atomically, cold users get
popularity or search-history answers, new items are reachable by the dense look-up."""

from __future__ import annotations

import csv
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gensar.data import leave_one_out, load
from gensar.events import HistoryEntry, ItemUpsert
from gensar.layout import Layout
from gensar.replay import make_producer
from gensar.topics import ITEMS
from identifiers.idmap import MapStore
from learner.lora import save_adapter, tune
from learner.registry import LocalArtifactStore, Manifest, PriorRecord, Registry, TrainingWindow
from learner.settings import LoraSettings
from model.artifact import GenSARModel
from model.tasks import TaskMix, build_pools
from model.train import TrainSettings, train
from serving.bundle import BundleError, Loader
from serving.catalogue import Catalogue
from serving.dense import RRF_K, DenseIndex, fuse
from serving.engine import Engine, Query, request_history
from serving.items import follow_items
from serving.settings import ServingSettings
from test_model import TINY, tiny_model, tiny_world

NEW_ITEM = "900"  # in the catalogue, in map tiny2 (adapter v2), unknown to tiny1
TRAIN = TrainSettings(epochs=3, batch_tokens=1024, warmup_steps=5, learning_rate=5e-3, log_every=5, device="cpu")


@dataclass(frozen=True)
class World:
    """A deployment's artifact store (layout) and the serving settings that read it."""
    settings: ServingSettings
    layout: Layout


def build_world(root: Path) -> World:
    """A deployment's artifact store: base model `tiny` (map tiny1), adapters v1 (joint,
    tiny1, promoted), v2 (joint, tiny2: one more item, candidate) and s1 (search only, tiny1,
    candidate); the catalogue as MovieLens CSV."""
    ds, idmap = tiny_world()
    vocab, renderer, model = tiny_model(ds, idmap)
    train(model, build_pools(renderer, leave_one_out(ds).train), TaskMix(), TRAIN, vocab, progress=False)
    layout = Layout.under(root, cache=root / "cache")
    maps = MapStore(layout.identifier_maps)
    maps.save(idmap)
    maps.save(idmap.derive("tiny2", [NEW_ITEM], np.array([[7, 7, 7]]), np.array([[7, 7, 7]])))
    GenSARModel(model, vocab, TINY, renderer.settings, idmap.version, idmap.fingerprint()).save(layout.base_model("tiny"))
    samples = [s for pool in build_pools(renderer, leave_one_out(ds).train).values() for s in pool]
    registry = Registry(LocalArtifactStore(layout.registry))
    for version, task, map_version, seed in (("v1", "joint", "tiny1", 1), ("v2", "joint", "tiny2", 2), ("s1", "search", "tiny1", 3)):
        adapted, report = tune(model, samples, vocab, TRAIN.model_copy(update={"epochs": 1, "seed": seed}), LoraSettings(r=4))
        directory = save_adapter(adapted, root / "adapters-out" / version)
        registry.publish(directory, Manifest(version=version, task=task, base_model="tiny", idmap_version=map_version,
                                             window=TrainingWindow(samples=len(samples))))
    registry.promote("v1")
    catalogue = root / "catalogue"
    catalogue.mkdir()
    with open(catalogue / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for item in ds.items.values():
            w.writerow([item.item_id, item.title, item.fields["genres"].capitalize()])
        w.writerow([NEW_ITEM, "zulu quebec newcomer", "Documentary"])
    with open(catalogue / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for e in ds.interactions:
            w.writerow([e.user_id, e.item_id, e.value, int(e.timestamp)])
    return World(ServingSettings(catalogue=catalogue, poll_s=0.5, beam_size=10, max_batch_size=8), layout)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def engine(world, tmp_path_factory):
    catalogue = Catalogue.of(load(world.settings.catalogue_dir()))
    dense = DenseIndex(catalogue, tmp_path_factory.mktemp("embeddings"))
    engine = Engine(Loader(world.settings, world.layout, catalogue), catalogue, dense, beam_size=world.settings.beam_size)
    engine.refresh()
    return engine


def registry(world) -> Registry:
    return Registry(LocalArtifactStore(world.layout.registry))


def test_both_tasks_answer_valid_items_labelled_with_their_version(engine):
    answers = engine.recommend([Query("rec", 5, history=request_history(("3", "4", "5"))), Query("rec", 7, history=request_history(("10",)))])
    for a, k in zip(answers, (5, 7)):
        assert a.model_version == "v1" and a.idmap_version == "tiny1" and a.source == "model"
        assert len(a.items) == k and len({i.id for i in a.items}) == k
        assert all(i.id in engine.slots["rec"].idmap and i.title for i in a.items)
        assert [i.score for i in a.items] == sorted((i.score for i in a.items), reverse=True)
    (s,) = engine.search([Query("search", 4, query="alpha", history=request_history(("3",)))])
    assert s.model_version == "v1" and s.source == "model+dense" and len(s.items) == 4


def test_genre_filter_constrains_decoding_and_fusion(engine):
    (a,) = engine.search([Query("search", 10, query="bravo", genre="horror")])
    assert a.items and all("horror" in engine.catalogue.genres[i.id] for i in a.items)


def test_a_new_item_is_reachable_through_the_dense_look_up(engine):
    assert NEW_ITEM not in engine.slots["search"].idmap
    (a,) = engine.search([Query("search", 10, query="zulu quebec newcomer")])
    assert NEW_ITEM in [i.id for i in a.items]


def test_fusion_weighs_each_list_and_a_none_holds_its_rank():
    fused = dict(fuse(["a", "b"], ["c", None, "b"], weights=(1.0, 2.0)))
    assert fused == pytest.approx({"a": 1 / (RRF_K + 1), "b": 1 / (RRF_K + 2) + 2 / (RRF_K + 3), "c": 2 / (RRF_K + 1)})
    assert [i for i, _ in fuse(["a", "b"], ["c", None, "b"], weights=(1.0, 2.0))] == ["b", "c", "a"]
    with pytest.raises(ValueError, match="2 rankings but 1 weights"):
        fuse(["a"], ["b"], weights=(1.0,))


def test_the_dense_weight_depends_on_what_the_model_knows(engine):
    """With a known history the dense list weighs `dense_weights[0]` (0: the model's ranking
    stands), without one `dense_weights[1]`; an item without an identifier always weighs as
    without a history, so a user with a history still reaches a new item."""
    model_only = Engine(engine.loader, engine.catalogue, None, beam_size=engine.beam_size)
    model_only.slots = engine.slots
    before = engine.dense_weights
    try:
        engine.dense_weights = (0.0, 1.0)
        warm = Query("search", 5, query="alpha", history=request_history(("3",)))
        (fused,), (alone,) = engine.search([warm]), model_only.search([warm])
        assert [i.id for i in fused.items] == [i.id for i in alone.items]
        (cold,) = engine.search([Query("search", 5, query="alpha")])
        (cold_alone,) = model_only.search([Query("search", 5, query="alpha")])
        assert [i.id for i in cold.items] != [i.id for i in cold_alone.items]
        (new,) = engine.search([Query("search", 10, query="zulu quebec newcomer", history=request_history(("3",)))])
        assert NEW_ITEM in [i.id for i in new.items]
    finally:
        engine.dense_weights = before


def test_cold_users_get_popularity_or_their_search_history(engine):
    cold, unknown_items, searched = engine.recommend([
        Query("rec", 3), Query("rec", 3, history=request_history(("no-such-item",))), Query("rec", 3, search_history=("golf",))])
    assert cold.source == unknown_items.source == "popularity"
    assert [i.id for i in cold.items] == list(engine.catalogue.popular[:3])
    assert searched.source == "search-history" and len(searched.items) == 3


def test_per_task_swap_is_independent_and_the_map_travels_with_the_model(engine, world):
    reg = registry(world)
    reg.promote("s1")
    assert engine.due()
    swaps = engine.refresh()
    assert not engine.due()
    assert [(s.task, s.old, s.new) for s in swaps] == [("search", "v1", "s1")]
    assert swaps[0].load_seconds > 0 and swaps[0].swap_seconds < 0.01
    assert engine.slots["rec"].version == "v1" and engine.slots["search"].version == "s1"
    reg.promote("v2")  # the joint version moves on; search keeps its own adapter
    assert [(s.task, s.new) for s in engine.refresh()] == [("rec", "v2")]
    assert engine.slots["rec"].idmap_version == "tiny2" and NEW_ITEM in engine.slots["rec"].idmap
    (swap,) = engine.pin("search", "v2")  # both tasks on one version: one shared bundle, no load
    assert swap.new == "v2" and swap.load_seconds == 0 and engine.slots["search"] is engine.slots["rec"]
    engine.pin("search", None)
    assert engine.slots["search"].version == "s1"


def test_pins_override_the_registry_and_bad_versions_are_refused(engine, world):
    engine.pin("joint", "v1")
    assert {b.version for b in engine.slots.values()} == {"v1"}
    with pytest.raises(Exception, match="unknown version"):
        engine.pin("rec", "v404")
    engine.pin("joint", None)
    assert {t: b.version for t, b in engine.slots.items()} == {"search": "s1", "rec": registry(world).serving("joint")}


def test_a_version_on_another_base_model_is_refused(engine, world, tmp_path):
    reg = registry(world)
    manifest, adapter = reg.fetch("v1", tmp_path / "v1")
    reg.publish(adapter, manifest.model_copy(update={"version": "other", "base_model": "big"}))
    with pytest.raises(BundleError, match="base model 'big'"):
        engine.loader.load("other")


def test_a_version_serves_with_the_history_prior_its_manifest_carries(engine, world, tmp_path):
    reg = registry(world)
    manifest, adapter = reg.fetch("v1", tmp_path / "v1")
    weights = {"search": (16.0, 0.0, 0.0), "rec": (0.0, -8.0, 0.0)}  # what a refresh refitted (learner.refresh)
    reg.publish(adapter, manifest.model_copy(update={"version": "primed", "prior": PriorRecord(weights=weights)}))
    primed, plain = engine.loader.load("primed"), engine.loader.load("v1")
    assert primed.prior.weights == weights and plain.prior == engine.loader.base.prior
    item = plain.idmap.item_ids[3]
    history = [HistoryEntry(item_id=item, query="zulu", timestamp=0.0)] * 2
    sources = [plain.renderer.source("search", history, "zulu")]
    rows, _ = primed.decode("search", sources, np.zeros(1, np.int64), 10, [history])
    assert primed.idmap.item_ids[rows[0][0]] == item  # the twice-searched item first: the version's prior lifted it


def test_in_flight_batches_finish_on_their_version_during_swaps(engine, world):
    """Answers from a thread decoding while the main thread swaps back and forth: every answer
    equals the reference answer of the version it is labelled with."""
    query = [Query("rec", 5, history=request_history(("20", "21", "22")))]
    reference = {}
    for version in ("v1", "v2"):
        engine.pin("joint", version)
        reference[version] = [(i.id, round(i.score, 3)) for i in engine.recommend(query)[0].items]
    assert reference["v1"] != reference["v2"]
    seen, stop = [], threading.Event()

    def ask():
        while not stop.is_set():
            a = engine.recommend(query)[0]
            seen.append((a.model_version, [(i.id, round(i.score, 3)) for i in a.items]))

    thread = threading.Thread(target=ask)
    thread.start()
    for version in ("v1", "v2", "v1", "v2"):
        engine.pin("joint", version)
    stop.set()
    thread.join()
    engine.pin("joint", None)
    assert seen and all(items == reference[version] for version, items in seen)


def test_settings_refuse_unknown_keys_and_the_layout_refuses_ambiguous_base_models(tmp_path):
    with pytest.raises(ValueError, match="surprise"):
        ServingSettings(surprise=1)
    with pytest.raises(ValueError):
        ServingSettings(max_k=101)  # beyond the published schema's limit
    layout = Layout.under(tmp_path)
    with pytest.raises(FileNotFoundError, match="exactly one base model, found \\[\\]"):
        layout.base_model()
    for name in ("a", "b"):
        (layout.base_models / name).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="exactly one base model"):
        layout.base_model()
    assert layout.base_model("b") == layout.base_models / "b"
    (layout.base_models / "a").rmdir()
    assert layout.base_model() == layout.base_models / "b"


@pytest.mark.integration
def test_items_published_while_serving_are_found_within_seconds(engine, kafka):
    """On the real broker: an item upserted on the items topic joins the catalogue and the
    dense index, so search finds it with its title; a malformed record is skipped."""
    stop = threading.Event()
    thread = threading.Thread(target=follow_items, args=(kafka, engine.catalogue, engine.dense, stop), daemon=True)
    thread.start()
    producer = make_producer(kafka)
    topic = ITEMS.full_name(kafka)
    producer.send(topic, key=b"broken", value=b"{not json").get(timeout=30)
    item = ItemUpsert(event_id="i-950", timestamp=time.time(), item_id="950", title="xylophone yacht premiere",
                      fields={"genres": "Musical"})
    producer.send(topic, key=item.key(), value=item.to_bytes()).get(timeout=30)
    producer.close()
    deadline, found = time.monotonic() + 30, []
    try:
        while time.monotonic() < deadline and not found:
            (answer,) = engine.search([Query("search", 10, query="xylophone yacht premiere")])
            found = [i for i in answer.items if i.id == "950"]
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert found and found[0].title == "xylophone yacht premiere"
    assert engine.catalogue.genres["950"] == {"musical"}


def test_with_a_shared_collection_the_look_up_reads_the_identifiers_item_vectors(engine, tmp_path):
    """The identifiers part's collection (identifiers.vectors, here embedded on a path; a
    Qdrant server in a deployment) answers the look-up, including items only it knows."""
    from identifiers.semantic import SemanticEncoder
    from identifiers.vectors import ItemVectorStore

    titles = {"961": "quokka harbour festival", "5": engine.catalogue.titles["5"]}
    encoder = SemanticEncoder(tmp_path / "embeddings", progress=False)
    semantic = encoder.encode(list(titles.values()))
    with ItemVectorStore(tmp_path / "qdrant") as store:
        store.upsert_items(list(titles), list(titles.values()), semantic, np.eye(2, 8, dtype=np.float32))
        dense = DenseIndex(engine.catalogue, tmp_path / "embeddings", shared=store)
        dense.add("961", "ignored: the identifiers part writes the shared collection")
        (hits,) = dense.lookup(["quokka harbour festival"], k=2)
    assert hits[0][0] == "961" and hits[0][1] > hits[1][1]
