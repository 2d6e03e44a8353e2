"""The learner on real Ray against the real broker: samples flow in, versions are trained,
gated, announced; a shuffled-label candidate is rejected; rollback re-announces; a learner
killed or interrupted mid-refresh publishes nothing and its restart trains on every sample
exactly once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import ray

from gensar.data import event_order
from gensar.layout import Layout
from gensar.replay import make_producer
from gensar.topics import TRAINING_SAMPLES
from infra.ray_local import ensure_ray
from learner import service
from learner.registry import LocalArtifactStore, Registry, read_announcements
from learner.settings import LearnerSettings, RefreshTraining
from model.artifact import GenSARModel
from model.tasks import TaskMix, build_pools
from model.train import TrainSettings, train
from test_learner_refresh import stream_samples
from test_model import TINY, tiny_model, tiny_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base model and identifier map on disk, and the stream samples of new users."""
    state = tmp_path_factory.mktemp("learner-state")
    ds, idmap = tiny_world(n_users=48)
    vocab, renderer, model = tiny_model(ds, idmap)
    events = sorted([*ds.interactions, *ds.searches], key=event_order)
    settings = TrainSettings(epochs=10, batch_tokens=1024, warmup_steps=10, learning_rate=5e-3, device="cpu")
    train(model, build_pools(renderer, [e for e in events if int(e.user_id) < 24]), TaskMix(), settings,
          vocab, progress=False)
    GenSARModel(model, vocab, TINY, renderer.settings, idmap.version, idmap.fingerprint()).save(
        Layout.under(state).base_model("tiny"))
    idmap_path = idmap.save(state / "pinned-map")  # given with --idmap: the learner does not follow the map store
    fresh = stream_samples([e for e in events if int(e.user_id) >= 24])
    return ds, state, idmap_path, fresh


@pytest.fixture
def local_ray():
    """In-process Ray for one test; shut down before the subprocess test starts its own."""
    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def fresh_state(base_state: Path, tmp_path: Path) -> Layout:
    """A deployment's own state and artifacts holding the shared base model: the learner's
    buffer remembers the samples it saw, so two deployments never share one."""
    shutil.copytree(base_state, tmp_path / "state")
    return Layout.under(tmp_path / "state")


def produce(kafka, samples) -> None:
    producer = make_producer(kafka)
    for s in samples:
        producer.send(TRAINING_SAMPLES.full_name(kafka), key=s.key(), value=s.to_bytes())
    producer.flush()
    producer.close()


# gate_min_cases: a refresh here holds out a few dozen samples; the gate is tested in test_learner_refresh
SETTINGS = LearnerSettings(refresh_every_samples=100, min_samples=50, refresh_every_seconds=3600, holdout_fraction=0.3,
                           gate_margin=0.05, gate_min_cases=10, training=RefreshTraining(epochs=2, learning_rate=3e-3),
                           device="cpu", metrics_port=0)


def test_versions_are_trained_gated_announced_and_rolled_back(world, local_ray, kafka, tmp_path):
    ds, base_state, idmap_path, fresh = world
    layout = fresh_state(base_state, tmp_path)
    half = len(fresh) // 2
    common = dict(layout=layout, kafka=kafka, ds=ds, base_name="tiny", settings=SETTINGS,
                  idmap_path=idmap_path, max_refreshes=1)

    produce(kafka, fresh[:half])
    first = service.run(**common)
    produce(kafka, fresh[half:])
    second = service.run(**common)  # a restart: resumes from the committed offsets
    registry = Registry(LocalArtifactStore(layout.registry))
    assert [d.version for d in [*first, *second]] == ["r0001", "r0002"]
    assert registry.manifest("r0001").window.replayed == 0
    assert registry.manifest("r0002").parent == (first[0].version if first[0].status == "promoted" else None)
    assert registry.manifest("r0002").window.replayed > 0, "older samples are replayed against forgetting"

    # An artificially bad candidate (its training diverges) is rejected and never serves.
    produce(kafka, [s.model_copy(update={"event_id": s.event_id + "/again", "source_event_id": s.source_event_id + "/again"})
                    for s in fresh[:half]])
    diverging = SETTINGS.model_copy(update={"training": RefreshTraining(epochs=1, learning_rate=1e30)})
    third = service.run(**{**common, "settings": diverging})
    assert third[0].status == "rejected" and "non-finite loss" in third[0].reason, third[0].reason
    assert registry.serving() != "r0003"

    promoted = [d.version for d in [*first, *second] if d.status == "promoted"]
    announced = [(a.version, a.status) for a in read_announcements(kafka)]
    assert announced == [("r0001", "candidate"), ("r0001", first[0].status), ("r0002", "candidate"),
                         ("r0002", second[0].status), ("r0003", "candidate"), ("r0003", "rejected")]
    if not promoted:  # the gate held both back: nothing to roll back is a clear error
        with pytest.raises(Exception, match="nothing to roll back"):
            registry.rollback()
    else:  # back to the earlier promotion, or, when the gate held one back, to the base model
        Registry(LocalArtifactStore(layout.registry)).rollback(reason="test")
        assert registry.serving() == (promoted[0] if len(promoted) == 2 else None)


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGINT"])
def test_a_learner_stopped_mid_refresh_publishes_nothing_and_resumes(world, kafka, tmp_path, stop):
    """SIGKILL: a crash. SIGINT (Ctrl-C; SIGTERM does the same): the learner exits at once,
    abandoning the refresh instead of finishing minutes of training."""
    ds, base_state, idmap_path, fresh = world
    layout = fresh_state(base_state, tmp_path)
    produce(kafka, fresh)
    env = {**os.environ, **layout.environment(), "GENSAR_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "GENSAR_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
           "GENSAR_LEARNER__REFRESH_EVERY_SAMPLES": "100", "GENSAR_LEARNER__METRICS_PORT": "0",
           "GENSAR_LEARNER__DEVICE": "cpu", "GENSAR_LEARNER__TRAINING__EPOCHS": "200", "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "cli.main", "learner", "--base", "tiny", "--idmap", str(idmap_path),
           "--max-refreshes", "1", "--data", str(tmp_path)]
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{i},{item.title},{item.fields.get('genres', '')}\n" for i, item in ds.items.items()))
    (tmp_path / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,x,1\n")
    log = tmp_path / "learner.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 420  # Ray start-up and the first poll are slow on a loaded 2-core machine
        while "started on" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert "started on" in log.read_text(), log.read_text()[-3000:]
        time.sleep(3)  # inside the refresh's training
        if stop == "SIGINT":
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
            assert "refresh r0001 abandoned" in log.read_text()
    finally:
        kill_tree(proc.pid)
    registry = Registry(LocalArtifactStore(layout.registry))
    assert registry.store.keys() == [] and registry.decisions() == []
    assert read_announcements(kafka) == []

    env["GENSAR_LEARNER__TRAINING__EPOCHS"] = "1"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (version,) = registry.store.keys()
    window = registry.manifest(version).window
    # Every tiny-world sample has an identifier; the newest share is held out for the gate.
    trained = max(1, int(len(fresh) * (1 - LearnerSettings().holdout_fraction)))
    assert window.samples == trained, "each sample trained on once: none lost, none twice"


def kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for p in [*parent.children(recursive=True), parent]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    os.killpg(pid, signal.SIGKILL) if _alive_group(pid) else None


def _alive_group(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False
