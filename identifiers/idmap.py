"""Versioned identifier maps: item -> (search id, recommendation id).

A map is immutable: its code arrays are read-only, and a saved version is never rewritten.
A map changes only by `derive`, which makes a NEW version whose parent is the old one and
records the diff (items added, items re-coded with old and new ids), computed from the
arrays rather than declared, so an existing id can never change silently.

On disk a version is a directory (`<maps root>/<version>/`):
    codes.safetensors   search_codes, rec_codes (int64), coded_collaborative (float32, optional)
    rqvae.safetensors   the RQ-VAE that assigned the codes (encoders, codebooks, decoders)
    manifest.json       item ids, n_shared, codebook_size, parent, diff, model config,
                        build metrics, sha256 of each file and a digest of itself

Codes per level are in [0, codebook_size); a disambiguation level, when one was needed,
also stays in that range. The first n_shared columns of both arrays are identical.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_tensors, save as save_tensors

from gensar.artifacts import ArtifactError, read_artifact, write_artifact

FORMAT = "gensar-idmap"
FORMAT_VERSION = 1
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class MapDiff:
    """What changed from the parent version: ids as lists (JSON-friendly)."""

    added: Mapping[str, dict[str, list[int]]] = field(default_factory=dict)  # item -> {"search", "rec"}
    recoded: Mapping[str, dict[str, list[list[int]]]] = field(default_factory=dict)  # item -> {"search": [old, new], "rec": [old, new]}

    def to_json(self) -> dict:
        return {"added": dict(self.added), "recoded": dict(self.recoded)}


@dataclass(frozen=True)
class IdentifierMap:
    version: str  # e.g. "v1"; immutable once saved
    item_ids: tuple[str, ...]  # row i of the code arrays is item_ids[i]
    search_codes: np.ndarray  # (n_items, L_search) int64: shared levels then semantic levels (+ disambiguation)
    rec_codes: np.ndarray  # (n_items, L_rec) int64: shared levels then collaborative levels (+ disambiguation)
    n_shared: int  # the first n_shared columns are identical in both arrays
    codebook_size: int  # every code is in [0, codebook_size)
    parent: str | None = None
    diff: MapDiff = field(default_factory=MapDiff)  # versus the parent
    coded_collaborative: np.ndarray | None = None  # (n_items, d) the collaborative vectors the codes came from (drift reference)
    model_config: Mapping[str, Any] = field(default_factory=dict)  # RQ-VAE config (identifiers.rqvae.RQVAEConfig)
    model_state: Mapping[str, np.ndarray] = field(default_factory=dict)  # RQ-VAE weights, codebooks included
    metrics: Mapping[str, Any] = field(default_factory=dict)  # measured when the codes were assigned
    created_at: float = field(default_factory=time.time)
    _rows: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not VERSION_PATTERN.match(self.version):
            raise ValueError(f"bad version name {self.version!r}: letters, digits, '.', '_', '-' (max 64)")
        n = len(self.item_ids)
        search = _frozen(self.search_codes, np.int64)
        rec = _frozen(self.rec_codes, np.int64)
        if search.ndim != 2 or rec.ndim != 2 or len(search) != n or len(rec) != n:
            raise ValueError(f"code arrays must be (n_items={n}, L): got {search.shape} and {rec.shape}")
        if not 0 <= self.n_shared <= min(search.shape[1], rec.shape[1]):
            raise ValueError(f"n_shared={self.n_shared} exceeds an id length")
        if not np.array_equal(search[:, : self.n_shared], rec[:, : self.n_shared]):
            raise ValueError("the first n_shared levels of search and rec ids differ")
        for name, codes in (("search", search), ("rec", rec)):
            if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
                raise ValueError(f"{name} codes outside [0, {self.codebook_size})")
            if n and len(np.unique(codes, axis=0)) != n:
                raise ValueError(f"{name} ids collide: {n - len(np.unique(codes, axis=0))} duplicate(s)")
        rows = {item: i for i, item in enumerate(self.item_ids)}
        if len(rows) != n:
            raise ValueError("duplicate item ids")
        object.__setattr__(self, "item_ids", tuple(self.item_ids))
        object.__setattr__(self, "search_codes", search)
        object.__setattr__(self, "rec_codes", rec)
        if self.coded_collaborative is not None:
            object.__setattr__(self, "coded_collaborative", _frozen(self.coded_collaborative, np.float32))
        object.__setattr__(self, "_rows", rows)

    # --- look-ups ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    def row(self, item_id: str) -> int:
        try:
            return self._rows[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} has no identifier in map {self.version}") from None

    def search_id(self, item_id: str) -> tuple[int, ...]:
        return tuple(int(c) for c in self.search_codes[self.row(item_id)])

    def rec_id(self, item_id: str) -> tuple[int, ...]:
        return tuple(int(c) for c in self.rec_codes[self.row(item_id)])

    def item_for(self, task: str, codes: Sequence[int]) -> str | None:
        """The item whose `task` ("search" or "rec") id is `codes`, if any."""
        index = self._reverse(task)
        return index.get(tuple(int(c) for c in codes))

    def _reverse(self, task: str) -> dict[tuple[int, ...], str]:
        key = f"_reverse_{task}"
        if key not in self.__dict__:
            codes = {"search": self.search_codes, "rec": self.rec_codes}[task]
            object.__setattr__(self, key, {tuple(map(int, row)): item for item, row in zip(self.item_ids, codes)})
        return self.__dict__[key]

    @property
    def codebooks(self) -> dict[str, np.ndarray]:
        """The RQ-VAE codebooks by level name, e.g. 'codebooks.shared.0' -> (K, dim)."""
        return {k: v for k, v in self.model_state.items() if k.startswith("codebooks.")}

    def fingerprint(self) -> str:
        """sha256 of what identifies the content: version, parent, items and codes."""
        h = hashlib.sha256()
        h.update(f"{self.version}\0{self.parent}\0{self.n_shared}\0{self.codebook_size}\0".encode())
        h.update("\n".join(self.item_ids).encode())
        h.update(self.search_codes.tobytes() + b"\0" + self.rec_codes.tobytes())
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdentifierMap) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    # --- evolution --------------------------------------------------------------------

    def derive(self, version: str, item_ids: Sequence[str], search_codes: np.ndarray, rec_codes: np.ndarray,
               coded_collaborative: np.ndarray | None = None, metrics: Mapping[str, Any] | None = None) -> "IdentifierMap":
        """A new version: `item_ids` get the given codes (new items are appended, existing
        ones re-coded); every other item keeps its ids. The diff is recorded."""
        if version == self.version:
            raise ValueError(f"a derived map needs a new version name, not {version!r}")
        search_codes, rec_codes = np.asarray(search_codes, np.int64), np.asarray(rec_codes, np.int64)
        if search_codes.shape[1:] != self.search_codes.shape[1:] or rec_codes.shape[1:] != self.rec_codes.shape[1:]:
            raise ValueError(f"id lengths differ from map {self.version}: a new layout needs a new bootstrap")
        new_items = [i for i in item_ids if i not in self._rows]
        all_items = (*self.item_ids, *new_items)
        search, rec = np.vstack([self.search_codes, np.zeros((len(new_items), search_codes.shape[1]), np.int64)]), \
            np.vstack([self.rec_codes, np.zeros((len(new_items), rec_codes.shape[1]), np.int64)])
        if (self.coded_collaborative is None) != (coded_collaborative is None):
            raise ValueError("coded_collaborative must be given exactly when the parent map keeps it")
        collab = None
        if coded_collaborative is not None:
            collab = np.vstack([self.coded_collaborative,
                                np.zeros((len(new_items), self.coded_collaborative.shape[1]), np.float32)])
        rows = {item: i for i, item in enumerate(all_items)}
        added, recoded = {}, {}
        for j, item in enumerate(item_ids):
            r = rows[item]
            if item in self._rows:
                old_s, old_r = search[r].tolist(), rec[r].tolist()
                if old_s != search_codes[j].tolist() or old_r != rec_codes[j].tolist():
                    recoded[item] = {"search": [old_s, search_codes[j].tolist()], "rec": [old_r, rec_codes[j].tolist()]}
            else:
                added[item] = {"search": search_codes[j].tolist(), "rec": rec_codes[j].tolist()}
            search[r], rec[r] = search_codes[j], rec_codes[j]
            if collab is not None:
                collab[r] = coded_collaborative[j]
        return IdentifierMap(version=version, item_ids=all_items, search_codes=search, rec_codes=rec,
                             n_shared=self.n_shared, codebook_size=self.codebook_size, parent=self.version,
                             diff=MapDiff(added, recoded), coded_collaborative=collab, model_config=self.model_config,
                             model_state=self.model_state, metrics=dict(metrics or {}))

    # --- persistence ------------------------------------------------------------------

    def save(self, directory: Path) -> Path:
        """Write this version as `directory/<version>/` atomically and return that path.
        Saving the same content again is a no-op; different content under an existing
        version name is refused (versions are immutable)."""
        target = Path(directory) / self.version
        if target.exists():
            existing = IdentifierMap.load(target)
            if existing.fingerprint() != self.fingerprint():
                raise FileExistsError(f"{target}: version {self.version} exists with different content; "
                                      "versions are immutable, derive a new one")
            return target
        arrays = {"search_codes": self.search_codes, "rec_codes": self.rec_codes}
        if self.coded_collaborative is not None:
            arrays["coded_collaborative"] = self.coded_collaborative
        files = {"codes.safetensors": save_tensors(arrays)}
        if self.model_state:
            files["rqvae.safetensors"] = save_tensors({k: np.ascontiguousarray(v) for k, v in self.model_state.items()})
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "version": self.version, "parent": self.parent,
            "n_shared": self.n_shared, "codebook_size": self.codebook_size, "item_ids": list(self.item_ids),
            "diff": self.diff.to_json(), "model_config": dict(self.model_config), "metrics": dict(self.metrics),
            "created_at": self.created_at, "fingerprint": self.fingerprint(),
        }
        return write_artifact(target, files, manifest)

    @classmethod
    def load(cls, path: Path) -> "IdentifierMap":
        """Load a version directory, verifying every checksum (ArtifactError names the file)."""
        path = Path(path)
        manifest, files = read_artifact(path)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path / 'manifest.json'}: not a {FORMAT} v{FORMAT_VERSION} artifact")
        arrays = load_tensors(files["codes.safetensors"])
        state = load_tensors(files["rqvae.safetensors"]) if "rqvae.safetensors" in files else {}
        diff = manifest["diff"]
        idmap = cls(version=manifest["version"], item_ids=tuple(manifest["item_ids"]),
                    search_codes=arrays["search_codes"], rec_codes=arrays["rec_codes"], n_shared=manifest["n_shared"],
                    codebook_size=manifest["codebook_size"], parent=manifest["parent"],
                    diff=MapDiff(diff["added"], diff["recoded"]), coded_collaborative=arrays.get("coded_collaborative"),
                    model_config=manifest["model_config"], model_state=state, metrics=manifest["metrics"],
                    created_at=manifest["created_at"])
        if idmap.fingerprint() != manifest["fingerprint"]:
            raise ArtifactError(f"{path / 'manifest.json'}: content fingerprint mismatch")
        return idmap


def _frozen(array: np.ndarray, dtype) -> np.ndarray:
    out = np.array(array, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


# --- the store of versions ----------------------------------------------------------------


class MapStore:
    """All versions under one root directory (default: <state_dir>/identifiers/maps)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def versions(self) -> list[str]:
        """Saved versions, oldest first (by creation time, then name)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "manifest.json").exists()]
        return [p.name for p in sorted(found, key=lambda p: (_number(p.name), p.name))]

    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def next_version(self) -> str:
        numbers = [_number(v) for v in self.versions()]
        return f"v{max(numbers, default=0) + 1}"

    def load(self, version: str | None = None) -> IdentifierMap:
        version = version or self.latest()
        if version is None:
            raise FileNotFoundError(f"no identifier map under {self.root}; run `gensar ids build` first")
        return IdentifierMap.load(self.root / version)

    def save(self, idmap: IdentifierMap) -> Path:
        if idmap.parent is not None and idmap.parent not in self.versions():
            raise ValueError(f"parent {idmap.parent} of {idmap.version} is not in {self.root}")
        return idmap.save(self.root)


def _number(version: str) -> int:
    match = re.fullmatch(r"v(\d+)", version)
    return int(match.group(1)) if match else 0
