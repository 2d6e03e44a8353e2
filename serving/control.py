"""Operator decisions every replica follows: pins, kept as one small JSON file in the artifact
store (Layout.serving_control, beside the registry; the volume every replica mounts). An admin call reaches one replica; it
writes the file and applies it at once, the others pick it up at their next registry poll."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from gensar.artifacts import write_file

class Control(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pins: dict[Literal["joint", "search", "rec"], str] = {}  # task -> version that serves regardless of the registry


def read_control(path: Path) -> Control:
    path = Path(path)
    return Control.model_validate_json(path.read_bytes()) if path.exists() else Control()


def write_control(path: Path, control: Control) -> None:
    """Atomically: temp file, fsync, rename; a reader sees the old file or the new one."""
    write_file(Path(path), json.dumps(control.model_dump(), sort_keys=True))
