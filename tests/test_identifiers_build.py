"""The bootstrap on a small slice of the bundled data, then life after it: new items get
ids without retraining, drifted items are re-coded only in a new version."""

from __future__ import annotations

import numpy as np
import pytest

from gensar import data
from gensar.data import Dataset
from gensar.events import InteractionEvent
from gensar.layout import Layout
from identifiers.assign import add_items, coder, drifted_items, recode_items
from identifiers.build import BuildConfig, build_identifiers, top_items_slice
from identifiers.collaborative import CollaborativeConfig, Item2Vec
from identifiers.collisions import collision_rate
from identifiers.idmap import IdentifierMap, MapStore
from identifiers.rqvae import RQVAEConfig
from identifiers.semantic import SemanticEncoder, item_texts
from identifiers.settings import IdentifierSettings

# A slice of 300 items: codebooks of 16 keep every code busy (paper: 256 for ~10k items).
SMALL = BuildConfig(rqvae=RQVAEConfig(codebook_size=16, epochs=40, warmup_epochs=5, batch_size=128),
                    collaborative=CollaborativeConfig(epochs=2))
LATE = 5  # items held back from the bootstrap, to arrive later


def without(ds: Dataset, items: set[str]) -> Dataset:
    return Dataset(ds.root, {i: v for i, v in ds.items.items() if i not in items},
                   [e for e in ds.interactions if e.item_id not in items],
                   [e for e in ds.searches if e.clicked_items[0] not in items], ds.has_ratings)


@pytest.fixture(scope="module")
def world(bundled_data, tmp_path_factory):
    full = top_items_slice(data.load(bundled_data), 300 + LATE)
    late = sorted(full.items)[:LATE]
    ds = without(full, set(late))
    train = data.leave_one_out(ds).train
    state = Layout.under(tmp_path_factory.mktemp("ids-state"))
    result = build_identifiers(ds, train, SMALL, state, progress=False)
    return full, ds, train, late, state, result


def test_rqvae_reconstruction_improves_with_training(world):
    *_, result = world
    rq = [h for h in result.history if h["phase"] == "rq"]
    for task in ("semantic", "collaborative"):
        assert rq[-1][f"recon_{task}"] < 0.9 * rq[0][f"recon_{task}"]
    assert rq[-1]["loss"] < 0.8 * rq[0]["loss"]
    recon = result.metrics["reconstruction"]
    assert recon["semantic"]["cosine"] > 0.6 and recon["collaborative"]["cosine"] > 0.9


def test_every_item_gets_unique_search_and_rec_ids_with_a_common_prefix(world):
    _, ds, _, _, state, result = world
    idmap = result.idmap
    assert set(idmap.item_ids) == set(ds.items) and idmap.n_shared == 2
    assert collision_rate(idmap.search_codes) == 0.0 and collision_rate(idmap.rec_codes) == 0.0
    np.testing.assert_array_equal(idmap.search_codes[:, :2], idmap.rec_codes[:, :2])
    assert idmap.search_codes.shape[1] >= 4 and idmap.rec_codes.shape[1] >= 4
    assert idmap.search_codes.max() < 16 and idmap.rec_codes.max() < 16
    assert (idmap.search_codes[:, 2:4] != idmap.rec_codes[:, 2:4]).any(axis=1).mean() > 0.5  # the tasks differ
    saved = MapStore(state.identifier_maps).load()
    assert saved == idmap and saved.version == "v1"
    assert Item2Vec.load(state.collaborative_state("v1")).item_ids[:3] == result.item2vec.item_ids[:3]


def test_only_training_events_build_the_ids(world):
    _, ds, train, *_, result = world
    assert result.texts == item_texts(ds, train)
    everything = item_texts(ds, ds.user_events())
    assert any(result.texts[i] != everything[i] for i in ds.items)  # held-out tags did not get in
    assert result.item2vec.counts.sum() == sum(isinstance(e, InteractionEvent) for e in train)
    assert result.metrics["train_events"] == len(train)


