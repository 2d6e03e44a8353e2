"""The collaborative updater on the real broker: after a real bootstrap on a slice of the
bundled data, new items announced on the items topic get ids in a new map version (every
other id kept), drifted items are re-coded in their own version, Qdrant learns both, and
a restarted updater resumes from its commit and its saved embeddings."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import ray
from prometheus_client import REGISTRY

from gensar import data
from gensar.layout import Layout
from gensar.replay import make_producer
from gensar.topics import ITEMS, TRAINING_SAMPLES
from identifiers.build import build_identifiers, top_items_slice
from identifiers.collisions import collision_rate
from identifiers.idmap import MapStore
from identifiers.settings import IdentifierSettings, QdrantSettings
from identifiers.vectors import ItemVectorStore
from infra.ray_local import ensure_ray
from learner.collaborative import CollaborativeUpdater
from learner.service import Collaborative, CollaborativeMeters
from learner.settings import CollaborativeSettings, LearnerSettings
from test_identifiers_build import LATE, SMALL, without
from test_learner_refresh import stream_samples

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bootstrapped(bundled_data, tmp_path_factory):
    """Identifiers built without the LATE items, their vectors in embedded Qdrant."""
    full = top_items_slice(data.load(bundled_data), 300 + LATE)
    late = sorted(full.items)[:LATE]
    ds = without(full, set(late))
    split = data.leave_one_out(ds)
    state = Layout.under(tmp_path_factory.mktemp("collab-state"))
    result = build_identifiers(ds, split.train, SMALL, state, progress=False)
    qdrant = QdrantSettings()  # embedded, in the layout's state
    with ItemVectorStore(state.qdrant, qdrant) as store:
        store.upsert_items(list(result.item_ids), [ds.items[i].title for i in result.item_ids], result.semantic,
                           result.collaborative, result.warm, result.idmap)
    late_events = [e for e in full.interactions if e.item_id in late]
    # What the stream emits after the bootstrap: held-out events, and the late items' use.
    fresh = [s for s in stream_samples([*split.test, *split.valid, *late_events]) if s.task == "rec"]
    return full, ds, late, state, qdrant, fresh


def own_copy(bootstrapped, tmp_path):
    """The bootstrapped state for one test alone (the updater writes map versions into it)."""
    full, ds, late, state, qdrant, fresh = bootstrapped
    shutil.copytree(state.state, tmp_path / "state")
    return full, ds, late, Layout.under(tmp_path / "state", state.cache), qdrant, fresh


def produce(kafka, upserts, samples) -> None:
    producer = make_producer(kafka)
    for item in upserts:
        producer.send(ITEMS.full_name(kafka), key=item.key(), value=item.to_bytes())
    for sample in samples:
        producer.send(TRAINING_SAMPLES.full_name(kafka), key=sample.key(), value=sample.to_bytes())
    producer.flush()
    producer.close()


def updater(state, kafka, ds, qdrant, drift_threshold: float) -> CollaborativeUpdater:
    return CollaborativeUpdater(state, kafka, ds, CollaborativeSettings(epochs=3),
                                IdentifierSettings(drift_threshold=drift_threshold), qdrant)


def test_new_items_get_ids_drifted_items_are_recoded_and_a_restart_resumes(bootstrapped, kafka, tmp_path):
    full, ds, late, state, qdrant, fresh = own_copy(bootstrapped, tmp_path)
    maps = MapStore(state.identifier_maps)
    v1 = maps.load("v1")
    produce(kafka, [full.items[i] for i in late], fresh)

    # A small threshold, so this short stream moves some warm items past it.
    first = updater(state, kafka, ds, qdrant, drift_threshold=0.02)
    reports = []
    try:
        while sum(r.samples for r in reports) < len(fresh) or sum(r.upserts for r in reports) < len(late):
            reports.append(first.step(timeout_ms=2000))
            assert len(reports) < 30, reports
        item2vec_seen = first.item2vec.counts.sum()
    finally:
        first.close()
    recoded = [i for r in reports for i in r.recoded]
    added = [i for r in reports for i in r.added]
    unplaced = {i for r in reports for i in r.unplaced}  # codebooks of 16: a prefix can be full
    assert added and set(added) | (unplaced & set(late)) == set(late)
    assert recoded and set(recoded) <= set(v1.item_ids)

    latest = maps.load()
    chain, m = [], latest
    while m.parent is not None:  # every version derives from the one before, back to the bootstrap
        chain.append(m)
        m = maps.load(m.parent)
    assert m.version == "v1" and len(chain) == len([v for r in reports for v in r.versions])
    assert set(latest.item_ids) == set(v1.item_ids) | set(added)
    assert collision_rate(latest.search_codes) == 0.0 and collision_rate(latest.rec_codes) == 0.0
    for item in v1.item_ids:
        if item not in recoded:
            assert latest.search_id(item) == v1.search_id(item) and latest.rec_id(item) == v1.rec_id(item), item
    for version in chain:
        for item, ids in version.diff.recoded.items():  # the diff's old ids are the parent's ids
            parent = maps.load(version.parent)
            assert ids["rec"][0] == list(parent.rec_id(item)), item
        assert all(item in late for item in version.diff.added)

    with ItemVectorStore(state.qdrant, qdrant) as store:
        for item in added:
            point = store.get(item, with_vectors=True)
            assert point is not None and point["title"] == full.items[item].title
            assert point["ids"][latest.version] == {"search": list(latest.search_id(item)),
                                                    "rec": list(latest.rec_id(item))}
            assert np.isfinite(point["vectors"]["collaborative"]).all()

    # Restarted: the commit holds, so nothing is applied twice; the embeddings are the saved ones.
    second = updater(state, kafka, ds, qdrant, drift_threshold=0.02)
    try:
        assert second.idmap.version == latest.version
        assert second.item2vec.counts.sum() == item2vec_seen
        again = second.step(timeout_ms=3000)
        assert (again.samples, again.upserts, again.versions) == (0, 0, [])
    finally:
        second.close()


def test_the_ray_actor_publishes_map_versions_on_its_schedule(bootstrapped, kafka, tmp_path):
    full, ds, late, state, qdrant, fresh = own_copy(bootstrapped, tmp_path)
    produce(kafka, [full.items[i] for i in late], fresh)
    ensure_ray(num_cpus=2)
    try:
        actor = Collaborative.remote(state, kafka, ds,
                                     LearnerSettings(collaborative=CollaborativeSettings(every_seconds=1.0)))
        running = actor.run.remote()
        assert ray.get(actor.map_version.remote(), timeout=120) == "v1"
        maps = MapStore(state.identifier_maps)
        deadline = time.monotonic() + 120
        while not set(late) & set(maps.load().item_ids) and time.monotonic() < deadline:
            time.sleep(1)
        ray.get(actor.stop.remote())
        published = ray.get(running, timeout=60)
        totals = ray.get(actor.totals.remote())
    finally:
        ray.shutdown()
    assert published and published == maps.versions()[1:]
    assert set(late) & set(maps.load().item_ids)

    # What it did reaches Prometheus through the learner loop's meters, counted once.
    assert totals["versions"] == len(published) and totals["samples"] > 0
    assert totals["added"] + totals["unplaced"] >= len(set(late) & set(maps.load().item_ids))
    meters, before = CollaborativeMeters(), exported()
    meters.update({name: n // 2 for name, n in totals.items()})
    meters.update(totals)
    meters.update(totals)
    after = exported()
    assert after["gensar_learner_map_versions_total"] - before["gensar_learner_map_versions_total"] == len(published)
    assert after["gensar_learner_collaborative_samples_total"] - before["gensar_learner_collaborative_samples_total"] == totals["samples"]
    for change in ("moved", "recoded", "added", "unplaced"):
        key = f"gensar_learner_collaborative_items_total/{change}"
        assert after[key] - before.get(key, 0) == totals[change]


def exported() -> dict[str, float]:
    return {(f"{s.name}/{s.labels['change']}" if "change" in s.labels else s.name): s.value
            for family in REGISTRY.collect() if family.name.startswith("gensar_learner_")
            for s in family.samples if s.name.endswith("_total")}
