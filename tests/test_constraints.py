"""The decoding constraint accepts exactly the valid identifiers (checked against brute force)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from identifiers.constraints import PrefixConstraint, candidate_constraint


@st.composite
def catalogues(draw, max_items=30, max_depth=4, max_k=6):
    """Unique code tuples in random order, and their codebook size."""
    k = draw(st.integers(2, max_k))
    depth = draw(st.integers(1, max_depth))
    tuples = draw(st.lists(st.tuples(*[st.integers(0, k - 1)] * depth), min_size=1, max_size=max_items, unique=True))
    return np.array(tuples, dtype=np.int64), k


def brute_allowed(codes: np.ndarray, prefix: tuple[int, ...], k: int) -> np.ndarray:
    l = len(prefix)
    mask = np.zeros(k, bool)
    for row in codes:
        if tuple(row[:l]) == prefix:
            mask[row[l]] = True
    return mask


@settings(max_examples=60, deadline=None)
@given(catalogues(), st.data())
def test_allowed_matches_brute_force_along_every_prefix(catalogue, data):
    codes, k = catalogue
    constraint = PrefixConstraint(codes, k)
    depth = codes.shape[1]
    # walk random prefixes, valid and invalid, in one batch
    walks = data.draw(st.lists(st.tuples(*[st.integers(0, k - 1)] * depth), min_size=1, max_size=8))
    walks = np.array(walks, dtype=np.int64)
    nodes = constraint.roots(torch.zeros(len(walks), dtype=torch.long))
    valid_so_far = np.ones(len(walks), bool)
    for level in range(depth):
        mask = constraint.allowed(level, nodes).numpy()
        for b, walk in enumerate(walks):
            expected = brute_allowed(codes, tuple(walk[:level]), k) if valid_so_far[b] else np.zeros(k, bool)
            assert (mask[b] == expected).all()
        nodes = constraint.advance(level, nodes, torch.from_numpy(walks[:, level]))
        valid_so_far &= mask[np.arange(len(walks)), walks[:, level]]
        assert ((nodes.numpy() >= 0) == valid_so_far).all()
    # complete walks name exactly the rows whose codes they spell
    rows = constraint.items(nodes).numpy()
    for b, walk in enumerate(walks):
        hits = np.flatnonzero((codes == walk).all(1))
        assert rows[b] == (hits[0] if len(hits) else -1)


@settings(max_examples=40, deadline=None)
@given(catalogues(), st.data())
def test_candidate_groups_allow_only_their_candidates(catalogue, data):
    codes, k = catalogue
    n = len(codes)
    n_groups = data.draw(st.integers(1, 4))
    size = data.draw(st.integers(1, n))
    candidates = np.array([data.draw(st.permutations(range(n)))[:size] for _ in range(n_groups)])
    constraint = candidate_constraint(codes, k, candidates)
    for g in range(n_groups):
        inside = constraint.contains(codes, np.full(n, g))
        assert set(np.flatnonzero(inside)) == set(candidates[g].tolist())
        # and decoding any full id in group g names the right item row
        nodes = constraint.roots(torch.full((n,), g))
        for level in range(codes.shape[1]):
            nodes = constraint.advance(level, nodes, torch.from_numpy(codes[:, level]))
        rows = constraint.items(nodes).numpy()
        assert (rows[inside] == np.flatnonzero(inside)).all()
        assert (rows[~inside] == -1).all()


def test_dead_beams_allow_nothing_and_bad_inputs_fail_loudly():
    codes = np.array([[0, 1], [0, 2], [1, 0]])
    constraint = PrefixConstraint(codes, 3)
    mask = constraint.allowed(0, torch.tensor([0, -1]))
    assert mask[0].tolist() == [True, True, False] and not mask[1].any()
    with pytest.raises(ValueError, match="unique"):
        PrefixConstraint(np.array([[0, 1], [0, 1]]), 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        PrefixConstraint(np.array([[0, 3]]), 3)
