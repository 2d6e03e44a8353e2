"""Crash-safe writes. Artifact directories: files are written under a temporary name,
fsynced, then the whole directory is renamed into place, so a reader sees either nothing
or a complete artifact; a manifest lists every file's sha256 and loading verifies them.
Single files (state, reports, results) are replaced the same way: `write_file`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """A damaged or inconsistent artifact; the message names the file."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes | str) -> Path:
    """Replace `path` with `data`: written under a temporary name beside it, fsynced, then
    renamed over it, so a reader (or a restart after a crash) sees the old file or the
    new one, never part of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_artifact(target: Path, files: dict[str, bytes], manifest: dict[str, Any]) -> Path:
    """Write `files` plus a manifest (with their checksums and a digest of itself) as the
    directory `target`, atomically. `target` must not exist yet."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        manifest = {**manifest, "files": {name: sha256_bytes(data) for name, data in files.items()}}
        manifest["digest"] = sha256_bytes(canonical_json(manifest))
        for name, data in {**files, MANIFEST: json.dumps(manifest, indent=1, sort_keys=True).encode()}.items():
            with open(staging / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(staging)
        os.rename(staging, target)  # fails if target appeared meanwhile: never overwrite
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_artifact(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the verified bytes of every file it lists."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{manifest_path}: missing (not an artifact directory?)") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({exc})") from None
    digest = manifest.pop("digest", None)
    if digest != sha256_bytes(canonical_json(manifest)):
        raise ArtifactError(f"{manifest_path}: digest mismatch (the manifest was modified or damaged)")
    files = {}
    for name, expected in manifest["files"].items():
        file_path = path / name
        try:
            data = file_path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{file_path}: missing") from None
        if sha256_bytes(data) != expected:
            raise ArtifactError(f"{file_path}: sha256 mismatch (expected {expected[:12]}…, "
                                f"found {sha256_bytes(data)[:12]}…)")
        files[name] = data
    return manifest, files