def test_a_new_item_gets_ids_without_retraining_and_existing_ids_stay(world):
    full, _, _, late, state, result = world
    v1 = result.idmap
    texts = item_texts(full, data.leave_one_out(full).train)
    encoder = SemanticEncoder(state.embeddings, progress=False)
    semantic = encoder.encode([texts[i] for i in late])
    encoder.close()
    item2vec = Item2Vec.load(state.collaborative_state("v1"))  # the stream's model goes on from the bootstrap's
    for event in (e for e in full.interactions if e.item_id in late):
        item2vec.partial_fit([([], event.item_id)])
    collaborative = item2vec.vectors(late)
    store = MapStore(state.identifier_maps)
    v2 = add_items(v1, store.next_version(), late, semantic, collaborative)
    store.save(v2)
    assert v2.parent == "v1" and sorted(v2.diff.added) == sorted(late) and not v2.diff.recoded
    assert {k: v.tobytes() for k, v in v2.model_state.items()} == {k: v.tobytes() for k, v in v1.model_state.items()}
    for item in v1.item_ids:
        assert v2.search_id(item) == v1.search_id(item) and v2.rec_id(item) == v1.rec_id(item)
    assert collision_rate(v2.search_codes) == 0.0 and collision_rate(v2.rec_codes) == 0.0
    model = coder(v1)
    levels = model.assign(semantic, collaborative, balanced=False)
    for j, item in enumerate(late):  # the shared prefix is what the trained model says
        assert v2.search_id(item)[:2] == tuple(levels.codes["search"][j, :2].tolist())
    with pytest.raises(ValueError, match="already have ids"):
        add_items(v2, "v9", late[:1], semantic[:1], collaborative[:1])


def test_a_drifted_item_is_recoded_only_in_a_new_version(world):
    _, _, _, _, state, result = world
    store = MapStore(state.identifier_maps)
    parent = store.load()
    item2vec = Item2Vec.load(state.collaborative_state("v1"))
    items = list(parent.item_ids[:50])
    drifter = min(items, key=lambda i: item2vec.counts[item2vec.rows[i]])  # the least established vector
    crowd = [i for i in items if i != drifter][-20:]
    np.testing.assert_allclose(item2vec.vectors(items), parent.coded_collaborative[[parent.row(i) for i in items]], atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(20):  # the drifter is suddenly consumed together with a different crowd
        item2vec.partial_fit([(list(rng.choice(crowd, 5, replace=False)), drifter) for _ in range(10)])
    now = item2vec.vectors(items)
    drifted = drifted_items(parent, items, now, threshold=IdentifierSettings().drift_threshold)
    assert drifter in drifted and set(drifted) <= {drifter, *crowd}  # items the stream did not touch stay put
    semantic = result.semantic[[result.idmap.row(i) for i in drifted]]
    child = recode_items(parent, store.next_version(), drifted, semantic, now[[items.index(i) for i in drifted]])
    path = store.save(child)
    assert child.parent == parent.version and set(child.diff.recoded) <= set(drifted)
    assert drifter in child.diff.recoded and child.rec_id(drifter) != parent.rec_id(drifter)
    assert IdentifierMap.load(store.root / parent.version).rec_id(drifter) == parent.rec_id(drifter)  # parent untouched
    for item in parent.item_ids:
        if item not in child.diff.recoded:
            assert child.search_id(item) == parent.search_id(item) and child.rec_id(item) == parent.rec_id(item)
    assert IdentifierMap.load(path).diff.recoded[drifter]["rec"] == [list(parent.rec_id(drifter)), list(child.rec_id(drifter))]


@pytest.mark.parametrize("mode", ["semantic_only", "no_shared"])
def test_ablation_modes_build_valid_maps(world, mode, tmp_path):
    _, ds, train, *_ = world
    config = BuildConfig(rqvae=RQVAEConfig(**{**SMALL.rqvae.model_dump(), "mode": mode, "epochs": 5}),
                         collaborative=SMALL.collaborative)
    idmap = build_identifiers(ds, train, config, Layout.under(tmp_path), progress=False, save=False).idmap
    assert collision_rate(idmap.search_codes) == 0.0 and collision_rate(idmap.rec_codes) == 0.0
    if mode == "semantic_only":
        np.testing.assert_array_equal(idmap.search_codes, idmap.rec_codes)
        assert idmap.n_shared == idmap.search_codes.shape[1]
    else:
        assert idmap.n_shared == 0 and idmap.search_codes.shape[1] >= 2


def test_build_config_refuses_unknown_keys_and_bad_layouts(tmp_path):
    with pytest.raises(ValueError, match="extra"):
        BuildConfig.model_validate({"rqvae": {"codebooks": 256}})
    with pytest.raises(ValueError, match="specific_levels >= 1"):
        RQVAEConfig(specific_levels=0)
    file = tmp_path / "c.yaml"
    file.write_text("rqvae:\n  mode: collaborative_only\n  codebook_size: 64\n")
    assert BuildConfig.from_file(file).rqvae.mode == "collaborative_only"
