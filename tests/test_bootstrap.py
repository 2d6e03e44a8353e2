"""`gensar bootstrap`: the artifact store's first identifier map and base model, built once
(a re-run changes nothing), and the wait an init container does for them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from gensar.layout import Layout
from gensar.synthetic import write_synthetic
from identifiers.idmap import MapStore
from model.artifact import GenSARModel

runner = CliRunner()
QUICK = ["--minutes", "0.05", "--epochs", "1", "--rqvae-epochs", "4", "--no-qdrant", "--prior-cases", "5"]


@pytest.fixture
def store(tmp_path):
    data = tmp_path / "data"
    write_synthetic(data, items=400, users=40, events=1200, ratings=True)
    env = {"GENSAR_STATE_DIR": str(tmp_path / "state"), "GENSAR_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "GENSAR_DATA_DIR": str(data)}
    return env, Layout(tmp_path / "state", tmp_path / "artifacts", Layout.of().cache)


def test_bootstrap_builds_the_map_and_base_model_once(store):
    env, layout = store
    first = runner.invoke(app, ["bootstrap", *QUICK], env=env)
    assert first.exit_code == 0, first.output
    maps = MapStore(layout.identifier_maps)
    assert maps.versions() == ["v1"]
    model = GenSARModel.load(layout.base_model("base"))  # checksummed: a complete artifact
    model.check_map(maps.load("v1"))
    assert layout.base_model(None) == layout.base_model("base")  # what serving and the learner pick by default
    written = (layout.base_model("base") / "gensar.json").stat().st_mtime_ns

    again = runner.invoke(app, ["bootstrap", *QUICK], env=env)
    assert again.exit_code == 0, again.output
    assert maps.versions() == ["v1"]
    assert (layout.base_model("base") / "gensar.json").stat().st_mtime_ns == written
    assert "identifier targets" not in again.output  # nothing was trained

    waited = runner.invoke(app, ["bootstrap", "--wait", "0"], env=env)
    assert waited.exit_code == 0 and "present" in waited.output


def test_wait_fails_on_an_empty_store_and_the_learner_names_the_missing_base(store):
    env, _ = store
    waited = runner.invoke(app, ["bootstrap", "--wait", "0"], env=env)
    assert waited.exit_code == 1
    assert "bootstrap Job" in waited.output
    learner = runner.invoke(app, ["learner"], env={**env, "GENSAR_LEARNER__METRICS_PORT": "0"})
    assert learner.exit_code == 2
    assert "expected exactly one base model" in learner.output.replace("\n", " ")
    assert "gensar bootstrap" in learner.output.replace("\n", " ")


def test_a_catalogue_too_small_for_the_priors_negatives_is_bootstrapped_without_the_prior(tmp_path):
    data = tmp_path / "data"
    write_synthetic(data, items=90, users=20, events=600, ratings=True)  # < 99 negatives for any case
    env = {"GENSAR_STATE_DIR": str(tmp_path / "state"), "GENSAR_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
           "GENSAR_DATA_DIR": str(data)}
    done = runner.invoke(app, ["bootstrap", *QUICK], env=env)
    assert done.exit_code == 0, done.output
    said = " ".join(done.output.split())
    assert "history prior for rec not fitted" in said and "eligible negatives" in said
    model = GenSARModel.load(Layout(tmp_path / "state", tmp_path / "artifacts", Layout.of().cache).base_model("base"))
    assert "rec" not in model.prior.weights and model.prior.of("rec") == (0.0, 0.0, 0.0)
