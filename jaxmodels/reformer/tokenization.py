"""Reformer tokenizers, on ``sentencepiece`` and ``numpy`` alone (no torch / transformers at tokenization time).

- ``ReformerTokenizer``: the slow ``transformers.ReformerTokenizer`` (``google/reformer-crime-and-punishment``):
  plain SentencePiece pieces, no special tokens added around a sequence, special tokens written in the text
  (``</s>``, ``<unk>``, additional ones) kept as single tokens. Reads / writes ``spiece.model`` +
  ``tokenizer_config.json`` as transformers does.
- ``ByteTokenizer``: the byte-level scheme of ``google/reformer-enwik8`` (no vocabulary file): the UTF-8 bytes of
  the text shifted by 2 (id = byte + 2; 0 is padding, 1 unused); decoding maps ids > 1 back with ``chr(id - 2)``
  (one character per byte, as HF's model card does) and drops 0 / 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

VOCAB_FILE_NAME = "spiece.model"
CONFIG_FILE_NAME = "tokenizer_config.json"


class ReformerTokenizer:
    """SentencePiece tokenizer equal to the slow ``transformers.ReformerTokenizer`` on its ids and decoding."""

    def __init__(self, vocab_file: str, eos_token: str = "</s>", unk_token: str = "<unk>",
                 additional_special_tokens: Sequence[str] = (), pad_token: str | None = None):
        if not os.path.isfile(vocab_file):
            raise ValueError(f"vocab_file={vocab_file!r} is not a SentencePiece model file")
        self.vocab_file = vocab_file
        self.sp_model = spm.SentencePieceProcessor()
        self.sp_model.Load(vocab_file)
        self.eos_token, self.unk_token, self.pad_token = eos_token, unk_token, pad_token
        self.additional_special_tokens = list(additional_special_tokens)
        specials = [t for t in (eos_token, unk_token, pad_token, *self.additional_special_tokens) if t]
        self.all_special_tokens = list(dict.fromkeys(specials))
        # Special tokens missing from the SentencePiece vocabulary get new ids after it, in HF's order.
        unk_id = self.sp_model.unk_id()
        missing = [t for t in self.all_special_tokens if t != unk_token and self.sp_model.piece_to_id(t) == unk_id]
        self._added = {t: self.sp_model.get_piece_size() + i for i, t in enumerate(missing)}
        self._added_by_id = {i: t for t, i in self._added.items()}
        # Longest first, so a special token that contains another is matched whole.
        self._special_re = re.compile("(" + "|".join(
            re.escape(t) for t in sorted(self.all_special_tokens, key=len, reverse=True)) + ")")

    @property
    def vocab_size(self) -> int:
        """SentencePiece pieces only (as HF); ``len(tokenizer)`` also counts added special tokens."""
        return self.sp_model.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size + len(self._added)

    def _to_id(self, token: str) -> int:
        return self._added[token] if token in self._added else self.sp_model.piece_to_id(token)

    def _to_token(self, index: int) -> str:
        return self._added_by_id[index] if index in self._added_by_id else self.sp_model.id_to_piece(index)

    @property
    def eos_token_id(self) -> int:
        return self._to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._to_id(self.pad_token)

    def tokenize(self, text: str) -> list[str]:
        """Pieces of ``text``; special tokens written in the text stay whole."""
        tokens = []
        for part in self._special_re.split(text):
            if not part:
                continue
            if part in self.all_special_tokens:
                tokens.append(part)
            else:
                tokens.extend(self.sp_model.encode(part, out_type=str))
        return tokens

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._to_id(tokens)
        return [self._to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, (int, np.integer)):
            return self._to_token(int(ids))
        return [self._to_token(int(i)) for i in ids]

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; Reformer adds no special tokens around a sequence."""
        return self.convert_tokens_to_ids(self.tokenize(text))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Pieces back to text, as HF's slow tokenizer: special tokens written verbatim (or skipped); additional
        special tokens outside the SentencePiece vocabulary are separated by spaces."""
        tokens = self.convert_ids_to_tokens([int(i) for i in np.asarray(ids).reshape(-1)])
        if skip_special_tokens:  # dropped before decoding: the pieces around them join up
            tokens = [t for t in tokens if t not in self.all_special_tokens]
        separate = {t for t in self._added if t in self.additional_special_tokens}
        parts, run = [], []
        for token in tokens:
            if token in separate:
                if run:
                    parts.append(self._pieces_to_string(run))
                parts.append(token)
                run = []
            else:
                run.append(token)
        if run:
            parts.append(self._pieces_to_string(run))
        return " ".join(parts)

    def _pieces_to_string(self, tokens: Sequence[str]) -> str:
        out, run = "", []
        for token in tokens:
            if token in self.all_special_tokens:
                out += self.sp_model.decode(run) + token
                run = []
            else:
                run.append(token)
        return (out + self.sp_model.decode(run)).strip()

    def __call__(self, texts, *, max_length: int | None = None, padding: bool = False, truncation: bool = False,
                 return_tensors: str | None = None) -> dict:
        """Batch encoding -> ``{"input_ids", "attention_mask"}`` (lists, or int32 numpy with ``return_tensors="np"``).

        Padding (to the longest, or to ``max_length``) appends ``pad_token``; it needs one (Reformer's tokenizer
        has none by default: pass ``pad_token=...``).
        """
        single = isinstance(texts, str)
        batch = [self.encode(t) for t in ([texts] if single else texts)]
        if truncation:
            if max_length is None:
                raise ValueError("max_length: required with truncation=True")
            batch = [ids[:max_length] for ids in batch]
        masks = [[1] * len(ids) for ids in batch]
        if padding or return_tensors == "np":
            if self.pad_token_id is None:
                raise ValueError("pad_token: this tokenizer has no pad token; pass pad_token=... to pad")
            width = max_length if max_length is not None else max(len(ids) for ids in batch)
            batch = [ids + [self.pad_token_id] * (width - len(ids)) for ids in batch]
            masks = [m + [0] * (width - len(m)) for m in masks]
        if return_tensors == "np":
            return {"input_ids": np.asarray(batch, np.int32), "attention_mask": np.asarray(masks, np.int32)}
        if single:
            return {"input_ids": batch[0], "attention_mask": masks[0]}
        return {"input_ids": batch, "attention_mask": masks}

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        target = os.path.join(directory, VOCAB_FILE_NAME)
        if os.path.abspath(self.vocab_file) != os.path.abspath(target):
            shutil.copyfile(self.vocab_file, target)
        config = {"tokenizer_class": "ReformerTokenizer", "eos_token": self.eos_token, "unk_token": self.unk_token,
                  "additional_special_tokens": self.additional_special_tokens}
        if self.pad_token is not None:
            config["pad_token"] = self.pad_token
        with open(os.path.join(directory, CONFIG_FILE_NAME), "w") as f:
            json.dump(config, f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str, **overrides) -> ReformerTokenizer:
        vocab = os.path.join(directory, VOCAB_FILE_NAME)
        config = {}
        path = os.path.join(directory, CONFIG_FILE_NAME)
        if os.path.isfile(path):
            with open(path) as f:
                config = json.load(f)
        klass = config.get("tokenizer_class")
        if klass not in (None, "ReformerTokenizer", "ReformerTokenizerFast"):
            raise ValueError(f"{directory!r} holds a {klass}, not a Reformer tokenizer")
        kwargs = {k: config[k] for k in ("eos_token", "unk_token", "additional_special_tokens", "pad_token")
                  if k in config}
        # transformers may write special tokens as AddedToken dicts.
        kwargs = {k: (v["content"] if isinstance(v, dict) else v) for k, v in kwargs.items()}
        if "additional_special_tokens" in kwargs:
            kwargs["additional_special_tokens"] = [t["content"] if isinstance(t, dict) else t
                                                   for t in kwargs["additional_special_tokens"]]
        return cls(vocab, **{**kwargs, **overrides})


class ByteTokenizer:
    """Byte-level tokenizer of the enwik8 Reformer: id = UTF-8 byte + 2; 0 pads; 258 ids in all."""

    OFFSET = 2
    vocab_size = 258
    pad_token_id = 0

    def encode(self, texts, *, max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Texts (str or bytes) -> ``(input_ids [batch, length] int32, attention_mask [batch, length] int32)``,
        right-padded with 0 to the longest (or ``max_length``, truncating)."""
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        data = [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts]
        width = max_length if max_length is not None else max((len(d) for d in data), default=0)
        ids = np.zeros((len(data), width), np.int32)
        mask = np.zeros((len(data), width), np.int32)
        for row, d in enumerate(data):
            d = d[:width]
            ids[row, :len(d)] = np.frombuffer(d, np.uint8).astype(np.int32) + self.OFFSET
            mask[row, :len(d)] = 1
        return ids, mask

    def decode(self, ids) -> list[str]:
        """``[batch, length]`` (or ``[length]``) ids -> strings; ids 0 and 1 are dropped."""
        ids = np.asarray(ids)
        rows = ids[None] if ids.ndim == 1 else ids
        return ["".join(chr(int(i) - self.OFFSET) for i in row if i > 1) for row in rows]

    def decode_bytes(self, ids) -> list[bytes]:
        """Exact inverse of ``encode`` for any UTF-8 text: the bytes, to be decoded by the caller."""
        ids = np.asarray(ids)
        rows = ids[None] if ids.ndim == 1 else ids
        return [bytes(int(i) - self.OFFSET for i in row if i > 1) for row in rows]
