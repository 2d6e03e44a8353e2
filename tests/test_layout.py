"""The one storage layout: every location comes from gensar.layout.Layout, built from settings,
and no part joins a location of the layout on its own."""

import ast
import pickle
from pathlib import Path

from gensar.layout import Layout
from gensar.settings import Settings
from test_architecture import CORE, PARTS, ROOT

# Names of the layout's folders: a part that writes `x / "registry"` has its own copy of the layout.
LAYOUT_NAMES = {"registry", "models", "base", "maps", "identifiers", "collaborative", "qdrant", "embeddings",
                "buffer.json", "item2vec", "serving-control.json"}


def test_the_layout_is_built_from_settings_and_travels_to_a_child_process(monkeypatch, tmp_path):
    for name in ("GENSAR_STATE_DIR", "GENSAR_ARTIFACTS_DIR", "GENSAR_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GENSAR_STATE_DIR", str(tmp_path / "pod"))
    local = Layout.of(Settings())
    assert local.artifacts == local.state == tmp_path / "pod"  # no artifact store named: the state directory
    monkeypatch.setenv("GENSAR_ARTIFACTS_DIR", str(tmp_path / "shared"))
    layout = Layout.of(Settings())
    assert layout.state == tmp_path / "pod" and layout.artifacts == tmp_path / "shared"
    for shared in (layout.registry, layout.serving_control, layout.base_models, layout.identifier_maps,
                   layout.collaborative_state("v1")):
        assert shared.is_relative_to(layout.artifacts)
    for own in (layout.stream_store("worker-0"), layout.learner_buffer, layout.item2vec, layout.qdrant):
        assert own.is_relative_to(layout.state) and not own.is_relative_to(layout.artifacts)
    assert layout.embeddings.is_relative_to(layout.cache)
    for name in ("GENSAR_STATE_DIR", "GENSAR_ARTIFACTS_DIR"):
        monkeypatch.delenv(name)
    for name, value in layout.environment().items():
        monkeypatch.setenv(name, value)
    assert Layout.of(Settings()) == layout  # what a child process started with these variables sees
    assert pickle.loads(pickle.dumps(layout)) == layout  # into Ray actors and Serve replicas as it is


def _layout_joins(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in LAYOUT_NAMES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} / {side.value!r}")
    return found


def test_no_part_joins_a_location_of_the_layout_on_its_own():
    files = [p for part in (*CORE, *PARTS) for p in (ROOT / part).rglob("*.py") if p != ROOT / "gensar" / "layout.py"]
    assert len(files) > 50
    assert [j for p in files for j in _layout_joins(p)] == []


def test_the_join_finder_finds_a_join(tmp_path):
    stray = ROOT / "tests" / "test_layout.py"  # this file's own example below
    assert any("'registry'" in j for j in _layout_joins(stray))
    _example = tmp_path / "registry"  # noqa: F841 - the join the finder must see
