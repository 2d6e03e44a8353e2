"""Ctrl-C in the middle of the replay stops everything the demo started (no process with
its state directory in the environment survives), and a second run resumes at the saved
replay position instead of starting over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from pathlib import Path

import pytest


def processes_of(state_dir: str) -> list[str]:
    """Command lines of live processes that carry the state directory (in their environment,
    as every child of the demo does, or on their command line, as the broker does)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            status = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if status != "Z" and (f"GENSAR_STATE_DIR={state_dir}".encode() in environ or state_dir.encode() in cmdline):
            found.append(cmdline.decode(errors="replace"))
    return found


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(bundled_data, tmp_path):
    state = str(tmp_path / "state")
    command = [sys.executable, "-m", "cli.main", "demo", "--quick", "--data", str(bundled_data), "--state-dir", state]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    progress = tmp_path / "state" / "demo" / "progress.json"
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"))
    deadline = time.monotonic() + 900
    while not (progress.exists() and json.loads(progress.read_text())["replayed"] > 0):
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the replay did not start"
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=180) != 0  # interrupted, not finished
    time.sleep(2)
    assert processes_of(state) == [], "processes survived Ctrl-C"
    interrupted_at = json.loads(progress.read_text())["replayed"]
    assert 0 < interrupted_at < 1500

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"{interrupted_at}/1500" in second.stderr  # the progress bar starts where the first run stopped
    assert json.loads(progress.read_text())["replayed"] == 1500
    assert processes_of(state) == []
