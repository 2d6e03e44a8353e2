"""Semantic (MiniLM, cached) and collaborative (item2vec, incremental) item embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from gensar import data
from gensar.events import InteractionEvent, SearchEvent
from identifiers.build import torch_threads
from identifiers.collaborative import (CollaborativeConfig, Item2Vec, fill_cold, next_item_hit_rate,
                                       user_sequences)
from identifiers.semantic import SemanticEncoder, item_texts


@pytest.fixture(scope="module")
def bundled(bundled_data):
    ds = data.load(bundled_data)
    return ds, data.leave_one_out(ds)


def test_item_text_uses_only_the_given_training_tags(bundled):
    ds, split = bundled
    texts = item_texts(ds, split.train)
    train_tags = {(e.clicked_items[0], e.query.lower()) for e in split.train if isinstance(e, SearchEvent)}
    held_out = [e for e in split.test if isinstance(e, SearchEvent)
                and (e.clicked_items[0], e.query.lower()) not in train_tags]
    assert held_out, "the bundled split has test tags unseen in training"

    def tags_of(item: str) -> list[str]:
        text = texts[item]
        return text.split(". Tags: ", 1)[1].split(", ") if ". Tags: " in text else []

    for event in held_out:
        assert event.query.lower() not in tags_of(event.clicked_items[0])
    item, tag = sorted(train_tags)[0]
    assert tag in tags_of(item) and texts[item].startswith(ds.items[item].title)


def test_semantic_encoder_caches_by_content_and_captures_meaning(tmp_path):
    texts = ["Toy Story (1995). Genres: Adventure, Animation, Children, Comedy",
             "Toy Story 2 (1999). Genres: Adventure, Animation, Children, Comedy",
             "Saw (2004). Genres: Horror, Mystery, Thriller"]
    encoder = SemanticEncoder(tmp_path, progress=False)
    first = encoder.encode(texts)
    assert first.shape == (3, 384) and encoder.encoded == 3
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert first[0] @ first[1] > first[0] @ first[2] + 0.2
    again = encoder.encode([texts[2], texts[0], texts[2]])  # all cached, repeats allowed
    assert encoder.encoded == 3
    np.testing.assert_array_equal(again, first[[2, 0, 2]])
    encoder.close()
    reopened = SemanticEncoder(tmp_path, progress=False)  # the cache is on disk
    np.testing.assert_array_equal(reopened.encode(texts[:1]), first[:1])
    assert reopened.encoded == 0 and reopened._model is None  # the model never loaded
    reopened.close()
    assert len(list(tmp_path.glob("*.sqlite"))) == 1


SEQUENCES = {"u1": ["a", "b", "c", "d"], "u2": ["b", "c", "e"], "u3": ["a", "c", "d", "e"], "u4": ["f", "g"]}
SMALL = CollaborativeConfig(dim=8, window=2, epochs=3, batch_size=4, min_count=2)


def test_partial_fit_moves_only_the_affected_vectors_and_grows_for_new_items():
    model = Item2Vec.fit(SEQUENCES, SMALL, items=["a", "b", "c", "d", "e", "f", "g", "z"])
    before = model.inputs.clone()
    moved = model.partial_fit([(["c", "d"], "new")], epochs=3)
    assert sorted(moved) == ["c", "d", "new"]
    assert model.counts[model.rows["new"]] == 1 and not model.warm(["new"])[0]
    changed = {model.item_ids[i] for i in range(len(before)) if not np.allclose(before[i], model.inputs[i])}
    assert changed == {"c", "d"}  # "new" is a new row; everything else is exactly as before
    model.partial_fit([(["a"], "new")])
    assert model.warm(["new", "z"]).tolist() == [True, False]
    np.testing.assert_allclose(np.linalg.norm(model.vectors(["a", "new"]), axis=1), 1.0, atol=1e-5)


def test_item2vec_save_load_round_trip_and_continue(tmp_path):
    model = Item2Vec.fit(SEQUENCES, SMALL)
    loaded = Item2Vec.load(model.save(tmp_path / "i2v"))
    np.testing.assert_array_equal(loaded.vectors(list("abc")), model.vectors(list("abc")))
    assert loaded.item_ids == model.item_ids and loaded.config == model.config
    assert loaded.partial_fit([(["a", "b"], "c")]) == ["a", "b", "c"]


def test_cold_items_borrow_from_their_semantic_neighbours():
    semantic = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.95, 0.05]], np.float32)
    collaborative = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [5, 5, 5]], np.float32)
    warm = np.array([True, True, True, False])
    filled = fill_cold(semantic / np.linalg.norm(semantic, axis=1, keepdims=True), collaborative, warm, k=2)
    np.testing.assert_array_equal(filled[:3], collaborative[:3])
    assert filled[3, 2] == 0 and filled[3, 0] > 0 and filled[3, 1] > 0  # items 0 and 1, not 2
    assert np.linalg.norm(filled[3]) == pytest.approx(1.0)


def test_collaborative_embeddings_carry_next_item_signal(bundled):
    """On the bundled ratings, next-item HR@10 (full catalogue, leave-one-out): the item2vec
    score beats training popularity clearly (0.069 vs 0.042 measured) and nearest neighbours
    of the item vectors are far above chance (0.051 vs 10/9742 = 0.001)."""
    ds, split = bundled
    sequences = user_sequences(split.train)
    with torch_threads(1):  # as the build runs it: a contended second thread is many times slower
        model = Item2Vec.fit(sequences, CollaborativeConfig(), items=list(ds.items))
    targets = [(e.user_id, e.item_id) for e in split.test if isinstance(e, InteractionEvent)]
    result = next_item_hit_rate(model, sequences, targets, k=10)
    assert result["n"] == 610
    assert result["hr@10_sgns"] > result["hr@10_popularity"] + 0.01
    assert result["hr@10_neighbours"] > 20 * 10 / len(ds.items)
