"""A trained model as a self-describing, checksummed artifact directory:

    config.json, generation_config.json, model.safetensors   `save_pretrained` (safetensors)
    tokenizer files                                           the text tokenizer it was built with
    gensar.json                                               identifier layout, settings, the
                                                              identifier-map version + fingerprint
                                                              it was trained against, step, the
                                                              history prior's weights
    manifest.json                                             sha256 of every file (verified on load)

Written atomically (gensar.artifacts): a reader sees a complete artifact or none.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from gensar.artifacts import ArtifactError, read_artifact, write_artifact
from model.history import HistoryPrior
from model.modeling import ModelSettings
from model.tasks import RenderSettings
from model.vocab import IdLayout, Vocabulary

FORMAT = "gensar-model"
FORMAT_VERSION = 2  # 2: the decoder-only model over event sequences


@dataclass
class GenSARModel:
    """A model with everything needed to use it: vocabulary, settings, the map it speaks."""

    model: PreTrainedModel
    vocab: Vocabulary
    settings: ModelSettings
    render: RenderSettings
    idmap_version: str
    idmap_fingerprint: str
    step: int = 0
    info: dict[str, Any] | None = None  # training report, metrics
    prior: HistoryPrior = field(default_factory=HistoryPrior)  # fitted on validation (model.history)

    def save(self, target: Path) -> Path:
        """Write the artifact as the directory `target` (which must not exist)."""
        target = Path(target)
        with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.vocab.tokenizer.save_pretrained(tmp)
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        meta = {"layout": self.vocab.layout.model_dump(), "text_ids": self.vocab.text_ids, "settings": self.settings.model_dump(mode="json"),
                "render": self.render.model_dump(), "idmap_version": self.idmap_version,
                "idmap_fingerprint": self.idmap_fingerprint, "step": self.step, "info": self.info or {},
                "prior": self.prior.model_dump()}
        files["gensar.json"] = json.dumps(meta, indent=1, sort_keys=True).encode()
        return write_artifact(target, files, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                              "idmap_version": self.idmap_version})

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> "GenSARModel":
        """Load and verify (ArtifactError names a damaged file)."""
        path = Path(path)
        manifest, files = read_artifact(path)
        if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path / 'manifest.json'}: not a {FORMAT} v{FORMAT_VERSION} artifact")
        meta = json.loads(files["gensar.json"])
        vocab = Vocabulary(IdLayout(**meta["layout"]), AutoTokenizer.from_pretrained(str(path)), meta["text_ids"])
        model = AutoModelForCausalLM.from_pretrained(str(path)).to(device).eval()
        if model.get_input_embeddings().num_embeddings < vocab.size:
            raise ArtifactError(f"{path}: model vocabulary is smaller than its identifier layout needs")
        return cls(model, vocab, ModelSettings(**meta["settings"]), RenderSettings(**meta["render"]),
                   meta["idmap_version"], meta["idmap_fingerprint"], meta["step"], meta["info"],
                   HistoryPrior(**meta["prior"]))

    def check_map(self, idmap) -> None:
        """Refuse to decode against a different identifier map than the one trained on."""
        if idmap.fingerprint() != self.idmap_fingerprint:
            raise ValueError(f"model was trained against identifier map {self.idmap_version} "
                             f"({self.idmap_fingerprint[:12]}), not {idmap.version} ({idmap.fingerprint()[:12]})")
