"""The identifier-map artifact: round trip, checksums, immutability, recorded diffs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gensar.artifacts import ArtifactError
from identifiers.idmap import IdentifierMap, MapStore


def small_map(version: str = "v1") -> IdentifierMap:
    search = np.array([[0, 1, 2], [0, 1, 3], [1, 1, 2]])
    rec = np.array([[0, 5], [0, 6], [1, 5]])
    return IdentifierMap(version, ("a", "b", "c"), search, rec, n_shared=1, codebook_size=8,
                         coded_collaborative=np.eye(3, 4, dtype=np.float32),
                         model_state={"codebooks.shared.0.weight": np.ones((8, 2), np.float32)},
                         model_config={"rqvae": {"mode": "dual"}}, metrics={"note": "test"})


def test_lookups_and_reverse_lookups():
    m = small_map()
    assert m.search_id("b") == (0, 1, 3) and m.rec_id("c") == (1, 5)
    assert m.item_for("search", (1, 1, 2)) == "c" and m.item_for("rec", (7, 7)) is None
    assert set(m.codebooks) == {"codebooks.shared.0.weight"}
    with pytest.raises(KeyError, match="'z' has no identifier in map v1"):
        m.search_id("z")


@pytest.mark.parametrize("change, message", [
    (dict(rec_codes=np.array([[0, 5], [0, 5], [1, 5]])), "rec ids collide"),
    (dict(rec_codes=np.array([[2, 5], [0, 6], [1, 5]])), "shared levels"),
    (dict(search_codes=np.array([[0, 1, 8], [0, 1, 3], [1, 1, 2]])), r"outside \[0, 8\)"),
    (dict(version="v 1"), "bad version name"),
])
def test_invalid_maps_are_refused(change, message):
    fields = dict(version="v1", item_ids=("a", "b", "c"), search_codes=small_map().search_codes,
                  rec_codes=small_map().rec_codes, n_shared=1, codebook_size=8)
    with pytest.raises(ValueError, match=message):
        IdentifierMap(**{**fields, **change})


def test_save_load_round_trip_and_arrays_are_read_only(tmp_path):
    m = small_map()
    path = m.save(tmp_path)
    loaded = IdentifierMap.load(path)
    assert loaded == m and loaded.metrics == {"note": "test"}
    np.testing.assert_array_equal(loaded.coded_collaborative, m.coded_collaborative)
    np.testing.assert_array_equal(loaded.codebooks["codebooks.shared.0.weight"], np.ones((8, 2)))
    with pytest.raises(ValueError, match="read-only"):
        loaded.search_codes[0, 0] = 4
    assert m.save(tmp_path) == path  # same content again: a no-op


def test_a_saved_version_is_never_rewritten(tmp_path):
    small_map().save(tmp_path)
    other = IdentifierMap("v1", ("a",), np.array([[1, 1, 1]]), np.array([[1, 1]]), 1, 8)
    with pytest.raises(FileExistsError, match="versions are immutable"):
        other.save(tmp_path)
    assert IdentifierMap.load(tmp_path / "v1") == small_map()


@pytest.mark.parametrize("target", ["codes.safetensors", "rqvae.safetensors", "manifest.json"])
def test_damage_is_detected_and_names_the_file(tmp_path, target):
    path = small_map().save(tmp_path)
    file = path / target
    if target == "manifest.json":
        manifest = json.loads(file.read_text())
        manifest["n_shared"] = 0
        file.write_text(json.dumps(manifest))
    else:
        data = bytearray(file.read_bytes())
        data[-1] ^= 0xFF
        file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=target.replace(".", r"\.")):
        IdentifierMap.load(path)


def test_no_partial_artifact_is_left_when_writing_fails(tmp_path, monkeypatch):
    import gensar.artifacts as artifacts

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "rename", fail)
    with pytest.raises(OSError, match="disk full"):
        small_map().save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_derive_records_the_diff_and_keeps_everything_else(tmp_path):
    v1 = small_map()
    v2 = v1.derive("v2", ["d", "a"], np.array([[2, 2, 2], [0, 7, 7]]), np.array([[2, 2], [0, 7]]),
                   coded_collaborative=np.ones((2, 4), np.float32))
    assert v2.parent == "v1" and v2.item_ids == ("a", "b", "c", "d")
    assert dict(v2.diff.added) == {"d": {"search": [2, 2, 2], "rec": [2, 2]}}
    assert dict(v2.diff.recoded) == {"a": {"search": [[0, 1, 2], [0, 7, 7]], "rec": [[0, 5], [0, 7]]}}
    for item in ("b", "c"):
        assert v2.search_id(item) == v1.search_id(item) and v2.rec_id(item) == v1.rec_id(item)
    store = MapStore(tmp_path)
    store.save(v1)
    store.save(v2)
    assert store.versions() == ["v1", "v2"] and store.latest() == "v2" and store.next_version() == "v3"
    assert store.load("v1").search_id("a") == (0, 1, 2)  # the parent is untouched
    assert dict(store.load().diff.recoded) == dict(v2.diff.recoded)


def test_derive_refuses_collisions_and_orphans(tmp_path):
    with pytest.raises(ValueError, match="search ids collide"):
        small_map().derive("v2", ["d"], np.array([[0, 1, 2]]), np.array([[0, 3]]), np.ones((1, 4), np.float32))
    orphan = small_map().derive("v2", ["d"], np.array([[3, 3, 3]]), np.array([[3, 3]]), np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="parent v1"):
        MapStore(tmp_path).save(orphan)
