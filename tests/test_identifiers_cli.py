"""`gensar ids build` and `gensar ids stats` on a small slice of the bundled data."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app
from gensar.layout import Layout


def test_ids_build_then_stats(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSAR_STATE_DIR", str(tmp_path))
    config = tmp_path / "small.json"
    config.write_text(json.dumps({"rqvae": {"codebook_size": 8, "warmup_epochs": 2, "batch_size": 64},
                                  "collaborative": {"epochs": 1}}))
    runner = CliRunner()
    built = runner.invoke(app, ["ids", "build", "--items", "80", "--config", str(config), "--epochs", "3"])
    assert built.exit_code == 0, built.output
    assert "map v1: 80 items" in built.output and "80 points written" in built.output
    assert (Layout.of().identifier_maps / "v1" / "manifest.json").exists()
    shown = runner.invoke(app, ["ids", "stats", "--json"])
    assert shown.exit_code == 0, shown.output
    stats = json.loads(shown.output)
    assert stats["items"] == 80 and stats["tasks"]["search"]["collision_rate"] == 0.0
    assert [row["level"] for row in stats["levels"]] [:4] == ["shared.0", "shared.1", "semantic.0", "semantic.1"]
    assert all(0 < row["utilisation"] <= 1 and 1 <= row["perplexity"] <= 8 for row in stats["levels"])
    table = runner.invoke(app, ["ids", "stats"])
    assert table.exit_code == 0 and "perplexity" in table.output and "collisions" in table.output
    bad = runner.invoke(app, ["ids", "build", "--mode", "both"])
    assert bad.exit_code == 2 and "bad build config" in bad.output
    missing = runner.invoke(app, ["ids", "stats", "--version", "v9"])
    assert missing.exit_code == 1
