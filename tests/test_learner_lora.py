"""LoRA refreshes on a tiny model: only the adapter trains, the loss falls, the adapter
round-trips as PEFT files, merged serving copies match, NaN is refused."""

from __future__ import annotations

import pytest
import torch

from gensar.data import leave_one_out
from learner.lora import NonFiniteLoss, attach, merged, save_adapter, tune
from learner.settings import LoraSettings
from model.tasks import TaskMix, build_pools
from model.train import TrainSettings, collate, train
from test_model import tiny_model, tiny_world

SETTINGS = TrainSettings(epochs=4, batch_size=32, warmup_steps=5, learning_rate=1e-2, log_every=2, device="cpu")


@pytest.fixture(scope="module")
def pretrained():
    """A tiny base trained on the first half of the users; the refresh sees the rest."""
    ds, idmap = tiny_world()
    vocab, renderer, model = tiny_model(ds, idmap)
    train_events = leave_one_out(ds).train
    early = [e for e in train_events if int(e.user_id) < 12]
    late = [e for e in train_events if int(e.user_id) >= 12]
    train(model, build_pools(renderer, early), TaskMix(), SETTINGS.model_copy(update={"epochs": 4}), vocab.pad_id,
          progress=False)
    fresh = [s for pool in build_pools(renderer, late).values() for s in pool]
    return model, vocab, fresh


def logits(model, vocab, samples):
    batch = collate(samples[:8], vocab.pad_id)
    with torch.no_grad():
        return model(**batch).logits


def test_refresh_trains_only_the_adapter_and_its_loss_falls(pretrained):
    base, vocab, fresh = pretrained
    before = {n: p.clone() for n, p in base.named_parameters()}
    adapted, report = tune(base, fresh, vocab.pad_id, SETTINGS, LoraSettings(r=4, alpha=8))
    assert report.losses[-1] < report.losses[0], report.losses
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(torch.equal(before[n], p) for n, p in base.named_parameters()), "the base is never modified"


def test_adapter_files_round_trip_and_merged_copy_matches(pretrained, tmp_path):
    base, vocab, fresh = pretrained
    adapted, _ = tune(base, fresh, vocab.pad_id, SETTINGS.model_copy(update={"epochs": 1}), LoraSettings(r=4))
    adapted.eval()
    directory = save_adapter(adapted, tmp_path / "adapter")
    assert {p.name for p in directory.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    serving = merged(base, directory)
    torch.testing.assert_close(logits(serving, vocab, fresh), logits(adapted, vocab, fresh), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits(serving, vocab, fresh), logits(base, vocab, fresh)), "the adapter changes outputs"


def test_a_non_finite_loss_is_refused(pretrained):
    base, vocab, fresh = pretrained
    exploding = SETTINGS.model_copy(update={"epochs": 1, "learning_rate": 1e30, "warmup_steps": 0, "grad_clip": 1e30})
    with pytest.raises(NonFiniteLoss):
        tune(base, fresh, vocab.pad_id, exploding, LoraSettings(r=4))


def test_unknown_architectures_need_explicit_targets(pretrained):
    base, *_ = pretrained
    assert attach(base, LoraSettings(target_modules=["q"])).peft_config["default"].target_modules == {"q"}
    base.config.model_type = "mystery"
    try:
        with pytest.raises(ValueError, match="no default LoRA targets"):
            attach(base, LoraSettings())
    finally:
        base.config.model_type = "t5"
