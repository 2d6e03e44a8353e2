"""LoRA refreshes of the GenSAR model (PEFT), runnable with or without Ray.

A refresh wraps a COPY of the base causal LM with low-rank adapters on the linear layers
of its blocks (or continues the serving version's adapter, so every version stays one
adapter over the same base), trains only those on recent samples plus replayed older ones (the model's own
training loop, `model.train.train`), and saves the adapter as PEFT does:
adapter_config.json + adapter_model.safetensors. The identifier vocabulary is fixed by the
codebooks, so new items need no new tokens and embeddings stay frozen.

For serving, an adapter is merged into its own copy of the base (`merged`): every version
is an independent module, so a request that started on one version finishes on it.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import PreTrainedModel

from learner.settings import LoraSettings
from model.tasks import TASKS, Sample, TaskMix
from model.train import TrainReport, TrainSettings, train
from model.vocab import Vocabulary

# Every linear layer of the blocks, by architecture (a checkpoint of another family sets
# target_modules). Attention alone was too little: on the tiny test model an attention-only
# adapter took the refresh loss down 6%, full fine-tuning 36%; the MLPs hold most of what a
# next-item model knows.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGETS = {"llama": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "gpt2": ["c_attn", "c_proj", "c_fc"]}


class NonFiniteLoss(RuntimeError):
    """A refresh whose loss or trained weights became NaN or infinite: its adapter must never serve."""


def attach(base: PreTrainedModel, settings: LoraSettings, init_adapter: Path | None = None) -> PeftModel:
    """A trainable LoRA-wrapped copy of `base`; `base` itself is left untouched. With
    `init_adapter`, training continues from that adapter (still relative to `base`)."""
    if init_adapter is not None:
        return PeftModel.from_pretrained(copy.deepcopy(base), str(init_adapter), is_trainable=True)
    targets = settings.target_modules or TARGETS.get(base.config.model_type)
    if targets is None:
        raise ValueError(f"no default LoRA targets for model type {base.config.model_type!r}; set target_modules")
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=settings.r, lora_alpha=settings.alpha,
                        lora_dropout=settings.dropout, target_modules=targets)
    return get_peft_model(copy.deepcopy(base), config)


def tune(base: PreTrainedModel, samples: list[Sample], vocab: Vocabulary, train_settings: TrainSettings,
         lora: LoraSettings = LoraSettings(), init_adapter: Path | None = None,
         progress: bool = False) -> tuple[PeftModel, TrainReport]:
    """One refresh: LoRA-train a copy of `base` on `samples` (user-sequence windows of stream
    samples, model.tasks.Renderer.stream_windows: the loss on the samples' own events; every
    window once per epoch), starting from `init_adapter` (the serving version's) when given.
    Seeded by `train_settings.seed` (the adapter's initial draw, dropout), on a forked
    generator: the same refresh trains the same adapter, and the caller's draws are untouched."""
    if not samples:
        raise ValueError("a refresh needs samples")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train_settings.seed)
        model = attach(base, lora, init_adapter)
        every_sample_once = TaskMix(**{task: 1.0 for task in TASKS})
        report = train(model, {"stream": samples}, every_sample_once, train_settings, vocab, progress=progress)
    if not all(math.isfinite(loss) for loss in report.losses):
        raise NonFiniteLoss(f"loss became non-finite during the refresh: {report.losses}")
    # the losses are taken before each step's update: the last update can still blow up
    broken = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if broken:
        raise NonFiniteLoss(f"the refresh left non-finite weights in {len(broken)} tensors, e.g. {broken[0]}")
    return model, report


def save_adapter(model: PeftModel, directory: Path) -> Path:
    model.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)


def merged(base: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    """`base` with the adapter folded in, as a new module (base is not modified)."""
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir))
    return model.merge_and_unload().eval()
