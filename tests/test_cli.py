"""The `gensar` command as a user runs it: infra lifecycle and clear data errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from infra.ports import free_port

runner = CliRunner()


@pytest.mark.integration
def test_infra_up_is_idempotent_and_down_stops(tmp_path):
    env = {"GENSAR_STATE_DIR": str(tmp_path), "GENSAR_BROKER__PORT": str(free_port()),
           "GENSAR_BROKER__CONTROLLER_PORT": str(free_port())}
    try:
        first = runner.invoke(app, ["infra", "up"], env=env)
        assert first.exit_code == 0, first.output
        assert "topics created: gensar.search-events" in first.output
        second = runner.invoke(app, ["infra", "up"], env=env)
        assert second.exit_code == 0 and "none (all present)" in second.output
        pid = (tmp_path / "kafka" / "broker.pid").read_text()
        assert f"pid {pid}" in second.output
        status = runner.invoke(app, ["infra", "status"], env=env)
        assert status.exit_code == 0 and "running" in status.output
    finally:
        down = runner.invoke(app, ["infra", "down"], env=env)
    assert down.exit_code == 0 and "stopped" in down.output
    after = runner.invoke(app, ["infra", "status"], env=env)
    assert after.exit_code == 1 and "not running" in after.output


def test_data_errors_exit_2_with_file_and_line(tmp_path):
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A,B\n")
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,good,5\n")
    result = runner.invoke(app, ["data", "stats", "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "ratings.csv:2" in result.output.replace("\n", "") and "expected a number" in result.output
    lenient = runner.invoke(app, ["data", "stats", "--data", str(tmp_path), "--lenient"])
    assert lenient.exit_code == 0 and "ratings.csv" in lenient.output


def test_bench_quality_refuses_a_budget_without_the_joint_model_and_writes_no_report(tmp_path):
    out = tmp_path / "quality.json"
    result = runner.invoke(app, ["bench", "quality", "--out", str(out), "--budget-minutes", "1"],
                           env={"GENSAR_STATE_DIR": str(tmp_path / "state")})
    assert result.exit_code == 2, result.output
    assert "cannot fit the joint model" in result.output.replace("\n", " ")
    assert not out.exists() and not out.with_suffix(".md").exists()
