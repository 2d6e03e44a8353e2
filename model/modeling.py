"""The backbone: a decoder-only Hugging Face causal LM (a standard PreTrainedModel, so PEFT
can wrap it and `save_pretrained` / `from_pretrained` round-trip it as safetensors), with
the identifier tokens and event markers in its vocabulary.

Two ways to get one, chosen by `ModelSettings.backbone`:
    llama       a small Llama-style decoder (RoPE, RMSNorm, SwiGLU) trained from scratch:
                the offline default, no weights needed
    pretrained  any local HF causal-LM checkpoint (`pretrained_path`), its own tokenizer,
                embeddings resized for the identifier tokens

Identifier codes are scored against their own level only: the logits of a level are the
final hidden state times the output embeddings of that level's K code tokens
(`code_logits`), in training, exact scoring and beam search alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel,
                          PreTrainedTokenizerBase)

from model.vocab import Vocabulary, text_tokenizer


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: Literal["llama", "pretrained"] = "llama"
    pretrained_path: Path | None = None  # backbone "pretrained": a local HF causal-LM checkpoint
    # Small on purpose: the bundled data trains on 2 CPU cores in minutes.
    d_model: int = Field(128, ge=16)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    d_ff: int = Field(512, ge=16)
    # On attention weights (Llama has no other dropout). 0: SDPA on CPU falls back from its
    # fused kernel to the math path when dropout is on (a training step took 1.6x as long).
    dropout: float = Field(0.0, ge=0, lt=1)
    max_positions: int = Field(1024, ge=16)


def backbone_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    if settings.backbone == "pretrained":
        if settings.pretrained_path is None:
            raise ValueError("backbone 'pretrained' needs pretrained_path (a local HF causal-LM checkpoint)")
        return AutoTokenizer.from_pretrained(str(settings.pretrained_path))
    return text_tokenizer()


def build_model(settings: ModelSettings, vocab: Vocabulary, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    if settings.backbone == "llama":
        config = LlamaConfig(vocab_size=vocab.size, hidden_size=settings.d_model, intermediate_size=settings.d_ff,
                             num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
                             num_key_value_heads=settings.heads, max_position_embeddings=settings.max_positions,
                             attention_dropout=settings.dropout, tie_word_embeddings=True, pad_token_id=vocab.pad_id,
                             bos_token_id=vocab.start_id, eos_token_id=vocab.eos_id)
        return LlamaForCausalLM(config)
    model = AutoModelForCausalLM.from_pretrained(str(settings.pretrained_path))
    model.resize_token_embeddings(vocab.size)
    return model


def parts(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.Tensor]:
    """(the decoder stack, the output embedding matrix (V, d)) of a model or a PEFT wrapper
    of one (LoRA layers sit inside the decoder, so calling it runs them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings().weight


def code_logits(hidden: torch.Tensor, out_weight: torch.Tensor, level_tokens: torch.Tensor) -> torch.Tensor:
    """hidden (..., d), level_tokens (K,) -> (..., K) logits over one level's codes."""
    return hidden @ out_weight[level_tokens].T


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask, left- or right-padded -> (B, T) position of each real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
