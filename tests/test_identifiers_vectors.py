"""Item vectors in Qdrant's embedded mode: round trip, reopen after a restart, idempotent
upserts, ids per map version, nearest neighbours and the cold-start fallback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from identifiers.collaborative import fill_cold, unit_rows
from identifiers.idmap import IdentifierMap
from identifiers.settings import QdrantSettings
from identifiers.vectors import ItemVectorStore

N = 40


@pytest.fixture
def catalogue():
    rng = np.random.default_rng(0)
    semantic = unit_rows(rng.normal(size=(N, 16)).astype(np.float32))
    collaborative = unit_rows(rng.normal(size=(N, 8)).astype(np.float32))
    items = [f"m{i}" for i in range(N)]
    codes = np.stack([np.arange(N) // 8, np.arange(N) % 8], 1)
    idmap = IdentifierMap("v1", tuple(items), codes, codes, n_shared=1, codebook_size=8)
    return items, [f"title {i}" for i in range(N)], semantic, collaborative, idmap


def test_round_trip_idempotent_upserts_and_reopen_after_restart(tmp_path, catalogue):
    items, titles, semantic, collaborative, idmap = catalogue
    with ItemVectorStore(tmp_path / "qdrant") as store:
        assert store.upsert_items(items, titles, semantic, collaborative, idmap=idmap) == N
        assert store.upsert_items(items, titles, semantic, collaborative, idmap=idmap) == 0  # nothing changed
        assert store.count() == N
        point = store.get("m3", with_vectors=True)
        assert point["title"] == "title 3" and point["ids"] == {"v1": {"search": [0, 3], "rec": [0, 3]}}
        np.testing.assert_allclose(point["vectors"]["collaborative"], collaborative[3], atol=1e-6)
    with ItemVectorStore(tmp_path / "qdrant") as reopened:  # the same folder after the process let go of it
        assert reopened.count() == N
        assert reopened.nearest(semantic[7], "semantic", k=1)[0][0] == "m7"
        assert reopened.nearest(collaborative[9], "collaborative", k=1)[0][0] == "m9"


def test_the_collection_survives_a_process_restart(tmp_path, catalogue):
    items, titles, semantic, collaborative, idmap = catalogue
    with ItemVectorStore(tmp_path) as store:
        store.upsert_items(items, titles, semantic, collaborative, idmap=idmap)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from identifiers.vectors import ItemVectorStore
        with ItemVectorStore(Path({str(tmp_path)!r})) as store:
            print(store.count(), store.get("m5")["ids"]["v1"]["rec"])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == [str(N), "[0,", "5]"]


def test_ids_of_every_map_version_are_kept(tmp_path, catalogue):
    items, titles, semantic, collaborative, v1 = catalogue
    v2 = v1.derive("v2", ["m0"], np.array([[7, 7]]), np.array([[7, 7]]))
    with ItemVectorStore(tmp_path) as store:
        store.upsert_items(items, titles, semantic, collaborative, idmap=v1)
        assert store.record_map(v2) == N and store.record_map(v2) == 0
        assert store.get("m0")["ids"] == {"v1": {"search": [0, 0], "rec": [0, 0]}, "v2": {"search": [7, 7], "rec": [7, 7]}}
        moved = collaborative.copy()
        moved[1] = -moved[1]
        assert store.upsert_items(items, titles, semantic, moved) == 1  # a vector update keeps the ids
        assert set(store.get("m1")["ids"]) == {"v1", "v2"}


def test_cold_start_fallback_matches_the_bootstrap_rule(tmp_path, catalogue):
    items, titles, semantic, collaborative, idmap = catalogue
    warm = np.arange(N) % 4 != 0
    with ItemVectorStore(tmp_path) as store:
        store.upsert_items(items, titles, semantic, collaborative, warm, idmap)
        borrowed = store.cold_start_collaborative(semantic[0], k=5, exclude=["m0"])
        expected = fill_cold(semantic, collaborative, warm, k=5)[0]
        np.testing.assert_allclose(borrowed, expected, atol=1e-5)
        assert all(item != "m0" and int(item[1:]) % 4 for item, _ in store.nearest(semantic[0], k=5, warm_only=True,
                                                                                    exclude=["m0"]))


def test_settings_switch_to_a_server_and_refuse_mismatched_collections(tmp_path, monkeypatch, catalogue):
    monkeypatch.setenv("GENSAR_QDRANT__URL", "http://qdrant.example:6333")
    assert QdrantSettings().url == "http://qdrant.example:6333"
    monkeypatch.delenv("GENSAR_QDRANT__URL")
    with pytest.raises(ValueError, match="bogus"):
        QdrantSettings(bogus=1)
    items, titles, semantic, collaborative, _ = catalogue
    with ItemVectorStore(tmp_path) as store:
        store.upsert_items(items, titles, semantic, collaborative)
        with pytest.raises(ValueError, match="expected"):
            store.ensure_collection(384, 64)
