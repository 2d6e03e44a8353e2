"""Where everything lives. One object, built once from settings (`Layout.of`) and handed to
every part, owns every location; no part joins a path of its own.

Three roots, because a deployment puts them on different volumes:
- `artifacts`: the artifact store every part reads and the publishers write (the registry of
  adapters, base models, identifier maps, serving's pin control). In a cluster it is one
  shared volume (a ReadWriteMany PVC); locally it defaults to the state root.
- `state`: this process's own state (a stream worker's table store, the learner's sample
  buffer and item2vec state, embedded Qdrant). In a pod, its own volume.
- `cache`: what can be rebuilt (text embeddings).

A Layout is a small frozen value: it pickles into Ray actors and Serve replicas as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gensar.settings import Settings


@dataclass(frozen=True)
class Layout:
    state: Path
    artifacts: Path
    cache: Path

    @classmethod
    def of(cls, settings: Settings | None = None) -> "Layout":
        settings = settings or Settings()
        return cls(Path(settings.state_dir), Path(settings.artifacts_dir or settings.state_dir), Path(settings.cache_dir))

    @classmethod
    def under(cls, root: Path, cache: Path | None = None) -> "Layout":
        """State and artifacts below one directory (a demo run, a benchmark, a test); the
        cache stays the configured one unless given, as re-encoding every item text is slow."""
        return cls(Path(root), Path(root), Path(cache or Settings().cache_dir))

    def environment(self) -> dict[str, str]:
        """The variables that give a child process this layout (Layout.of reads them back)."""
        return {"GENSAR_STATE_DIR": str(self.state), "GENSAR_ARTIFACTS_DIR": str(self.artifacts),
                "GENSAR_CACHE_DIR": str(self.cache)}

    # --- the artifact store: shared by every part ----------------------------------------

    @property
    def registry(self) -> Path:
        """Adapter versions and the promotion log (learner.registry)."""
        return self.artifacts / "registry"

    @property
    def serving_control(self) -> Path:
        """Serving's pins, written by /admin/pin and read by every replica."""
        return self.registry / "serving-control.json"

    @property
    def base_models(self) -> Path:
        return self.artifacts / "models" / "base"

    def base_model(self, name: str | None = None) -> Path:
        """The named base model, or the only one present when `name` is None."""
        if name:
            return self.base_models / name
        found = sorted(p for p in self.base_models.iterdir() if p.is_dir()) if self.base_models.is_dir() else []
        if len(found) != 1:
            raise FileNotFoundError(f"{self.base_models}: expected exactly one base model, found "
                                    f"{[p.name for p in found]}; name the one to use (GENSAR_SERVING__BASE_MODEL, --base)")
        return found[0]

    @property
    def identifier_maps(self) -> Path:
        """Versioned identifier maps (identifiers.idmap.MapStore)."""
        return self.artifacts / "identifiers" / "maps"

    def collaborative_state(self, version: str) -> Path:
        """The item2vec model a map version's collaborative codes came from."""
        return self.artifacts / "identifiers" / "collaborative" / version

    # --- this process's state ---------------------------------------------------------------

    def stream_store(self, worker_name: str) -> Path:
        """A stream worker's table store (RocksDB), one per worker."""
        return self.state / "streams" / worker_name

    @property
    def learner_buffer(self) -> Path:
        """The learner's window and replay reservoir of samples."""
        return self.state / "learner" / "buffer.json"

    @property
    def item2vec(self) -> Path:
        """The collaborative updater's running item2vec state."""
        return self.state / "learner" / "item2vec"

    def checkpoint(self, name: str) -> Path:
        """The checkpoints of a training run that resumes when interrupted (a base model's)."""
        return self.state / "checkpoints" / name

    @property
    def qdrant(self) -> Path:
        """Embedded Qdrant's folder (unused with a Qdrant server)."""
        return self.state / "qdrant"

    # --- caches -------------------------------------------------------------------------------

    @property
    def embeddings(self) -> Path:
        """Sentence embeddings of item texts, keyed by text and encoder."""
        return self.cache / "embeddings"
