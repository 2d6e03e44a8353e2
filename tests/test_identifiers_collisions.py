"""Collision resolution: unique ids per task, only the last level moves, codes stay in range."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from identifiers.collisions import CapacityError, collision_rate, place_new, resolve


def test_the_nearest_item_keeps_a_contested_code_and_the_other_moves_to_its_next_nearest():
    codes = np.array([[0, 1], [0, 1], [0, 2]])
    distances = np.array([[0.5, 0.1, 0.3, 0.9], [0.4, 0.2, 0.3, 0.1], [1.0, 1.0, 0.0, 1.0]])
    r = resolve(codes, distances, 4)
    assert r.codes.tolist() == [[0, 1], [0, 3], [0, 2]]  # item 1: code 1 taken by item 0, 3 is its next nearest
    assert r.collision_rate == pytest.approx(1 / 3) and r.moved == 1 and not r.disambiguation


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), k=st.integers(2, 5), levels=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_resolution_always_ends_unique_with_prefixes_kept(n, k, levels, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, k, (n, levels))  # one level: all items share the empty prefix
    try:
        r = resolve(codes, rng.random((n, k)), k)
    except CapacityError:
        assert np.unique(codes[:, :-1], axis=0, return_counts=True)[1].max() > k * k
        return
    assert collision_rate(r.codes) == 0.0
    assert r.codes.min() >= 0 and r.codes.max() < k
    np.testing.assert_array_equal(r.codes[:, : levels - 1], codes[:, :-1])  # the prefix never changes
    assert r.codes.shape[1] == levels + int(r.disambiguation)


def test_an_overfull_prefix_gets_a_disambiguation_level_within_the_codebook():
    codes = np.zeros((7, 2), np.int64)  # 7 items, one prefix, only 3 last-level codes
    r = resolve(codes, np.random.default_rng(0).random((7, 3)), 3)
    assert r.disambiguation and r.codes.shape == (7, 3)
    assert collision_rate(r.codes) == 0.0 and r.codes.max() < 3
    assert (r.codes[:, 0] == 0).all()


def test_new_items_never_take_an_existing_id():
    existing = np.array([[0, 0], [0, 1], [1, 0]])
    wants_0_0 = np.array([[0, 0]]), np.array([[0.0, 0.1, 0.2]])
    assert place_new(existing, *wants_0_0, 3).tolist() == [[0, 2]]
    two = np.array([[0, 0], [0, 0]]), np.array([[0.0, 0.1, 0.2], [0.0, 0.1, 0.2]])
    with pytest.raises(CapacityError, match="re-bootstrap"):
        place_new(existing, *two, 3)  # the prefix (0,) has no third free code
    with_disambiguation = np.hstack([existing, np.zeros((3, 1), np.int64)])
    assert place_new(with_disambiguation, *two, 3).tolist() == [[0, 2, 0], [0, 0, 1]]
