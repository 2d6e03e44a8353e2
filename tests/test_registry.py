"""The model registry: immutable checksummed versions, decisions, rollback, announcements; and
the crash-safe file writes it (and every state or report file) relies on."""

from __future__ import annotations

import pytest

from gensar.artifacts import ArtifactError, write_file
from learner.registry import (LocalArtifactStore, Manifest, Registry, RegistryError, TrainingWindow,
                              kafka_announcer, read_announcements)


def adapter_dir(tmp_path, name: str, payload: bytes):
    path = tmp_path / f"adapter-{name}"
    path.mkdir()
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(payload)
    return path


def manifest(version: str, parent: str | None = None, task="joint") -> Manifest:
    return Manifest(version=version, parent=parent, task=task, base_model="base-abc", idmap_version="v1",
                    window=TrainingWindow(samples=10, first_event_time=1.0, last_event_time=2.0))


@pytest.fixture
def registry(tmp_path):
    return Registry(LocalArtifactStore(tmp_path / "registry"))


def test_publish_promote_reject_and_serving(registry, tmp_path):
    registry.publish(adapter_dir(tmp_path, "a", b"A" * 100), manifest("a1"))
    assert registry.status("a1").status == "candidate" and registry.serving() is None
    registry.promote("a1")
    registry.publish(adapter_dir(tmp_path, "b", b"B" * 100), manifest("a2", parent="a1"))
    registry.reject("a2", "search NDCG@10 fell 9% below the serving version")
    assert registry.serving() == "a1"
    assert registry.status("a2").reason.startswith("search NDCG@10")
    fetched, path = registry.fetch("a1", tmp_path / "out")
    assert fetched.version == "a1" and (path / "adapter_model.safetensors").read_bytes() == b"A" * 100


def test_rollback_re_announces_the_previous_version(registry, tmp_path):
    for i, version in enumerate(["v1", "v2", "v3"]):
        registry.publish(adapter_dir(tmp_path, version, bytes([i]) * 10), manifest(version))
        registry.promote(version)
    assert registry.serving() == "v3"
    announcement = registry.rollback(reason="bad clicks")
    assert (announcement.version, announcement.status) == ("v2", "promoted")
    assert "rollback from v3" in announcement.reason
    assert registry.status("v3").status == "rolled-back"
    assert registry.serving() == "v2"
    registry.rollback()
    assert registry.serving() == "v1"
    last = registry.rollback()  # the only promotion left: the task falls back to the base model
    assert (last.version, last.status) == ("v1", "rolled-back")
    assert registry.serving() is None
    with pytest.raises(RegistryError, match="nothing to roll back for task joint: no promoted version"):
        registry.rollback()


def test_tasks_have_their_own_serving_versions(registry, tmp_path):
    registry.publish(adapter_dir(tmp_path, "s", b"s"), manifest("s1", task="search"))
    registry.publish(adapter_dir(tmp_path, "r", b"r"), manifest("r1", task="rec"))
    registry.promote("s1")
    registry.promote("r1")
    assert (registry.serving("search"), registry.serving("rec"), registry.serving("joint")) == ("s1", "r1", None)


def test_versions_are_immutable_and_parents_must_exist(registry, tmp_path):
    registry.publish(adapter_dir(tmp_path, "a", b"a"), manifest("x1"))
    with pytest.raises(RegistryError, match="immutable"):
        registry.publish(adapter_dir(tmp_path, "b", b"b"), manifest("x1"))
    with pytest.raises(RegistryError, match="parent version nope"):
        registry.publish(adapter_dir(tmp_path, "c", b"c"), manifest("x2", parent="nope"))
    with pytest.raises(ValueError):
        manifest("bad/version")


def test_corrupt_artifact_is_refused_with_the_file_named(registry, tmp_path):
    registry.publish(adapter_dir(tmp_path, "a", b"weights" * 10), manifest("c1"))
    weights = tmp_path / "registry" / "adapters" / "c1" / "adapter_model.safetensors"
    weights.write_bytes(b"flipped" * 10)
    with pytest.raises(ArtifactError, match="adapter_model.safetensors: sha256 mismatch"):
        registry.fetch("c1", tmp_path / "out")


def test_a_torn_last_decision_line_is_ignored_but_damage_inside_is_an_error(registry, tmp_path):
    registry.publish(adapter_dir(tmp_path, "a", b"a"), manifest("t1"))
    registry.promote("t1")
    log = tmp_path / "registry" / "decisions.jsonl"
    with open(log, "ab") as f:
        f.write(b'{"version": "t1", "sta')  # a crash mid-append
    assert registry.serving() == "t1"
    log.write_bytes(b"garbage\n" + log.read_bytes())
    with pytest.raises(RegistryError, match="line 1 is damaged"):
        registry.decisions()


@pytest.mark.integration
def test_decisions_are_announced_on_the_model_versions_topic(kafka, tmp_path):
    registry = Registry(LocalArtifactStore(tmp_path / "registry"), announce=kafka_announcer(kafka))
    registry.publish(adapter_dir(tmp_path, "a", b"a"), manifest("k1"))
    registry.promote("k1")
    registry.publish(adapter_dir(tmp_path, "b", b"b"), manifest("k2", parent="k1"))
    registry.reject("k2", "NaN loss")
    seen = [(a.version, a.status) for a in read_announcements(kafka)]
    assert seen == [("k1", "candidate"), ("k1", "promoted"), ("k2", "candidate"), ("k2", "rejected")]


def test_a_file_write_that_fails_midway_leaves_the_old_file_and_no_debris(tmp_path, monkeypatch):
    target = write_file(tmp_path / "control.json", '{"pinned": {}}')
    assert target.read_text() == '{"pinned": {}}'

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gensar.artifacts.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_file(target, '{"pinned": {"search": "r0002"}}')
    assert target.read_text() == '{"pinned": {}}'
    assert [p.name for p in tmp_path.iterdir()] == ["control.json"]
    monkeypatch.undo()
    write_file(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["control.json"]
