"""The whole recipe from a dataset split and an identifier map to a trained GenSARModel:
item text (training tags only) -> vocabulary -> task samples -> backbone -> training."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gensar.data import Dataset, UserEvent
from identifiers.semantic import item_texts
from model.artifact import GenSARModel
from model.modeling import ModelSettings, backbone_tokenizer, build_model, parameter_count
from model.tasks import RenderSettings, Renderer, TaskMix, build_pools
from model.train import TrainReport, TrainSettings, train
from model.vocab import IdLayout, Vocabulary


def make_renderer(ds: Dataset, train_events: Sequence[UserEvent], idmap, model_settings: ModelSettings,
                  render: RenderSettings = RenderSettings()) -> Renderer:
    """The vocabulary (compacted to the corpus' word pieces for a model trained from
    scratch; the tokenizer's full vocabulary for a pretrained checkpoint) and the renderer."""
    texts = item_texts(ds, train_events)
    tokenizer = backbone_tokenizer(model_settings)
    layout = IdLayout.of(idmap)
    if model_settings.backbone == "llama":
        corpus = [*texts.values(), *(e.query for e in train_events if e.type == "search")]
        vocab = Vocabulary.for_corpus(layout, corpus, tokenizer)
    else:
        vocab = Vocabulary(layout, tokenizer)
    return Renderer(vocab, idmap, ds, texts, render)


def train_gensar(ds: Dataset, train_events: Sequence[UserEvent], idmap, model_settings: ModelSettings,
                 mix: TaskMix, train_settings: TrainSettings, render: RenderSettings = RenderSettings(),
                 checkpoint_dir: Path | None = None, progress: bool = True, seed: int = 0
                 ) -> tuple[GenSARModel, Renderer, TrainReport]:
    renderer = make_renderer(ds, train_events, idmap, model_settings, render)
    pools = build_pools(renderer, train_events)
    model = build_model(model_settings, renderer.vocab, seed=seed)
    report = train(model, pools, mix, train_settings, renderer.vocab, checkpoint_dir=checkpoint_dir,
                   progress=progress)
    info = {"train": report.to_json(), "parameters": parameter_count(model),
            "pool_sizes": {t: len(p) for t, p in pools.items()}, "mix": mix.model_dump()}
    gm = GenSARModel(model, renderer.vocab, model_settings, render, idmap.version, idmap.fingerprint(),
                     step=report.steps + report.resumed_from_step, info=info)
    return gm, renderer, report
